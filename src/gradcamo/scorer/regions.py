"""Read spatial regions of OME-Zarr arrays in canonical (C, [Z,] Y, X) order."""

import dataclasses
import functools
import math

import numpy as np

from gradcamo.data.read import ImageRef, open_image
from gradcamo.errors import InputError

SPATIAL = ("z", "y", "x")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to index one image: its axes and the choices made for non-spatial ones."""

    image_axes: tuple
    label_axes: tuple
    spatial_axes: tuple
    spatial_shape: tuple
    channels: tuple
    timepoint: int


def _index(axes, spatial_axes, region, *, channels=None, timepoint=0):
    """numpy index in the array's own axis order, and the order of the result's axes."""
    index, kept = [], []
    for axis in axes:
        if axis in spatial_axes:
            index.append(region[spatial_axes.index(axis)])
            kept.append(axis)
        elif axis == "c" and channels is not None:
            index.append(slice(None))
            kept.append(axis)
        elif axis == "t":
            index.append(timepoint)
        else:
            index.append(0)
    return tuple(index), kept


def read_region(array, axes, spatial_axes, region, *, channels=None, timepoint=0):
    """Read ``region`` (one slice per spatial axis) as ``([C,] *spatial)`` in canonical order."""
    index, kept = _index(axes, spatial_axes, region, channels=channels, timepoint=timepoint)
    data = np.asarray(array[index])
    order = (["c"] if channels is not None else []) + list(spatial_axes)
    data = np.transpose(data, [kept.index(a) for a in order])
    return data[list(channels)] if channels is not None else data


def plan_layout(source, *, spatial_dims, n_channels, channels=None, timepoint=0):
    """Check an opened image against the model and choose its axes.

    Raises
    ------
    InputError
        Channel count or choice, dimensionality or timepoint that does not fit.
    """
    where = source.ref.name
    sizes = dict(zip(source.axes, source.image.shape))
    spatial_axes = SPATIAL[-spatial_dims:]
    missing = [a for a in spatial_axes if a not in sizes]
    if missing:
        raise InputError(f"{where}: the model is {spatial_dims}D but the image has no {'/'.join(missing)} axis")
    if spatial_dims == 2 and sizes.get("z", 1) != 1:
        raise InputError(f"{where}: the model is 2D but the image has z={sizes['z']} planes")
    available = sizes.get("c", 1)
    chosen = tuple(range(available)) if channels is None else tuple(channels)
    bad = [c for c in chosen if not 0 <= c < available]
    if bad:
        raise InputError(f"--channels: {bad} out of range for {where} with {available} channels")
    if len(chosen) != n_channels:
        raise InputError(
            f"{where}: {len(chosen)} channels {'chosen' if channels is not None else 'in the image'}, "
            f"the model takes {n_channels}; pick them with --channels"
        )
    if not 0 <= timepoint < sizes.get("t", 1):
        raise InputError(f"--timepoint: {timepoint} out of range for {where} with t={sizes.get('t', 1)}")
    if "c" not in sizes:
        raise InputError(f"{where}: the image has no 'c' axis")
    return Layout(
        image_axes=source.axes, label_axes=source.label_axes, spatial_axes=spatial_axes,
        spatial_shape=tuple(sizes[a] for a in spatial_axes), channels=chosen, timepoint=timepoint,
    )


@functools.lru_cache(maxsize=64)
def open_cached(ref: ImageRef, label_name):
    """Open an image once per worker process."""
    return open_image(ref, label_name)


def block_grid(spatial_shape, chunk_shape, crop_spatial, *, block_shape=None):
    """Spatial blocks (start, stop) covering the image, aligned to the label chunks.

    By default a block spans whole chunks and at least 8 crops per axis, so the halo of
    half a crop adds little reading.
    """
    if block_shape is None:
        block_shape = [
            min(extent, chunk * math.ceil(max(8 * crop, chunk) / chunk))
            for extent, chunk, crop in zip(spatial_shape, chunk_shape, crop_spatial)
        ]
    ranges = [range(0, extent, size) for extent, size in zip(spatial_shape, block_shape)]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, len(spatial_shape))
    return [
        (tuple(int(s) for s in start), tuple(int(min(s + b, e)) for s, b, e in zip(start, block_shape, spatial_shape)))
        for start in grid
    ]


def label_chunks(labels, label_axes, spatial_axes):
    """The label array's chunk size along each spatial axis."""
    return tuple(labels.chunks[label_axes.index(a)] for a in spatial_axes)
