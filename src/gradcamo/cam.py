"""Grad-CAM and Grad-CAMO arithmetic in plain numpy (the reference the scorer is checked against).

No torch, no onnxruntime: these functions define the score convention of DESIGN.md.
"""

import numpy as np

from gradcamo.errors import InputError

CONVENTIONS = ("raw", "pytorch-grad-cam")
MINMAX_EPS = 1e-7
"""Added to the maximum by pytorch-grad-cam's min-max scaling; kept for bit-compatibility."""


def check_choice(name, value, choices):
    """Raise an InputError (a ValueError) naming the argument ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}: expected one of {choices}, got {value!r}", argument=name)


def compute_cam(activations, gradients, *, convention="raw"):
    """Grad-CAM maps at the target layer's resolution.

    Parameters
    ----------
    activations : (N, K, *S) float ndarray
        Target-layer activations, ``S`` the 2 or 3 spatial axes.
    gradients : (N, K, *S) float ndarray
        Gradients of each sample's target logit with respect to ``activations``.
    convention : {"raw", "pytorch-grad-cam"}
        ``raw`` keeps the ReLU'd map as is; ``pytorch-grad-cam`` min-max scales
        each map first, as that library does.

    Returns
    -------
    cam : (N, *S) float64 ndarray

    Notes
    -----
    .. math:: \\alpha_k = \\operatorname{mean}_s G_{k,s}, \\qquad
              \\mathrm{cam} = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A_k\\Big)

    Examples
    --------
    >>> a = np.ones((1, 2, 2, 2)); g = np.ones((1, 2, 2, 2))
    >>> compute_cam(a, g)[0]
    array([[2., 2.],
           [2., 2.]])
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    if activations.shape != gradients.shape or activations.ndim not in (4, 5):
        raise ValueError(
            f"activations {activations.shape} and gradients {gradients.shape} must have "
            "one equal (N, K, [D,] H, W) shape"
        )
    spatial = tuple(range(2, activations.ndim))
    alpha = gradients.astype(np.float64).mean(axis=spatial)
    cam = np.einsum("nk,nk...->n...", alpha, activations.astype(np.float64))
    cam = np.maximum(cam, 0.0)
    if convention == "pytorch-grad-cam":
        axes = tuple(range(1, cam.ndim))
        cam = cam - cam.min(axis=axes, keepdims=True)
        cam = cam / (cam.max(axis=axes, keepdims=True) + MINMAX_EPS)
    return cam


def linear_resize_matrix(n_in, n_out):
    """Weights of 1-D linear interpolation with half-pixel centres.

    Row ``i`` holds the weights of the ``n_in`` source samples for output sample
    ``i``, as torch ``F.interpolate(mode="linear", align_corners=False)`` and ONNX
    ``Resize(mode="linear", coordinate_transformation_mode="half_pixel")`` compute them.

    Returns
    -------
    weights : (n_out, n_in) float64 ndarray
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def resize_cam(cam, shape):
    """Bi-/tri-linear resize of CAMs to the crop shape (half-pixel centres).

    Parameters
    ----------
    cam : (N, *S) float ndarray
    shape : tuple of int
        Target spatial shape, same length as ``S``.

    Returns
    -------
    resized : (N, *shape) float64 ndarray
    """
    if cam.ndim - 1 != len(shape):
        raise ValueError(f"cam has {cam.ndim - 1} spatial axes, shape {tuple(shape)} has {len(shape)}")
    out = cam.astype(np.float64)
    for axis, n_out in enumerate(shape, start=1):
        weights = linear_resize_matrix(out.shape[axis], n_out)
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return out


def score_ratio(inside, total):
    """Grad-CAMO from the attention inside the cell and in the whole crop: the one NaN rule.

    Parameters
    ----------
    inside, total : (N,) float ndarrays

    Returns
    -------
    score : (N,) float64 ndarray
        ``inside / total``; NaN where the CAM is empty.
    empty : (N,) bool ndarray
        Where ``total`` is not > 0 (zero, or NaN from NaN intensities).

    Examples
    --------
    >>> score_ratio(np.array([1.0, 0.0]), np.array([4.0, 0.0]))
    (array([0.25,  nan]), array([False,  True]))
    """
    inside = np.asarray(inside, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    empty = ~(total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(empty, np.nan, inside / np.where(empty, 1.0, total))
    return score, empty


def gradcamo_score(cam, mask):
    """Share of each CAM that lies inside its cell's mask.

    Parameters
    ----------
    cam : (N, *S) float ndarray
        CAMs at crop resolution (non-negative).
    mask : (N, *S) bool ndarray
        True on the voxels of the cell the crop was cut for.

    Returns
    -------
    inside, total, score : (N,) float64 ndarrays
        ``score = inside / total``; NaN where ``total == 0`` (an empty CAM).

    Examples
    --------
    >>> cam = np.array([[[1.0, 1.0], [2.0, 0.0]]])
    >>> mask = np.array([[[True, False], [True, False]]])
    >>> gradcamo_score(cam, mask)[2]
    array([0.75])
    """
    if cam.shape != mask.shape:
        raise ValueError(f"cam shape {cam.shape} != mask shape {mask.shape}")
    axes = tuple(range(1, cam.ndim))
    total = cam.sum(axis=axes, dtype=np.float64)
    inside = np.where(mask, cam, 0.0).sum(axis=axes, dtype=np.float64)
    return inside, total, score_ratio(inside, total)[0]
