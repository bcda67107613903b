"""An independent torch Grad-CAM / Grad-CAMO reference for the numerical tests.

Written from docs/score.md ("Conventions") with eager torch autograd, in float64, one sample
at a time. It shares no code with ``gradcamo.exporter`` (no GradCamWrapper, no
capture_layer_output) nor with ``gradcamo.cam``; tests compare both against it.

How the layer output is captured: a forward hook keeps the layer's own output tensor
and hands a ``clone()`` of it downstream. In-place ops after the layer (torchvision's
DenseNet applies ``F.relu(features, inplace=True)`` to the output of ``features``) then
modify only the clone, so the kept tensor still holds the pre-ReLU activations, and
``torch.autograd.grad(selected_logit, kept_output)`` is the gradient with respect to
exactly the values the rest of the network consumed.

Below the torch reference, helpers shared by the numerical tests: batch-norm calibration,
the pre-ReLU CAM scale errors are measured against, and ``reference_rows``: the scorer's
per-cell reference (crops cut from the zero-padded whole image, the exported contract graph
run one cell at a time, the numpy arithmetic of ``gradcamo.cam``, itself checked against
the torch reference), against which the Dask pipeline's cropping, batching and in-graph
head are checked with ``assert_matches``.
"""

import copy
import typing

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from gradcamo.cam import crop_cam, gradcamo_score

MINMAX_EPS = 1e-7


class GradCamReference(typing.NamedTuple):
    """Everything the reference computes for one batch (numpy float64 arrays)."""

    logits: np.ndarray  # (N, K)
    targets: np.ndarray  # (N,) int64: the class whose logit was differentiated
    activations: np.ndarray  # (N, Ck, *s) at the target layer
    gradients: np.ndarray  # (N, Ck, *s)
    cam: np.ndarray  # (N, *s) after ReLU (and min-max for "pytorch-grad-cam")
    upsampled: np.ndarray  # (N, *S) cam resized to the crop shape (torch_upsample)


def _layer_name(model, layer):
    if isinstance(layer, str):
        return layer
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("layer_module is not a sub-module of model")


def torch_cam(activations, gradients, *, convention="raw"):
    """Grad-CAM at layer resolution from activations and gradients (torch, float64).

    ``alpha_k = mean_s G_k``; ``cam = ReLU(sum_k alpha_k A_k)``; with
    ``convention="pytorch-grad-cam"`` then ``c = cam - min; c / (max + 1e-7)`` per sample.
    """
    activations = torch.as_tensor(activations, dtype=torch.float64)
    gradients = torch.as_tensor(gradients, dtype=torch.float64)
    spatial = tuple(range(2, activations.dim()))
    alpha = gradients.mean(dim=spatial, keepdim=True)
    cam = torch.relu((alpha * activations).sum(dim=1))
    if convention == "pytorch-grad-cam":
        cam = _torch_minmax(cam)
    elif convention != "raw":
        raise ValueError(f"convention: unknown {convention!r}")
    return cam


def _torch_minmax(cam):
    flat = cam.reshape(len(cam), -1)
    view = (len(cam),) + (1,) * (cam.dim() - 1)
    cam = cam - flat.min(dim=1).values.reshape(view)
    return cam / (cam.reshape(len(cam), -1).max(dim=1).values.reshape(view) + MINMAX_EPS)


def torch_upsample(cam, shape, convention="raw"):
    """(N, *s) layer maps -> (N, *shape) crop maps as the convention resizes them.

    ``raw``: :func:`torch_resize`. ``pytorch-grad-cam`` (what its ``scale_cam_image`` and
    ``aggregate_multi_layers`` do): bilinear in 2D, ``scipy.ndimage.zoom`` (cubic spline)
    per map in 3D, then ReLU and min-max once more.
    """
    if convention == "raw" or len(shape) == 2:
        resized = torch_resize(cam, shape)
    else:
        cam = np.asarray(cam, dtype=np.float64)
        factors = [t / s for s, t in zip(cam.shape[1:], shape)]
        resized = torch.as_tensor(np.stack([ndimage.zoom(c, factors) for c in cam]))
    return resized if convention == "raw" else _torch_minmax(torch.relu(resized))


def torch_resize(cam, shape):
    """(N, *s) -> (N, *shape) with ``F.interpolate(..., align_corners=False)``."""
    cam = torch.as_tensor(cam, dtype=torch.float64)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    return F.interpolate(cam[:, None], size=tuple(shape), mode=mode, align_corners=False)[:, 0]


def _normalise(image, mean, std):
    view = (1, -1) + (1,) * (image.dim() - 2)
    if mean is not None:
        image = image - torch.as_tensor(mean, dtype=image.dtype).reshape(view)
    if std is not None:
        image = image / torch.as_tensor(std, dtype=image.dtype).reshape(view)
    return image


