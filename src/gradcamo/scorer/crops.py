"""Objects, centroids and crop windows, as docs/score.md fixes them ("Crops and objects").

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
    def centroids(self) -> np.ndarray:
        """(n, ndim) float64 mean voxel coordinate of each object."""
        return self.coordinate_sums / self.voxels[:, None]


def measure_objects(labels, offset=None) -> Measurements:
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

    Notes
    -----
    Works on runs, not voxels: a run is a stretch of equal ids along the last axis (cells are
    blobs, so a field has about ten times fewer runs than foreground voxels). A run of length
    ``n`` starting at ``(..., x0)`` adds ``n`` voxels, ``n * c`` to each other axis's
    coordinate sum and ``n * x0 + n * (n - 1) / 2`` to the last one's. Coordinates are whole
    numbers, so their float64 sums are exact whatever the order: the same sums as over every
    voxel; the block's ``offset`` is added to the sums at the end.
    """
    labels = np.asarray(labels)
    ndim = labels.ndim
    offset = np.zeros(ndim, dtype=np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
    flat = labels.reshape(-1)
    starts, values, lengths = _runs(flat, labels.shape[-1] if ndim else 1)
    if not len(values):
        return Measurements(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, ndim)))
    rows: np.ndarray | slice
    if values.min() > 0 and values.max() < DENSE_IDS_PER_VOXEL * flat.size:
        # Ids few enough to count in place: O(n) instead of sorting (same sums, same order).
        bins = values.astype(np.intp, copy=False)
        ids = rows = np.flatnonzero(np.bincount(bins))
        size = int(ids[-1]) + 1
    else:
        ids, bins = np.unique(values, return_inverse=True)
        rows, size = slice(None), len(ids)
    voxels = np.bincount(bins, weights=lengths, minlength=size)[rows]
    sums = np.empty((len(ids), ndim))
    coordinates = np.unravel_index(starts, labels.shape)
    for axis in range(ndim):
        weights = lengths * coordinates[axis]
        if axis == ndim - 1:
            weights += lengths * (lengths - 1) // 2
        sums[:, axis] = np.bincount(bins, weights=weights, minlength=size)[rows]
    return Measurements(ids.astype(np.int64), voxels.astype(np.int64), sums + voxels[:, None] * offset)


def _runs(flat, width):
    """Runs of equal non-zero values of ``flat`` that do not cross a row of ``width``:
    their first flat indices, values and lengths (int64)."""
    if not flat.size:
        return np.zeros(0, np.int64), flat[:0], np.zeros(0, np.int64)
    change = np.empty(flat.size, bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::width] = True
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=flat.size)
    values = flat[starts]
    foreground = values != 0
    return starts[foreground], values[foreground], lengths[foreground]


def merge_measurements(parts, ndim) -> Measurements:
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


def centre_voxels(centroids) -> np.ndarray:
    """(n, ndim) int64: the voxel each crop is centred on, ``floor(centroid + 0.5)`` per axis
    (halves round up, the same on every axis and for negative coordinates)."""
    return np.floor(np.asarray(centroids, dtype=np.float64) + 0.5).astype(np.int64)


def crop_starts(centroids, crop_shape) -> np.ndarray:
    """First voxel of each object's crop: ``floor(centroid + 0.5) - size // 2`` per axis.

    Returns
    -------
    starts : (n, ndim) int64 ndarray
    """
    return centre_voxels(centroids) - np.asarray(crop_shape, dtype=np.int64) // 2


def cut_window(array, start, shape) -> tuple[np.ndarray, float]:
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


