"""Objects, centroids and crop windows, as DESIGN.md fixes them ("Cutting crops").

Works block by block: :func:`measure_objects` sums voxel counts and coordinates of each
label id inside one block, :func:`merge_measurements` adds the partial sums of all blocks,
so objects that straddle blocks get the same centroid as from the whole image.
"""

import dataclasses

import numpy as np

# measure_objects counts ids directly when the largest is below this many per voxel.
DENSE_IDS_PER_VOXEL = 4


@dataclasses.dataclass(frozen=True)
class Measurements:
    """Per-object sums: ``ids`` (n,), ``voxels`` (n,), ``coordinate_sums`` (n, ndim)."""

    ids: np.ndarray
    voxels: np.ndarray
    coordinate_sums: np.ndarray

    @property
    def centroids(self):
        """(n, ndim) float64 mean voxel coordinate of each object."""
        return self.coordinate_sums / self.voxels[:, None]


def measure_objects(labels, offset=None):
    """Voxel counts and coordinate sums of every non-zero id in a label block.

    Parameters
    ----------
    labels : ([Z,] Y, X) integer ndarray
        One block of a label image.
    offset : sequence of int, optional
        Position of the block's first voxel in the whole image.

    Returns
    -------
    Measurements
    """
    labels = np.asarray(labels)
    offset = np.zeros(labels.ndim, dtype=np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
    flat = labels.reshape(-1)
    if flat.size and flat.min() >= 0 and flat.max() < DENSE_IDS_PER_VOXEL * flat.size:
        # Ids few enough to count in place: O(n) instead of sorting (same sums, same order).
        bins = flat.astype(np.intp, copy=False)
        counts = np.bincount(bins)
        ids = rows = np.flatnonzero(counts)
    else:
        ids, bins, counts = np.unique(flat, return_inverse=True, return_counts=True)
        rows = np.arange(len(ids))
    keep = ids != 0
    ids, rows = ids[keep], rows[keep]
    sums = np.empty((len(rows), labels.ndim))
    for axis in range(labels.ndim):
        coordinate = np.indices(labels.shape, sparse=True)[axis] + offset[axis]
        weights = np.broadcast_to(coordinate, labels.shape).reshape(-1)
        sums[:, axis] = np.bincount(bins, weights=weights, minlength=len(counts))[rows]
    return Measurements(ids.astype(np.int64), counts[rows].astype(np.int64), sums)


def merge_measurements(parts, ndim):
    """Add up the partial measurements of several blocks of one ``ndim``-D image."""
    parts = [p for p in parts if len(p.ids)]
    if not parts:
        return Measurements(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, ndim)))
    ids = np.concatenate([p.ids for p in parts])
    unique, inverse = np.unique(ids, return_inverse=True)
    voxels = np.bincount(inverse, weights=np.concatenate([p.voxels for p in parts]), minlength=len(unique))
    sums = np.stack(
        [
            np.bincount(inverse, weights=np.concatenate([p.coordinate_sums[:, a] for p in parts]),
                        minlength=len(unique))
            for a in range(ndim)
        ],
        axis=1,
    )
    return Measurements(unique, voxels.astype(np.int64), sums)


def crop_starts(centroids, crop_shape):
    """First voxel of each object's crop: ``floor(centroid + 0.5) - size // 2`` per axis.

    Returns
    -------
    starts : (n, ndim) int64 ndarray
    """
    centres = np.floor(np.asarray(centroids, dtype=np.float64) + 0.5).astype(np.int64)
    return centres - np.asarray(crop_shape, dtype=np.int64) // 2


def cut_window(array, start, shape):
    """Copy ``array[..., start:start + shape]`` over the last ``len(shape)`` axes, zero outside.

    Parameters
    ----------
    array : ndarray-like
        Anything sliceable with numpy semantics (numpy, zarr, dask-computed blocks).
    start : sequence of int
        May be negative or run past the end; the outside is filled with zeros.
    shape : sequence of int

    Returns
    -------
    window : ndarray of ``array.dtype``, shape ``array.shape[:-len(shape)] + shape``
    pad_fraction : float
        Share of the window's spatial voxels that lie outside ``array``.
    """
    spatial = array.shape[-len(shape):]
    lead = array.shape[: len(array.shape) - len(shape)]
    window = np.zeros(lead + tuple(shape), dtype=array.dtype)
    source, target, inside = [], [], 1
    for begin, size, extent in zip(start, shape, spatial):
        low, high = max(begin, 0), min(begin + size, extent)
        if high <= low:
            return window, 1.0
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
        inside *= high - low
    lead_slices = (slice(None),) * len(lead)
    window[lead_slices + tuple(target)] = array[lead_slices + tuple(source)]
    return window, 1.0 - inside / float(np.prod(shape))


def cut_object_crops(image, labels, crop_shape):
    """Every object's crop and mask from a whole in-memory image, cut as the scorer cuts them.

    Parameters
    ----------
    image : (C, *S) ndarray
    labels : S integer ndarray
    crop_shape : tuple of int
        Spatial crop shape.

    Returns
    -------
    ids : (n,) int64 ndarray
    crops : (n, C, *crop_shape) float32 ndarray
    masks : (n, *crop_shape) bool ndarray
    """
    objects = measure_objects(labels)
    crops, masks = [], []
    for cell, start in zip(objects.ids, crop_starts(objects.centroids, crop_shape)):
        crops.append(cut_window(image, start, crop_shape)[0].astype(np.float32))
        masks.append(cut_window(labels, start, crop_shape)[0] == cell)
    shape = tuple(crop_shape)
    if not crops:
        return objects.ids, np.zeros((0, image.shape[0], *shape), np.float32), np.zeros((0, *shape), bool)
    return objects.ids, np.stack(crops), np.stack(masks)