def torch_gradcam(
    model, layer_module, image, target, *, mean=None, std=None, convention="raw", dtype=torch.float64,
    reshape=None,
):
    """Grad-CAM of ``layer_module`` for each sample of ``image`` by eager torch autograd.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier; deep-copied, cast to ``dtype`` and put in eval mode (the
        caller's model is not changed).
    layer_module : torch.nn.Module or str
        The target layer (a sub-module of ``model``) or its name.
    image : (N, C, *S) array-like
        Raw intensities; ``(image - mean) / std`` is applied per channel when given.
    target : (N,) array-like of int
        Class per sample; -1 selects the argmax class.
    convention : {"raw", "pytorch-grad-cam"}
    reshape : callable, optional
        Applied to the layer's output and to its gradient alike before the CAM (a
        pytorch-grad-cam ``reshape_transform``: tokens or channels-last -> (N, C, h, w)).

    Returns
    -------
    GradCamReference
    """
    name = _layer_name(model, layer_module)
    reshape = reshape or (lambda tensor: tensor)
    model = copy.deepcopy(model).to(dtype).eval()
    layer = model.get_submodule(name)
    image = torch.as_tensor(np.asarray(image)).to(dtype)
    target = np.asarray(target, dtype=np.int64).reshape(-1)
    kept = []

    def hook(module, inputs, output):
        kept.append(output)
        return output.clone()

    logits, targets, activations, gradients = [], [], [], []
    handle = layer.register_forward_hook(hook)
    try:
        for i in range(len(image)):
            kept.clear()
            x = _normalise(image[i : i + 1], mean, std).requires_grad_(True)
            with torch.enable_grad():
                out = model(x)
                if len(kept) != 1:
                    raise RuntimeError(f"layer {name!r} ran {len(kept)} times")
                cls = int(out[0].argmax()) if target[i] < 0 else int(target[i])
                (grad,) = torch.autograd.grad(out[0, cls], kept[0])
            logits.append(out.detach())
            targets.append(cls)
            activations.append(reshape(kept[0].detach()))
            gradients.append(reshape(grad.detach()))
    finally:
        handle.remove()
    activations = torch.cat(activations).to(torch.float64)
    gradients = torch.cat(gradients).to(torch.float64)
    cam = torch_cam(activations, gradients, convention=convention)
    upsampled = torch_upsample(cam, tuple(image.shape[2:]), convention)
    return GradCamReference(
        logits=torch.cat(logits).to(torch.float64).numpy(),
        targets=np.asarray(targets, dtype=np.int64),
        activations=activations.numpy(),
        gradients=gradients.numpy(),
        cam=cam.numpy(),
        upsampled=upsampled.numpy(),
    )


def torch_gradcamo(model, layer_module, image, mask, target, *, mean=None, std=None, convention="raw", reshape=None):
    """Grad-CAMO per sample: share of the crop-resolution CAM inside ``mask``.

    Returns
    -------
    inside, total, score : (N,) float64 ndarrays
        ``score`` is NaN where ``total == 0``.
    """
    reference = torch_gradcam(model, layer_module, image, target, mean=mean, std=std, convention=convention,
                              reshape=reshape)
    return gradcamo_of(reference, mask)


def gradcamo_of(reference, mask):
    """Grad-CAMO per sample of a :class:`GradCamReference` (as :func:`torch_gradcamo` returns it)."""
    cam = torch.from_numpy(reference.upsampled)
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    inside = (cam * mask).flatten(1).sum(dim=1)
    total = cam.flatten(1).sum(dim=1)
    score = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.nan)
    return inside.numpy(), total.numpy(), score.numpy()


def pooled_activations(reference):
    """The spatial mean of the target layer's activations per sample (what ``score --features`` writes)."""
    return reference.activations.mean(axis=tuple(range(2, reference.activations.ndim)))


def calibrate_batchnorm(model, input_shape, *, batches, batch_size):
    """Set batch-norm running statistics from seeded random inputs, as training would.

    A freshly initialised network in eval mode shrinks its activations block after block
    (SiLU halves small inputs), leaving near-constant logits; calibrated statistics give
    O(1) activations and informative CAMs. Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((batch_size, *input_shape), generator=generator))
    return model.eval()


def signed_cam_scale(reference):
    """Largest |sum_k alpha_k A_k| per sample of a :class:`GradCamReference`: the CAM's scale before its ReLU."""
    spatial = tuple(range(2, reference.activations.ndim))
    alpha = reference.gradients.mean(axis=spatial)
    signed = np.einsum("nk,nk...->n...", alpha, reference.activations)
    return np.abs(signed).reshape(len(signed), -1).max(axis=1)