class CropCutter:
    """Cuts crops and masks of many objects from one in-memory region, a batch at a time.

    The region is zero-padded once (only as far as the crops reach outside it), then each
    batch is one fancy-indexing gather over sliding windows: no per-object Python.

    Parameters
    ----------
    image : (C, *S) ndarray
    labels : S integer ndarray
    starts : (n, ndim) int ndarray
        Each object's crop start, in the region's coordinates (may be negative or run past
        the end: the outside is 0 in the crop and in the mask).
    crop_shape : tuple of int
        Spatial crop shape.
    """

    def __init__(self, image, labels, starts, crop_shape):
        crop = np.asarray(crop_shape, dtype=np.int64)
        ndim = len(crop)
        starts = np.asarray(starts, dtype=np.int64).reshape(-1, ndim)
        extent = np.asarray(labels.shape, dtype=np.int64)
        if len(starts):
            low = np.maximum(0, -starts.min(axis=0))
            high = np.maximum(0, (starts + crop).max(axis=0) - extent)
        else:
            low = high = np.zeros(ndim, np.int64)
        if low.any() or high.any():
            widths = [(int(a), int(b)) for a, b in zip(low, high)]
            image = np.pad(image, [(0, 0)] + widths)
            labels = np.pad(labels, widths)
        spatial_axes = tuple(range(1, ndim + 1))
        # (*S', C, *crop): one object's crop is one item of the gather, already in (C, *crop) order
        self._image_windows = np.moveaxis(
            np.lib.stride_tricks.sliding_window_view(image, tuple(crop), axis=spatial_axes), 0, ndim)
        self._label_windows = np.lib.stride_tricks.sliding_window_view(labels, tuple(crop))
        self._starts = starts + low
        self._region_starts, self._extent = starts, extent
        self._crop = tuple(int(c) for c in crop)
        inside = np.clip(np.minimum(starts + crop, extent) - np.maximum(starts, 0), 0, None).prod(axis=1)
        self.pad_fractions = 1.0 - inside / float(np.prod(crop))
        """(n,) float64: share of each crop's voxels outside the region."""

    def cut(self, objects, ids, mask_dtype=bool) -> tuple[np.ndarray, np.ndarray]:
        """Crops and masks of the objects at positions ``objects`` (into ``starts``).

        Parameters
        ----------
        objects : (m,) int ndarray
        ids : (m,) int ndarray
            The label id each mask is taken for.
        mask_dtype : numpy dtype
            Of the masks: bool, or e.g. float32 (1.0 inside) written directly, without a
            bool mask in between.

        Returns
        -------
        crops : (m, C, *crop_shape) float32 ndarray
        masks : (m, *crop_shape) ndarray of ``mask_dtype``
        """
        where = tuple(self._starts[objects].T)
        crops = self._image_windows[where].astype(np.float32, copy=False)
        ids = np.asarray(ids).reshape((-1,) + (1,) * len(self._crop))
        masks = np.empty((len(objects), *self._crop), mask_dtype)
        np.equal(self._label_windows[where], ids, out=masks, casting="unsafe")
        return crops, masks

    def surroundings(self, objects) -> tuple[np.ndarray, np.ndarray]:
        """Which pixels of each crop lie in the region, and which of those have label 0.

        Parameters
        ----------
        objects : (m,) int ndarray

        Returns
        -------
        background : (m, *crop_shape) bool ndarray
            In-region pixels whose label is 0.
        in_region : (m, *crop_shape) bool ndarray
            Pixels inside the region (not padding).
        """
        in_region = window_inside(self._region_starts[objects], self._crop, self._extent)
        labels = self._label_windows[tuple(self._starts[objects].T)]
        return (labels == 0) & in_region, in_region


def window_inside(starts, shape, extent) -> np.ndarray:
    """(n, *shape) bool: which voxels of windows starting at ``starts`` ((n, ndim) int) lie in ``[0, extent)``."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, len(shape))
    inside = np.ones((len(starts),) + tuple(shape), bool)
    for axis, size in enumerate(shape):
        coordinates = starts[:, axis, None] + np.arange(size)
        view = [len(starts)] + [1] * len(shape)
        view[axis + 1] = size
        inside &= ((coordinates >= 0) & (coordinates < extent[axis])).reshape(view)
    return inside


def cut_cells(image, labels, ids, centroids, crop_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crops, masks and pad fractions of the given objects, cut as the scorer cuts them.

    Parameters
    ----------
    image : (C, *S) ndarray
    labels : S integer ndarray
    ids : (n,) int ndarray
        Label ids of the objects.
    centroids : (n, ndim) float ndarray
        Their centroids in the image's coordinates.
    crop_shape : tuple of int
        Spatial crop shape.

    Returns
    -------
    crops : (n, C, *crop_shape) float32 ndarray
    masks : (n, *crop_shape) bool ndarray
    pad_fractions : (n,) float64 ndarray
    """
    ids = np.asarray(ids, dtype=np.int64)
    cutter = CropCutter(image, labels, crop_starts(np.reshape(centroids, (len(ids), len(crop_shape))), crop_shape), crop_shape)
    crops, masks = cutter.cut(np.arange(len(ids)), ids)
    return crops, masks, cutter.pad_fractions


def cut_object_crops(image, labels, crop_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    crops, masks, _ = cut_cells(image, labels, objects.ids, objects.centroids, crop_shape)
    return objects.ids, crops, masks
