"""Synthetic cell images with label masks: small, seeded, 2D or 3D."""

import numpy as np
from scipy import ndimage

CHANNEL_NAMES = ("nucleus", "er", "rna", "actin_golgi", "mito")


def _place_centres(generator, spatial_shape, n_cells, radius):
    """Cell centres at least ~1.6 radii apart (fewer if the image is too crowded)."""
    low = np.full(len(spatial_shape), radius * 0.6)
    high = np.asarray(spatial_shape, dtype=float) - radius * 0.6
    if len(spatial_shape) == 3:
        low[0], high[0] = 0.0, float(spatial_shape[0])
    centres = []
    for _ in range(n_cells * 50):
        candidate = generator.uniform(low, high)
        if all(np.linalg.norm((candidate - c)[-2:]) > 1.6 * radius for c in centres):
            centres.append(candidate)
            if len(centres) == n_cells:
                break
    return np.asarray(centres).reshape(-1, len(spatial_shape))


def make_cells(spatial_shape, n_cells, *, n_channels=5, radius=6.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Make a multi-channel image of roundish cells and its label image.

    Parameters
    ----------
    spatial_shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    n_cells : int
        Cells wanted; fewer are placed when they do not fit.
    n_channels : int
        Image channels (textures: nucleus, cytoplasm-like, ...).
    radius : float
        Mean cell radius in pixels (in y and x; cells span the whole z range in 3D).
    seed : int

    Returns
    -------
    image : (n_channels, *spatial_shape) uint16 ndarray
    labels : spatial_shape uint32 ndarray
        0 for background, 1..n for cells.

    Examples
    --------
    >>> image, labels = make_cells((32, 32), 3, n_channels=2, radius=5, seed=1)
    >>> image.shape, labels.shape, int(labels.max())
    ((2, 32, 32), (32, 32), 3)
    """
    generator = np.random.default_rng(seed)
    spatial_shape = tuple(int(n) for n in spatial_shape)
    centres = _place_centres(generator, spatial_shape, n_cells, radius)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in spatial_shape], indexing="ij"), axis=-1)
    labels = np.zeros(spatial_shape, dtype=np.uint32)
    nearest = np.full(spatial_shape, np.inf)
    nucleus = np.zeros(spatial_shape, dtype=bool)
    for cell_id, centre in enumerate(centres, start=1):
        cell_radius = radius * generator.uniform(0.8, 1.2)
        offset = (grid - centre)[..., -2:]
        distance = np.sqrt((offset**2).sum(axis=-1)) / cell_radius
        inside = (distance < 1.0) & (distance < nearest)
        labels[inside] = cell_id
        nearest = np.where(inside, distance, nearest)
        nucleus |= inside & (distance < 0.45)
    cell = labels > 0
    image = generator.normal(100.0, 10.0, (n_channels, *spatial_shape))
    for channel in range(n_channels):
        texture = generator.gamma(2.0, 150.0 * (channel + 1), spatial_shape)
        image[channel] += np.where(cell, texture, 0.0)
    image[0] += np.where(nucleus, 2000.0, 0.0)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def _segment_distance(y, x, end):
    """Distance of each (y, x) to the segment from the origin to ``end`` (dy, dx)."""
    length2 = float(end[0] ** 2 + end[1] ** 2)
    t = np.clip((y * end[0] + x * end[1]) / length2, 0.0, 1.0)
    return np.hypot(y - t * end[0], x - t * end[1])


def make_protruding_cells(spatial_shape, phenotypes, *, spacing=32, radius=7.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Two-channel cells (nucleus, cell body) on a jittered grid, with arms and a bright rim that grow with a phenotype.

    Parameters
    ----------
    spatial_shape : (int, int)
        ``(Y, X)``; the grid has ``Y // spacing`` by ``X // spacing`` places.
    phenotypes : sequence of float in [0, 1]
        One per cell (at most one per grid place). A cell with phenotype ``p`` has an
        arm-like protrusion up, down, left and right (within 9 degrees) each with probability
        ``0.1 + 0.8 p``, reaching ``3 + 8 p`` pixels (times 0.7 to 1) beyond its round body, and
        a rim (outer 2 pixels of the body, and the arms) brighter by ``1400 p`` over a body of
        500. Arms along the axes keep the demo's small autoencoder able to draw them (flips and
        quarter turns, the training augmentations, keep them on the axes).
    spacing : int
        Grid spacing in pixels: cells never touch when ``spacing > 2 * (1.15 * radius + 11)``.
    radius : float
        Mean body radius.
    seed : int

    Returns
    -------
    image : (2, Y, X) uint16 ndarray
    labels : (Y, X) uint32 ndarray
        0 for background, cell ``i + 1`` for ``phenotypes[i]``.

    Examples
    --------
    >>> image, labels = make_protruding_cells((64, 64), [0.1, 0.9], seed=1)
    >>> image.shape, sorted(np.unique(labels).tolist())
    ((2, 64, 64), [0, 1, 2])
    """
    generator = np.random.default_rng(seed)
    shape = tuple(int(n) for n in spatial_shape)
    places = [(r, c) for r in range(shape[0] // spacing) for c in range(shape[1] // spacing)]
    if len(phenotypes) > len(places):
        raise ValueError(f"{len(phenotypes)} cells do not fit {len(places)} places of {spacing} pixels in {shape}")
    grid_y, grid_x = np.mgrid[:shape[0], :shape[1]].astype(float)
    labels = np.zeros(shape, dtype=np.uint32)
    image = np.zeros((2, *shape))
    for cell_id, (p, (row, column)) in enumerate(zip(phenotypes, places), start=1):
        centre = (np.array([row, column]) + 0.5) * spacing + generator.uniform(-2, 2, 2)
        y, x = grid_y - centre[0], grid_x - centre[1]
        distance = np.hypot(y, x)
        body_radius = radius * generator.uniform(0.85, 1.15)
        body = distance < body_radius
        arms = np.zeros(shape, dtype=bool)
        for quarter in np.flatnonzero(generator.random(4) < 0.1 + 0.8 * p):
            angle = quarter * np.pi / 2 + generator.uniform(-0.15, 0.15)
            reach = body_radius + (3 + 8 * p) * generator.uniform(0.7, 1.0)
            arms |= _segment_distance(y, x, reach * np.array([np.sin(angle), np.cos(angle)])) < 1.8
        arms &= distance > body_radius - 2
        cell = body | arms
        rim = arms | (body & (distance > body_radius - 2))
        labels[cell] = cell_id
        image[1] += np.where(cell, 500.0, 0.0) + np.where(rim, 1400.0 * p, 0.0)
        image[0] += np.where(distance < 0.45 * body_radius, 1500.0, 0.0)
    image = ndimage.gaussian_filter(image, (0, 0.8, 0.8)) + generator.normal(100.0, 8.0, image.shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels
