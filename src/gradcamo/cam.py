"""Grad-CAM and Grad-CAMO arithmetic in plain numpy (the reference the scorer is checked against).

No torch, no onnxruntime: these functions define the score convention of docs/score.md.
"""

import numpy as np
from scipy import ndimage

from gradcamo.errors import InputError

CONVENTIONS = ("raw", "pytorch-grad-cam")
METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam")
MINMAX_EPS = 1e-7
"""Added to the maximum by pytorch-grad-cam's min-max scaling; kept for bit-compatibility."""
GRADCAM_PLUSPLUS_EPS = 1e-6
"""Added to the denominator of Grad-CAM++'s alpha by pytorch-grad-cam."""
XGRADCAM_EPS = 1e-7
"""Added to the activation sums XGrad-CAM divides by, as pytorch-grad-cam does."""
SPLINE_ORDER = 3
"""Order of the ``scipy.ndimage.zoom`` spline pytorch-grad-cam resizes 3D maps with."""


def check_choice(name, value, choices) -> None:
    """Raise an InputError (a ValueError) naming the argument ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}: expected one of {choices}, got {value!r}", argument=name)


def check_methods(methods) -> tuple[str, ...]:
    """``methods`` as a tuple of distinct names from :data:`METHODS`; a string is split at commas.

    Raises
    ------
    InputError
        An unknown or repeated method, or none.
    """
    if isinstance(methods, str):
        methods = methods.split(",")
    methods = tuple(str(method).strip() for method in methods)
    for method in methods:
        check_choice("methods", method, METHODS)
    if not methods or len(set(methods)) != len(methods):
        raise InputError(f"methods: expected distinct names from {METHODS}, got {methods}", argument="methods")
    return methods


def cam_weights(activations, gradients, method) -> np.ndarray:
    """Per-channel (or per-position) weights ``W`` of ``cam = ReLU(sum_k W_k * A_k)``.

    Parameters
    ----------
    activations, gradients : (N, K, *S) float64 ndarrays
    method : str
        One of :data:`METHODS`.

    Returns
    -------
    weights : (N, K, 1, ...) or (N, K, *S) float64 ndarray
        Broadcastable against ``activations``.

    Notes
    -----
    With ``s`` the spatial positions (formulas as pytorch-grad-cam 1.5.7 computes them):

    - gradcam: :math:`W_k = \\operatorname{mean}_s g_{k,s}`
    - hirescam: :math:`W_{k,s} = g_{k,s}`
    - gradcam++: :math:`W_k = \\sum_s \\alpha_{k,s} \\mathrm{ReLU}(g_{k,s})`,
      :math:`\\alpha = g^2 / (2 g^2 + \\sum_s A_k \\, g^3 + 10^{-6})`, 0 where :math:`g = 0`
    - xgradcam: :math:`W_k = \\sum_s g_{k,s} A_{k,s} / (\\sum_s A_{k,s} + 10^{-7})`
    - layercam: :math:`W_{k,s} = \\mathrm{ReLU}(g_{k,s})`
    """
    check_choice("method", method, METHODS)
    spatial = tuple(range(2, activations.ndim))
    if method == "gradcam":
        return gradients.mean(axis=spatial, keepdims=True)
    if method == "hirescam":
        return gradients
    if method == "layercam":
        return np.maximum(gradients, 0.0)
    activation_sums = activations.sum(axis=spatial, keepdims=True)
    if method == "xgradcam":
        return (gradients * activations / (activation_sums + XGRADCAM_EPS)).sum(axis=spatial, keepdims=True)
    squared = gradients**2
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = squared / (2 * squared + activation_sums * squared * gradients + GRADCAM_PLUSPLUS_EPS)
    alpha = np.where(gradients != 0, alpha, 0.0)
    return (np.maximum(gradients, 0.0) * alpha).sum(axis=spatial, keepdims=True)


def minmax_scale(cam) -> np.ndarray:
    """pytorch-grad-cam's per-map scaling ``c = cam - min(cam); c / (max(c) + 1e-7)``.

    Parameters
    ----------
    cam : (N, *S) float ndarray

    Returns
    -------
    (N, *S) float64 ndarray
    """
    axes = tuple(range(1, cam.ndim))
    shifted = cam - cam.min(axis=axes, keepdims=True)
    return shifted / (shifted.max(axis=axes, keepdims=True) + MINMAX_EPS)


def compute_cam(activations, gradients, *, convention="raw", method="gradcam") -> np.ndarray:
    """CAMs at the target layer's resolution.

    Parameters
    ----------
    activations : (N, K, *S) float ndarray
        Target-layer activations, ``S`` the 2 or 3 spatial axes.
    gradients : (N, K, *S) float ndarray
        Gradients of each sample's target logit with respect to ``activations``.
    convention : {"raw", "pytorch-grad-cam"}
        ``raw`` keeps the ReLU'd map as is; ``pytorch-grad-cam`` min-max scales
        each map (:func:`minmax_scale`), as that library does before its resize.
    method : str
        One of :data:`METHODS` (:func:`cam_weights`).

    Returns
    -------
    cam : (N, *S) float64 ndarray

    Notes
    -----
    .. math:: \\mathrm{cam} = \\mathrm{ReLU}\\Big(\\sum_k W_k A_k\\Big)

    Examples
    --------
    >>> a = np.ones((1, 2, 2, 2)); g = np.ones((1, 2, 2, 2))
    >>> compute_cam(a, g)[0]
    array([[2., 2.],
           [2., 2.]])
    """
    check_choice("convention", convention, CONVENTIONS)
    if activations.shape != gradients.shape or activations.ndim not in (4, 5):
        raise ValueError(
            f"activations {activations.shape} and gradients {gradients.shape} must have "
            "one equal (N, K, [D,] H, W) shape"
        )
    activations = activations.astype(np.float64)
    weights = cam_weights(activations, gradients.astype(np.float64), method)
    cam = np.maximum((weights * activations).sum(axis=1), 0.0)
    return minmax_scale(cam) if convention == "pytorch-grad-cam" else cam


def linear_resize_matrix(n_in, n_out) -> np.ndarray:
    """Weights of 1-D linear interpolation with half-pixel centres.

    Row ``i`` holds the weights of the ``n_in`` source samples for output sample
    ``i``, as torch ``F.interpolate(mode="linear", align_corners=False)``, ONNX
    ``Resize(mode="linear", coordinate_transformation_mode="half_pixel")`` and
    ``cv2.resize(interpolation=INTER_LINEAR)`` compute them.

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


