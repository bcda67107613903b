"""Grad-CAMO of in-memory crops with the tools people already use (peers of gradcamo).

Every ``score_*`` function takes the same arguments and returns per-cell scores, so a
benchmark suite can check that they agree and time them:

- ``score_pytorch_grad_cam``: ``pytorch_grad_cam.GradCAM`` in its usual per-batch loop,
  then the mask share. NB: that library min-max normalises each CAM (twice: per layer,
  then after aggregation) and resizes with ``cv2.resize`` (2D) or ``scipy.ndimage.zoom``
  (3D, cubic spline, corner-aligned grid); gradcamo's ``pytorch-grad-cam`` convention does
  the same (issue #16), so the two agree to float32 precision.
- ``score_captum``: ``captum.attr.LayerGradCam`` (``relu_attributions=True``) +
  ``F.interpolate`` (bi-/tri-linear, ``align_corners=False``), then the mask share (raw
  convention of docs/score.md).
- ``score_torch_eager``: plain torch: forward hook on the layer + ``torch.autograd.grad``
  of the selected logits, CAM, ``F.interpolate`` and mask share in torch (raw convention).
- ``score_gradcamo_onnx``: an exported gradcamo graph run by onnxruntime, CAM and share
  with ``gradcamo.cam`` (numpy); either convention.

Arguments: ``crops`` (N, C, *S) float32 ndarray, ``masks`` (N, *S) bool ndarray,
``targets`` (N,) int ndarray or None (None = the predicted class), ``batch_size``.
Returns a ``(N,)`` float64 ndarray of Grad-CAMO scores, NaN where the CAM is empty.

``python benchmarks/peers.py [--3d]`` runs a quick agreement check.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from gradcamo.cam import crop_cam, gradcamo_score  # noqa: E402


def batches(n, batch_size):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _share(cam, mask):
    """Mask share of (N, *S) CAMs (torch or numpy) with the same conventions as gradcamo."""
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().cpu().numpy()
    return gradcamo_score(cam.astype(np.float64), mask)[2]


def _device_of(model):
    return next(model.parameters()).device


def predicted_targets(model, crops, batch_size=16):
    """Argmax class of every crop (one no-grad forward)."""
    device = _device_of(model)
    out = []
    with torch.inference_mode():
        for sl in batches(len(crops), batch_size):
            out.append(model(torch.from_numpy(crops[sl]).to(device)).argmax(1).cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- peers

def score_pytorch_grad_cam(model, layer, crops, masks, targets=None, batch_size=16):
    """pytorch-grad-cam's GradCAM, the usual loop; then the mask share of its CAMs."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = _device_of(model)
    scores = []
    # GradCAM's constructor calls model.eval(); our models are already in eval mode.
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for sl in batches(len(crops), batch_size):
            batch = torch.from_numpy(crops[sl]).to(device)
            wanted = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets[sl]]
            grayscale = cam(input_tensor=batch, targets=wanted)  # (B, *S) float32, min-max scaled
            scores.append(_share(grayscale, masks[sl]))
    return np.concatenate(scores)


def score_captum(model, layer, crops, masks, targets=None, batch_size=16):
    """captum LayerGradCam + F.interpolate (linear, half-pixel); then the mask share.

    captum needs explicit targets: with ``targets=None`` one extra no-grad forward finds
    the predicted classes (counted in the time, as a user would have to do it too).
    """
    from captum.attr import LayerGradCam

    device = _device_of(model)
    if targets is None:
        targets = predicted_targets(model, crops, batch_size)
    explainer = LayerGradCam(model, layer)
    spatial = crops.shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    scores = []
    for sl in batches(len(crops), batch_size):
        batch = torch.from_numpy(crops[sl]).to(device)
        target = torch.from_numpy(np.asarray(targets[sl], dtype=np.int64)).to(device)
        attribution = explainer.attribute(batch, target=target, relu_attributions=True)  # (B, 1, *s)
        resized = F.interpolate(attribution, size=spatial, mode=mode, align_corners=False)[:, 0]
        scores.append(_share(resized, masks[sl]))
    return np.concatenate(scores)


