"""Read spatial regions of OME-Zarr arrays in canonical (C, [Z,] Y, X) order."""

import collections
import dataclasses
import math
import threading

import numpy as np

from gradcamo.data.chunks import mark_read_as_fill, read_as_fill
from gradcamo.data.direct import read_array, read_chunks
from gradcamo.errors import InputError
from gradcamo.scorer.channels import choose_channels

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
    channel_match: str = "position"
    """How ``channels`` were chosen: ``option``, ``name`` or ``position`` (:mod:`gradcamo.scorer.channels`)."""


def region_index(axes, spatial_axes, region, *, channels=None, timepoint=0) -> tuple[tuple, list[str]]:
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


class ChunkCache:
    """Decoded chunks of zarr arrays, least recently used dropped first beyond ``max_bytes``.

    Lets neighbouring blocks share the chunks their halos overlap, so each chunk is read
    and decompressed once per worker while it stays in the cache.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._chunks = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.reads = 0
        """Chunks read from the store (misses)."""

    def chunk(self, array, position) -> np.ndarray:
        """The whole chunk at grid ``position`` (clipped at the array's end), as numpy.

        A chunk that was read as the fill value (``--missing-chunks zeros``) is noted as such on
        ``array`` each time it is served, so that every unit it goes to says so
        (:func:`gradcamo.data.chunks.chunks_read_as_fill`).
        """
        key = (str(array.store), array.path, position)
        with self._lock:
            if key in self._chunks:
                self._chunks.move_to_end(key)
                data, fill = self._chunks[key]
                mark_read_as_fill(array, fill)
                return data
        index = tuple(slice(p * c, min((p + 1) * c, n)) for p, c, n in zip(position, array.chunks, array.shape))
        data = read_array(array, index)
        fill = read_as_fill(array, index)
        with self._lock:
            self.reads += 1
            if key not in self._chunks:
                self._chunks[key] = data, fill
                self._bytes += data.nbytes
            while self._bytes > self.max_bytes and len(self._chunks) > 1:
                _, (dropped, _) = self._chunks.popitem(last=False)
                self._bytes -= dropped.nbytes
        return data

    def read(self, array, index) -> np.ndarray:
        """``array[index]`` (slices with step 1 and integers), assembled from cached chunks."""
        return read_chunks(array, index, lambda position: self.chunk(array, position))


def read_region(array, axes, spatial_axes, region, *, channels=None, timepoint=0, cache=None) -> np.ndarray:
    """Read ``region`` (one slice per spatial axis) as ``([C,] *spatial)`` in canonical order.

    The array's axes may come in any order; an image without a ``c`` axis is one channel.

    With a :class:`ChunkCache`, the chunks come from (and go to) the cache. Chunks are read by
    :func:`gradcamo.data.direct.read_array` (local files directly where the layout allows, else zarr).
    """
    index, kept = region_index(axes, spatial_axes, region, channels=channels, timepoint=timepoint)
    data = cache.read(array, index) if cache is not None else read_array(array, index)
    order = (["c"] if "c" in kept else []) + list(spatial_axes)
    data = np.transpose(data, [kept.index(a) for a in order])
    if channels is None:
        return data
    if "c" not in kept:
        return data[None]  # no c axis: one channel
    if list(channels) == list(range(data.shape[0])):
        return data  # every channel in order: no copy of the region
    return data[list(channels)]


def plan_layout(source, *, spatial_dims, n_channels, channels=None, timepoint=0, model_channel_names=()) -> Layout:
    """Check an opened image against the model and choose its axes and channels
    (:func:`gradcamo.scorer.channels.choose_channels`: ``channels`` are indices or names).

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
    choice = choose_channels(source, channels, model_channel_names)
    channels = choice.indices
    chosen = tuple(range(available)) if channels is None else tuple(channels)
    bad = [c for c in chosen if not 0 <= c < available]
    if bad:
        raise InputError(f"channels: {bad} out of range for {where} with {available} channels", argument="channels")
    if len(chosen) != n_channels:
        raise InputError(
            f"{where}: {len(chosen)} channels {'chosen' if channels is not None else 'in the image'}, "
            f"the model takes {n_channels}; pick them with --channels"
        )
    if not 0 <= timepoint < sizes.get("t", 1):
        raise InputError(f"timepoint: {timepoint} out of range for {where} with t={sizes.get('t', 1)}",
                         argument="timepoint")
    return Layout(
        image_axes=source.axes, label_axes=source.label_axes, spatial_axes=spatial_axes,
        spatial_shape=tuple(sizes[a] for a in spatial_axes), channels=chosen, timepoint=timepoint,
        channel_match=choice.match,
    )


def block_grid(spatial_shape, chunk_shape, crop_spatial, *, block_shape=None) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
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


def label_chunks(labels, label_axes, spatial_axes) -> tuple[int, ...]:
    """The label array's chunk size along each spatial axis."""
    return tuple(labels.chunks[label_axes.index(a)] for a in spatial_axes)
