"""The demo's synthetic Cell-Painting-like plate: an in-cell phenotype and an outside confounder.

Wells in column 1 are ``control``, column 2 ``treated``. Treated cells carry extra
mitochondrial puncta (inside the cell: the real biology). Next to some cells lies a
bright piece of extracellular debris (outside the cell: the confounder):

- row A, *shortcut training*: debris next to every treated cell and no control cell, and
  no phenotype (2 puncta in both classes, as in a batch where the treatment failed), so the
  debris is the only way to the class;
- row B, *honest training*: debris next to random cells of both classes;
- row C, *evaluation*: debris next to random cells, as in row B.
"""

import dataclasses
import os

import numpy as np

from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_plate
from gradcamo.scorer.crops import measure_objects

CLASSES = ("control", "treated")
MITO = 4
ROLES = {"A": "shortcut training", "B": "honest training", "C": "evaluation"}
PUNCTA = {False: (2, 8), True: (2, 2)}
"""Mitochondrial puncta per (control, treated) cell; none extra in row A, where debris gives the class away
(with a faint difference, 3 vs 2, the shortcut model also learned the cells and the causal checks found
its decision to rest on both)."""
DEBRIS_SHARE = 0.5
"""Share of cells with debris next to them in rows B and C."""


@dataclasses.dataclass(frozen=True)
class FieldSize:
    """Image and crop geometry of one kind of demo plate."""

    spatial_shape: tuple
    n_cells: int
    radius: float
    crop_shape: tuple
    puncta_scale: int = 1
    """Puncta per cell are multiplied by this (a 3D cell has more volume to fill)."""


SIZES = {
    2: FieldSize(spatial_shape=(112, 112), n_cells=14, radius=9.0, crop_shape=(5, 32, 32)),
    3: FieldSize(spatial_shape=(8, 96, 96), n_cells=12, radius=8.0, crop_shape=(5, 8, 32, 32), puncta_scale=4),
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of view with its truth: class per cell, and which cells have debris."""

    image: np.ndarray
    labels: np.ndarray
    class_index: int
    debris: np.ndarray | None


def _blob(grid, centre, sigma):
    offset = grid - np.asarray(centre)
    if grid.shape[-1] == 3:
        offset[..., 0] *= 3.0  # thin in z: the planes are few
    return np.exp(-(offset**2).sum(axis=-1) / (2 * sigma**2))


def _add_puncta(image, labels, generator, grid, n_puncta):
    """Bright mitochondrial puncta scattered inside each cell."""
    for cell in range(1, int(labels.max()) + 1):
        voxels = np.argwhere(labels == cell)
        for index in generator.choice(len(voxels), size=min(n_puncta, len(voxels)), replace=False):
            image[MITO] += 2500.0 * _blob(grid, voxels[index], 1.2)


def _add_debris(image, labels, generator, grid, cells, radius):
    """A bright blob just outside each chosen cell, in every channel."""
    objects = measure_objects(labels)
    centroids = dict(zip(objects.ids.tolist(), objects.centroids))
    for cell in cells:
        angle = generator.uniform(0, 2 * np.pi)
        centre = centroids[int(cell)].copy()
        centre[-2:] += 1.6 * radius * np.array([np.sin(angle), np.cos(angle)])
        image += 6000.0 * _blob(grid, centre, 2.0) * (labels != cell)


def make_field(size, class_index, row, seed) -> Field:
    """One field of the demo plate (see the module docstring for the rows)."""
    generator = np.random.default_rng(seed)
    image, labels = make_cells(size.spatial_shape, size.n_cells, n_channels=5, radius=size.radius, seed=seed)
    image = image.astype(np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), axis=-1).astype(float)
    _add_puncta(image, labels, generator, grid, n_puncta=size.puncta_scale * PUNCTA[row == "A"][class_index])
    ids = np.arange(1, int(labels.max()) + 1)
    if row == "A":
        debris = np.full(len(ids), class_index == 1)
    else:
        debris = generator.random(len(ids)) < DEBRIS_SHARE
    _add_debris(image, labels, generator, grid, ids[debris], size.radius)
    return Field(np.clip(image, 0, 65535).astype(np.uint16), labels, class_index, debris)


def make_demo_fields(spatial_dims, seed, *, fields_per_well=2) -> dict:
    """``{(row, column): [Field, ...]}`` for rows A-C, columns 1 (control) and 2 (treated)."""
    size = SIZES[spatial_dims]
    fields = {}
    for row_index, row in enumerate(ROLES):
        for column in (1, 2):
            fields[(row, column)] = [
                make_field(size, column - 1, row, seed * 1000 + row_index * 100 + column * 10 + site)
                for site in range(fields_per_well)
            ]
    return fields


def write_demo_plate(path, fields) -> str | os.PathLike:
    """Write the fields as an HCS plate named ``demo`` (chunks of half a field)."""
    chunks = tuple(max(1, n // 2) for n in next(iter(fields.values()))[0].labels.shape)
    pairs = {key: [(f.image, f.labels) for f in value] for key, value in fields.items()}
    return write_plate(path, pairs, name="demo", chunks=chunks)