def score_torch_eager(model, layer, crops, masks, targets=None, batch_size=16):
    """Forward hook + torch.autograd.grad; CAM, resize and share in torch (raw convention)."""
    device = _device_of(model)
    spatial = crops.shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    scores = []
    for sl in batches(len(crops), batch_size):
        batch = torch.from_numpy(crops[sl]).to(device)
        target = None
        if targets is not None:
            target = torch.from_numpy(np.asarray(targets[sl], dtype=np.int64)).to(device)
        _, act, grad = common.torch_grad_cam_inputs(model, layer, batch, target)
        with torch.no_grad():
            alpha = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
            cam = torch.relu((alpha * act).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=spatial, mode=mode, align_corners=False)[:, 0]
            mask = torch.from_numpy(masks[sl]).to(device)
            total = cam.sum(dim=tuple(range(1, cam.dim()))).double()
            inside = (cam * mask).sum(dim=tuple(range(1, cam.dim()))).double()
            score = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny),
                                torch.full_like(total, float("nan")))
        scores.append(score.cpu().numpy())
    return np.concatenate(scores)


def score_gradcamo_onnx(session, crops, masks, targets=None, batch_size=16, convention="raw"):
    """An exported gradcamo graph in onnxruntime; CAM/resize/share with gradcamo.cam."""
    spatial = crops.shape[2:]
    scores = []
    for sl in batches(len(crops), batch_size):
        n = sl.stop - sl.start
        target = np.full((n,), -1, np.int64) if targets is None else np.asarray(targets[sl], np.int64)
        act, grad = session.run(["activations", "gradients"], {"image": crops[sl], "target": target})
        cam = crop_cam(act, grad, spatial, convention=convention)
        scores.append(gradcamo_score(cam, masks[sl])[2])
    return np.concatenate(scores)


# --------------------------------------------------------------------------- quick check

