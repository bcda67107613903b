"""Localisation metrics beside Grad-CAMO, in plain numpy (the reference the scorer's head is checked against).

The ONNX head (:mod:`gradcamo.scorer.head`) returns voxel counts (:func:`rank_counts` and
the mask's size) and maxima (:func:`peak_values`); :func:`localisation_metrics` turns them
into the per-row metrics. Counts and maxima are exact, so on the same crop-resolution CAM
the head and these functions agree exactly.
"""

import typing

import numpy as np

RANK_COUNTS = ("above_inside", "above_total", "tied_inside", "tied_total")
"""Columns of :func:`rank_counts`."""
PEAK_VALUES = ("peak_inside", "peak_outside")
"""Columns of :func:`peak_values`."""


class Localisation(typing.NamedTuple):
    """Per-row localisation metrics ((N,) arrays; see docs/score.md)."""

    mask_fraction: np.ndarray  # float64: mask voxels / crop voxels
    enrichment: np.ndarray  # float64: grad_camo / mask_fraction; NaN where either is undefined
    rank_accuracy: np.ndarray  # float64: share of the K highest-CAM voxels in the mask; NaN when undefined
    pointing_hit: np.ndarray  # bool: the CAM's maximum lies in the mask (False where unknown)
    pointing_known: np.ndarray  # bool: pointing_hit is defined (a non-empty CAM whose maxima are all in or all out)


def _flat(cam, mask):
    if cam.shape != mask.shape:
        raise ValueError(f"cam shape {cam.shape} != mask shape {mask.shape}")
    return cam.reshape(len(cam), -1), mask.reshape(len(mask), -1).astype(bool)


def _inside_and_total(selected, mask):
    return np.stack([(selected & mask).sum(axis=1), selected.sum(axis=1)], axis=1)


def rank_counts(cam, mask) -> np.ndarray:
    """Voxels above and at the K-th highest CAM value, inside the mask and in the crop.

    Parameters
    ----------
    cam : (N, *S) float ndarray
    mask : (N, *S) bool ndarray
        K = the mask's voxel count, per sample.

    Returns
    -------
    (N, 4) int64 ndarray
        Columns :data:`RANK_COUNTS`: voxels whose CAM is greater than the K-th highest
        value ``t``, inside the mask and in all; voxels whose CAM equals ``t``, inside and
        in all. With K = 0 all four are 0.
    """
    flat, inside = _flat(cam, mask)
    k = inside.sum(axis=1)
    kth = -np.sort(-flat, axis=1)[np.arange(len(flat)), np.maximum(k - 1, 0)]
    threshold = np.where(k > 0, kth, np.inf)[:, None]
    counts = [_inside_and_total(flat > threshold, inside), _inside_and_total(flat == threshold, inside)]
    return np.concatenate(counts, axis=1).astype(np.int64)


def peak_values(cam, mask) -> np.ndarray:
    """The CAM's maximum inside the mask and outside it (0 where the region is empty).

    Parameters
    ----------
    cam : (N, *S) float ndarray
        Non-negative CAMs.
    mask : (N, *S) bool ndarray

    Returns
    -------
    (N, 2) ndarray of ``cam``'s dtype
        Columns :data:`PEAK_VALUES`.
    """
    flat, inside = _flat(cam, mask)
    zero = np.zeros((), flat.dtype)
    return np.stack([np.where(inside, flat, zero).max(axis=1), np.where(inside, zero, flat).max(axis=1)], axis=1)


def localisation_metrics(grad_camo, empty, mask_voxels, crop_voxels, ranks, peaks) -> Localisation:
    """The per-row metrics from Grad-CAMO and the head's counts.

    Parameters
    ----------
    grad_camo : (N,) float ndarray
    empty : (N,) bool ndarray
        The CAM is empty (no attention: no ranking and no maximum).
    mask_voxels : (N,) int ndarray
        K, the cell's voxels in the crop.
    crop_voxels : int
    ranks : (N, 4) int ndarray
        :func:`rank_counts`.
    peaks : (N, 2) float ndarray
        :func:`peak_values`.

    Returns
    -------
    Localisation

    Notes
    -----
    ``mask_fraction = K / crop_voxels``; ``enrichment = grad_camo / mask_fraction``.
    ``rank_accuracy`` is the expected share of the K highest-CAM voxels inside the mask
    when ties at the K-th value are broken at random:
    ``(above_inside + (K - above_total) * tied_inside / tied_total) / K``.
    ``pointing_hit`` is true when every voxel at the maximum is in the mask (the maximum
    inside exceeds the maximum outside), false when none is, and unknown when the maximum
    is tied across the mask's border (equal maxima) or the CAM is empty.

    Examples
    --------
    >>> ranks = np.array([[1, 1, 1, 2]]); peaks = np.array([[3.0, 2.0]])
    >>> m = localisation_metrics(np.array([0.5]), np.array([False]), np.array([2]), 8, ranks, peaks)
    >>> float(m.rank_accuracy[0]), float(m.enrichment[0]), bool(m.pointing_hit[0])
    (0.75, 2.0, True)
    """
    k = np.asarray(mask_voxels, dtype=np.float64)
    empty = np.asarray(empty, dtype=bool)
    above_inside, above_total, tied_inside, tied_total = np.asarray(ranks, dtype=np.float64).T
    peak_inside, peak_outside = np.asarray(peaks).T
    mask_fraction = k / crop_voxels
    with np.errstate(invalid="ignore", divide="ignore"):
        enrichment = np.where(mask_fraction > 0, grad_camo / mask_fraction, np.nan)
        rank = (above_inside + (k - above_total) * tied_inside / tied_total) / k
    rank = np.where(empty | (k == 0), np.nan, rank)
    known = ~empty & (peak_inside != peak_outside)
    return Localisation(mask_fraction, enrichment, rank, known & (peak_inside > peak_outside), known)