def spline_resize_matrix(n_in, n_out) -> np.ndarray:
    """Weights of pytorch-grad-cam's 3D resize along one axis.

    ``scipy.ndimage.zoom(map, n_out / n_in)`` (cubic spline, order 3, default mode) is
    linear in the map and separable, so it is this matrix applied along each axis.

    Returns
    -------
    weights : (n_out, n_in) float64 ndarray

    Raises
    ------
    ValueError
        ``zoom`` would not give ``n_out`` samples (rounding of the zoom factor).
    """
    factor = n_out / n_in  # the factor pytorch-grad-cam passes, so zoom rounds alike
    columns = [ndimage.zoom(unit, factor, order=SPLINE_ORDER) for unit in np.eye(n_in)]
    if len(columns[0]) != n_out:
        raise ValueError(f"scipy.ndimage.zoom of {n_in} samples by {factor} gives {len(columns[0])}, not {n_out}")
    return np.stack(columns, axis=1)


def resize_matrices(layer_shape, crop_shape, convention="raw") -> list[np.ndarray]:
    """Per-axis resize weights from the layer's to the crop's spatial shape.

    ``raw``, and ``pytorch-grad-cam`` in 2D (``cv2.resize``, bilinear): linear with
    half-pixel centres (:func:`linear_resize_matrix`); ``pytorch-grad-cam`` in 3D:
    cubic spline (:func:`spline_resize_matrix`).

    Returns
    -------
    list of (n_out, n_in) float64 ndarrays
    """
    check_choice("convention", convention, CONVENTIONS)
    if len(layer_shape) != len(crop_shape):
        raise ValueError(f"cam has {len(layer_shape)} spatial axes, shape {tuple(crop_shape)} has {len(crop_shape)}")
    spline = convention == "pytorch-grad-cam" and len(crop_shape) == 3
    matrix = spline_resize_matrix if spline else linear_resize_matrix
    return [matrix(n_in, n_out) for n_in, n_out in zip(layer_shape, crop_shape)]


def resize_cam(cam, shape, *, convention="raw") -> np.ndarray:
    """CAMs at the crop's resolution, as the convention resizes them.

    Parameters
    ----------
    cam : (N, *S) float ndarray
        Maps from :func:`compute_cam` with the same ``convention``.
    shape : tuple of int
        Target spatial shape, same length as ``S``.
    convention : {"raw", "pytorch-grad-cam"}
        ``raw``: bi-/tri-linear with half-pixel centres. ``pytorch-grad-cam``: that
        library's resize (bilinear in 2D, cubic spline in 3D, :func:`resize_matrices`),
        then ReLU and :func:`minmax_scale` once more, as its ``aggregate_multi_layers`` does.

    Returns
    -------
    resized : (N, *shape) float64 ndarray
    """
    out = cam.astype(np.float64)
    for axis, weights in enumerate(resize_matrices(cam.shape[1:], shape, convention), start=1):
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    if convention == "pytorch-grad-cam":
        out = minmax_scale(np.maximum(out, 0.0))
    return out


def crop_cam(activations, gradients, shape, *, convention="raw", method="gradcam") -> np.ndarray:
    """:func:`compute_cam` then :func:`resize_cam`: the map whose masked share is Grad-CAMO.

    Returns
    -------
    cam : (N, *shape) float64 ndarray
    """
    cam = compute_cam(activations, gradients, convention=convention, method=method)
    return resize_cam(cam, shape, convention=convention)


def softmax(logits) -> np.ndarray:
    """Class probabilities of (N, K) logits, row by row, in float64 (shifted by each row's maximum)."""
    shifted = np.exp(np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def score_ratio(inside, total) -> tuple[np.ndarray, np.ndarray]:
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


def gradcamo_score(cam, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