def make_crops(n, shape, seed=0):
    """Synthetic crops (N, C, *S) float32 and off-centre ellipsoid masks (N, *S) bool."""
    rng = np.random.default_rng(seed)
    channels, spatial = shape[0], shape[1:]
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij")
    crops = np.empty((n, *shape), np.float32)
    masks = np.empty((n, *spatial), bool)
    for i in range(n):
        centre = [s / 2 + rng.uniform(-s / 6, s / 6) for s in spatial]
        radius = [rng.uniform(s / 8, s / 3) for s in spatial]
        dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius))
        masks[i] = dist <= 1.0
        blob = np.exp(-dist)[None] * rng.uniform(0.5, 2.0, (channels,) + (1,) * len(spatial))
        crops[i] = (blob + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    return crops, masks


def _compare(name_a, a, name_b, b):
    both = ~np.isnan(a) & ~np.isnan(b)
    nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
    diff = np.abs(a[both] - b[both])
    corr = float("nan")
    if both.sum() > 2 and a[both].std() > 0 and b[both].std() > 0:
        corr = float(np.corrcoef(a[both], b[both])[0, 1])
    print(f"  {name_a:>22} vs {name_b:<22} max|diff| {diff.max() if diff.size else float('nan'):.2e}  "
          f"mean|diff| {diff.mean() if diff.size else float('nan'):.2e}  pearson {corr:.5f}  "
          f"NaN mismatches {nan_mismatch}")
    return {"max_abs_diff": float(diff.max()) if diff.size else float("nan"),
            "mean_abs_diff": float(diff.mean()) if diff.size else float("nan"),
            "pearson": corr, "nan_mismatches": nan_mismatch}


def main(argv=None):
    parser = argparse.ArgumentParser(description="quick agreement check of the Grad-CAMO peers")
    parser.add_argument("--3d", dest="three_d", action="store_true", help="r3d_18 instead of resnet18")
    parser.add_argument("--n", type=int, default=32, help="number of cells")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shape", default=None, help="crop shape C,H,W or C,D,H,W")
    parser.add_argument("--no-onnx", action="store_true", help="skip the gradcamo ONNX export")
    parser.add_argument("--repeats", type=int, default=0,
                        help="if > 0, also time every scorer (round-robin medians after 1 warm-up)")
    args = parser.parse_args(argv)

    name = "r3d_18" if args.three_d else "resnet18"
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else common.QUICK_SHAPES[name]
    model, layer_name = common.build_model(name, channels=shape[0])
    layer = common.get_layer(model, layer_name)
    crops, masks = make_crops(args.n, shape)
    targets = predicted_targets(model, crops, args.batch)
    print(f"{name} crops {args.n}x{'x'.join(map(str, shape))}, predicted classes {np.bincount(targets)}")

    results, seconds = {}, {}
    runs = {
        "pytorch_grad_cam": lambda: score_pytorch_grad_cam(model, layer, crops, masks, targets, args.batch),
        "captum": lambda: score_captum(model, layer, crops, masks, targets, args.batch),
        "torch_eager": lambda: score_torch_eager(model, layer, crops, masks, targets, args.batch),
    }
    for key, fn in runs.items():
        start = time.perf_counter()
        results[key] = fn()
        seconds[key] = time.perf_counter() - start

    # numpy references on torch's own activations/gradients: raw and pytorch-grad-cam conventions
    act, grad = [], []
    for sl in batches(len(crops), args.batch):
        _, a, g = common.torch_grad_cam_inputs(model, layer, torch.from_numpy(crops[sl]),
                                               torch.from_numpy(targets[sl]))
        act.append(a.detach().numpy())
        grad.append(g.numpy())
    act, grad = np.concatenate(act), np.concatenate(grad)
    for convention in ("raw", "pytorch-grad-cam"):
        cam = crop_cam(act, grad, shape[1:], convention=convention)
        results[f"numpy_{convention}"] = gradcamo_score(cam, masks)[2]

    if not args.no_onnx:
        import gradcamo

        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "model.onnx"
            gradcamo.export_model(model, layer_name, shape, path)
            session = common.create_session(path)  # the model is loaded: the file may go
        for convention in ("raw", "pytorch-grad-cam"):
            start = time.perf_counter()
            results[f"onnx_{convention}"] = score_gradcamo_onnx(
                session, crops, masks, targets, args.batch, convention=convention)
            seconds[f"onnx_{convention}"] = time.perf_counter() - start

    print("scores (first 6 cells):")
    for key, value in results.items():
        print(f"  {key:>22} {np.array2string(value[:6], precision=4)}")
    print("agreement:")
    pairs = [("torch_eager", "captum"), ("torch_eager", "numpy_raw"),
             ("pytorch_grad_cam", "numpy_pytorch-grad-cam"), ("pytorch_grad_cam", "torch_eager")]
    if not args.no_onnx:
        pairs += [("onnx_raw", "torch_eager"), ("onnx_pytorch-grad-cam", "pytorch_grad_cam")]
    for a, b in pairs:
        _compare(a, results[a], b, results[b])
    print("single-pass seconds (includes first-call overheads; not a benchmark): "
          + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    if args.repeats > 0:
        fns = dict(runs)
        if not args.no_onnx:
            fns["onnx_raw"] = lambda: score_gradcamo_onnx(session, crops, masks, targets, args.batch)
        timings = common.interleaved_median_times(fns, repeats=args.repeats, warmup=1)
        base = timings["torch_eager"][0]
        print(f"median seconds for {args.n} cells over {args.repeats} rounds (ratio to torch_eager):")
        for key, (med, _) in timings.items():
            print(f"  {key:>22} {med:8.3f} s  {med / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