def reference_crops(image, labels, crop_shape, centre_labels=None):
    """(cell, centroid, crop (1, C, *S) float32, mask, pad fraction) per cell, cut from the zero-padded
    whole image by the crop rule of docs/score.md, one cell at a time; with ``centre_labels``, centred on the centroid
    of the object of the same id there (cells without one are left out)."""
    crop = np.asarray(crop_shape[1:])
    pad = [(0, 0)] + [(int(c), int(c)) for c in crop]
    padded_image = np.pad(image.astype(np.float32), pad)
    padded_labels = np.pad(labels, pad[1:])
    for cell in np.unique(labels)[1:]:
        centre_of = labels if centre_labels is None else centre_labels
        if not (centre_of == cell).any():
            continue
        centroid = np.argwhere(centre_of == cell).mean(axis=0)
        start = np.floor(centroid + 0.5).astype(int) - crop // 2 + crop
        window = tuple(slice(s, s + c) for s, c in zip(start, crop))
        outside = np.pad(np.ones(labels.shape, bool), pad[1:])[window]
        yield cell, centroid, padded_image[(slice(None),) + window][None], padded_labels[window] == cell, 1 - outside.mean()


def reference_rows(model_path, image, labels, crop_shape, targets, convention="raw", method="gradcam",
                   centre_labels=None):
    """{(object, target): (grad_camo, cam_inside, cam_total, predicted, pad)}, cell by cell."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    crop = np.asarray(crop_shape[1:])
    rows = {}
    for cell, _, x, mask, pad_fraction in reference_crops(image, labels, crop_shape, centre_labels):
        for target in targets:
            logits, activations, gradients = session.run(None, {"image": x, "target": np.array([target])})
            cam = crop_cam(activations, gradients, tuple(crop), convention=convention, method=method)
            inside, total, value = gradcamo_score(cam, mask[None])
            predicted = int(logits.argmax())
            key = (int(cell), predicted if target < 0 else target)
            rows[key] = (value[0], inside[0], total[0], predicted, pad_fraction)
    return rows


def assert_matches(frame, expected):
    """Score rows (a pandas frame) equal :func:`reference_rows`' values, one row per cell and target."""
    assert len(frame) == len(expected)
    assert not frame.duplicated(["Metadata_Image", "Metadata_ObjectNumber", "target_class"]).any()
    for row in frame.itertuples():
        value, inside, total, predicted, pad = expected[(row.Metadata_ObjectNumber, row.target_class)]
        assert row.predicted_class == predicted
        assert row.cam_total == pytest.approx(total, rel=1e-5)
        assert row.cam_inside == pytest.approx(inside, rel=1e-5, abs=1e-6 * total)
        assert row.grad_camo == pytest.approx(value, abs=1e-5)
        assert row.pad_fraction == pytest.approx(pad, abs=1e-6)
        assert row.edge_padded == (pad > 0)


def torch_method_cam(activations, gradients, method):
    """ReLU'd CAM of one CAM-family method at layer resolution (torch, float64).

    Written from the papers' formulas as issue #16 states them (the eps terms as
    pytorch-grad-cam adds them), with ``s`` the spatial positions:
    gradcam ``w_k = mean_s g``; hirescam ``sum_k g * A``; gradcam++ ``w_k = sum_s alpha
    relu(g)``, ``alpha = g^2 / (2 g^2 + sum_s(A) g^3 + 1e-6)`` (0 where g = 0); xgradcam
    ``w_k = sum_s(A g) / (sum_s A + 1e-7)``; layercam ``sum_k relu(g) * A``.
    """
    a = torch.as_tensor(activations, dtype=torch.float64)
    g = torch.as_tensor(gradients, dtype=torch.float64)
    spatial = tuple(range(2, a.dim()))
    if method == "hirescam":
        return torch.relu((g * a).sum(dim=1))
    if method == "layercam":
        return torch.relu((torch.relu(g) * a).sum(dim=1))
    if method == "gradcam":
        w = g.mean(dim=spatial, keepdim=True)
    elif method == "xgradcam":
        w = (a * g).sum(dim=spatial, keepdim=True) / (a.sum(dim=spatial, keepdim=True) + 1e-7)
    elif method == "gradcam++":
        alpha = g.pow(2) / (2 * g.pow(2) + a.sum(dim=spatial, keepdim=True) * g.pow(3) + 1e-6)
        w = (torch.where(g == 0, torch.zeros_like(alpha), alpha) * torch.relu(g)).sum(dim=spatial, keepdim=True)
    else:
        raise ValueError(f"method: unknown {method!r}")
    return torch.relu((w * a).sum(dim=1))
