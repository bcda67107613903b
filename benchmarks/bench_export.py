"""What does the gradient graph cost? ORT gradient graph vs ORT forward-only vs torch eager.

For resnet18 (5x96x96) and r3d_18 (5x32x64x64) with 5 input channels and target layer
``layer4`` this script, in one run:

1. exports the gradcamo gradient graph (``gradcamo.export_model``) and a forward-only graph
   of the plain model (dynamo exporter, opset 18, dynamic batch), timing both exports;
2. times, round-robin and after warm-up, the median of ``--repeats`` calls of
   - ``ort_grad``:    ORT session of the gradient graph (logits, activations, gradients),
   - ``ort_forward``: ORT session of the forward-only graph (logits),
   - ``torch_grad``:  torch eager forward + hook on layer4 + torch.autograd.grad,
   - ``torch_forward``: torch eager forward under ``inference_mode`` (context only);
3. prints the ratios ``ort_grad / ort_forward`` (price of the gradients inside ORT) and
   ``ort_grad / torch_grad`` (ORT vs the usual torch way; < 1 means ORT is faster);
4. with ``--sweep-options`` also times the gradient graph under other ORT session options
   (graph optimisation level ALL/EXTENDED/BASIC, intra-op thread counts).

Run ``python benchmarks/bench_export.py --quick`` for a smoke run (small shapes).
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

import gradcamo  # noqa: E402
from gradcamo.cam import compute_cam  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=common.DEVICES, default="cpu")
    parser.add_argument("--models", default="resnet18,r3d_18",
                        help="comma-separated subset of resnet18,r3d_18")
    parser.add_argument("--quick", action="store_true", help="small shapes for a fast smoke run")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for ORT (default: ORT's choice)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the eager candidates (default: torch's choice)")
    parser.add_argument("--sweep-options", action="store_true",
                        help="also time the gradient graph under other ORT session options")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write all results here")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where the .onnx files go (default: a temporary directory)")
    return parser.parse_args(argv)


def _cam_agreement(ort_outputs, torch_outputs):
    """Max relative difference of the raw CAMs (ORT vs torch eager)."""
    cam_ort = compute_cam(ort_outputs[1], ort_outputs[2])
    cam_torch = compute_cam(*(t.detach().cpu().numpy() for t in torch_outputs[1:]))
    scale = max(np.abs(cam_torch).max(), 1e-12)
    return float(np.abs(cam_ort - cam_torch).max() / scale)


def bench_model(name, args, workdir):
    shapes = common.QUICK_SHAPES if args.quick else common.SHAPES
    shape = shapes[name]
    result = {"model": name, "input_shape": list(shape), "batch": args.batch, "device": args.device}
    model, layer_name = common.build_model(name)

    grad_path = workdir / f"{name}_grad.onnx"
    fwd_path = workdir / f"{name}_forward.onnx"
    start = time.perf_counter()
    gradcamo.export_model(model, layer_name, shape, grad_path)
    result["export_grad_s"] = time.perf_counter() - start
    start = time.perf_counter()
    common.export_forward_only(model, shape, fwd_path)
    result["export_forward_s"] = time.perf_counter() - start
    result["grad_onnx_mb"] = grad_path.stat().st_size / 2**20
    print(f"[{name}] exported: gradient graph {result['export_grad_s']:.1f} s "
          f"(incl. validation), forward-only {result['export_forward_s']:.1f} s", flush=True)

    grad_session = common.create_session(grad_path, device=args.device, threads=args.threads)
    fwd_session = common.create_session(fwd_path, device=args.device, threads=args.threads)
    result["providers"] = grad_session.get_providers()

    rng = np.random.default_rng(0)
    image = rng.random((args.batch, *shape), dtype=np.float32)
    target = np.full((args.batch,), -1, dtype=np.int64)
    grad_feed = {"image": image, "target": target}
    fwd_feed = {"image": image}

    device = common.torch_device(args.device)
    tmodel = model.to(device)
    tlayer = common.get_layer(tmodel, layer_name)
    timage = torch.from_numpy(image).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    # correctness first (also a warm-up); single-call times are printed as a first estimate
    start = time.perf_counter()
    ort_out = grad_session.run(None, grad_feed)
    middle = time.perf_counter()
    torch_out = common.torch_grad_cam_inputs(tmodel, tlayer, timage)
    print(f"[{name}] first calls: ort_grad {middle - start:.2f} s, "
          f"torch_grad {time.perf_counter() - middle:.2f} s; timing...", flush=True)
    result["cam_max_rel_diff_vs_torch"] = _cam_agreement(ort_out, torch_out)
    del ort_out, torch_out

    def torch_grad():
        common.torch_grad_cam_inputs(tmodel, tlayer, timage)

    def torch_forward():
        with torch.inference_mode():
            tmodel(timage)

    fns = {
        "ort_grad": lambda: grad_session.run(None, grad_feed),
        "ort_forward": lambda: fwd_session.run(None, fwd_feed),
        "torch_grad": torch_grad,
        "torch_forward": torch_forward,
    }
    timings = common.interleaved_median_times(fns, repeats=args.repeats, warmup=args.warmup, sync=sync)
    result["median_s"] = {k: v[0] for k, v in timings.items()}
    result["times_s"] = {k: v[1] for k, v in timings.items()}
    med = result["median_s"]
    result["ratios"] = {
        "ort_grad/ort_forward": med["ort_grad"] / med["ort_forward"],
        "ort_grad/torch_grad": med["ort_grad"] / med["torch_grad"],
        "ort_forward/torch_forward": med["ort_forward"] / med["torch_forward"],
        "torch_grad/torch_forward": med["torch_grad"] / med["torch_forward"],
    }

    if args.sweep_options:
        result["options_sweep"] = sweep_options(grad_path, grad_feed, args)
    del grad_session, fwd_session
    return result


def sweep_options(grad_path, feed, args):
    """Median time of the gradient graph under several session options (round-robin)."""
    cores = os.cpu_count() or 1
    variants = {"all/default": ("all", None), "extended/default": ("extended", None),
                "basic/default": ("basic", None), "all/1thread": ("all", 1)}
    if cores > 1:
        variants[f"all/{cores}threads"] = ("all", cores)
        variants[f"extended/{cores}threads"] = ("extended", cores)
    sessions = {
        key: common.create_session(grad_path, device=args.device, opt_level=lvl, threads=thr)
        for key, (lvl, thr) in variants.items()
    }
    fns = {key: (lambda s=s: s.run(None, feed)) for key, s in sessions.items()}
    timings = common.interleaved_median_times(fns, repeats=args.repeats, warmup=args.warmup)
    base = timings["all/default"][0]
    return {key: {"median_s": med, "vs_all_default": med / base} for key, (med, _) in timings.items()}


def print_result(r):
    med = r["median_s"]
    shape = "x".join(map(str, r["input_shape"]))
    print(f"\n{r['model']}  input {shape}  batch {r['batch']}  device {r['device']}  "
          f"providers {r['providers']}")
    print(f"  CAM max rel diff ORT vs torch eager: {r['cam_max_rel_diff_vs_torch']:.1e}")
    print(f"  {'candidate':<16}{'median s':>10}{'ms/sample':>12}")
    for key in ("ort_grad", "ort_forward", "torch_grad", "torch_forward"):
        print(f"  {key:<16}{med[key]:>10.3f}{1000 * med[key] / r['batch']:>12.2f}")
    for key, value in r["ratios"].items():
        print(f"  ratio {key:<28}{value:>7.2f}")
    if "options_sweep" in r:
        print("  ORT session options (gradient graph), ratio to ALL/default threads:")
        for key, value in r["options_sweep"].items():
            print(f"    {key:<20}{value['median_s']:>8.3f} s{value['vs_all_default']:>7.2f}")


def main(argv=None):
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(common.SHAPES)
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from {sorted(common.SHAPES)}")
    try:
        common.check_device_available(args.device)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    torch.manual_seed(0)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    with tempfile.TemporaryDirectory(prefix="gradcamo-bench-") as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            result = bench_model(name, args, workdir)
            print_result(result)
            results.append(result)
    record = common.machine_record()
    record["session_providers"] = sorted({tuple(r["providers"]) for r in results})
    record["load_average_at_start"] = load_at_start
    print("\nmachine:\n" + common.format_record(record))
    if args.json:
        args.json.write_text(json.dumps({"machine": record, "args": vars(args) | {
            "json": str(args.json), "workdir": str(args.workdir)}, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
