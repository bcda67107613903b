"""The gradcamo benchmark suite: gradcamo against the tools users would otherwise use, in one run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--models resnet18,r3d_18,efficientnet3d]

For each model (random weights, 5 input channels, see ``common.MODELS``), on crops cut
from synthetic OME-Zarr plates exactly as the scorer cuts them:

- in memory, at each batch size, round-robin medians after a warm-up round:
  ``ort_graph`` (bare onnxruntime run of the exported gradient graph), ``ort_forward``
  (the plain model exported forward-only), ``ort_graph_early`` (target layer an earlier
  block; not with --quick), ``gradcamo_head`` (the graph with the in-graph Grad-CAMO head,
  what the scorer's workers run), and the peers computing Grad-CAMO of the same cells:
  ``pytorch_grad_cam`` (its usual GradCAM loop), ``captum`` (LayerGradCam + interpolate),
  ``torch_eager`` (forward hook + autograd);
- end to end: ``gradcamo.score`` (Zarr in, Parquet out) on a plate sized to take a few
  seconds, round-robin with bare ORT and torch eager on all of that plate's cells in memory;
- with resnet18: peak RSS at 1x and 10x the cells, and 2 workers vs 1 worker, each in a
  fresh process;
- the pipeline ceiling: end to end with a tiny model (``TinyCNN2d`` 5x32x32) on a plate of
  1080x1080 fields vs min(bare ORT, whole-array zarr read) on the same plate (``ceiling.py``).

``--scale`` runs instead ``scale.py``: a plate of >= 250k cells scored with the tiny model and
resnet18, with peak RSS per process, part files and a DuckDB query time.

Prints the ratios R1..R4 against their goals and writes
``benchmarks/results/<date>-<host-kind>[-quick].json``. No assertions: numbers, not tests.
"""

import argparse
import datetime
import json
import pathlib
import re
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ceiling  # noqa: E402
import common  # noqa: E402
import endtoend  # noqa: E402
import peers  # noqa: E402
import plates  # noqa: E402

import gradcamo  # noqa: E402
from gradcamo.scorer import head  # noqa: E402
from gradcamo.scorer.session import create_session as create_scoring_session  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
PEERS = ("pytorch_grad_cam", "captum", "torch_eager")
GOALS = {
    "R1 e2e / pytorch_grad_cam": {"cpu": 2.0, "cuda": 5.0},
    "R1b e2e / torch_eager": {"cpu": 0.9, "cuda": 1.0},
    "R2 e2e / ort_graph": {"cpu": 0.9, "cuda": 0.9},
    "R2s steady / ort_graph": {"cpu": 0.9, "cuda": 0.9},
    "ceiling e2e / min(ort_graph, read)": {"cpu": 0.5, "cuda": 0.5},
}
# (full, quick) settings. End-to-end plates are sized from the measured bare-ORT speed so that
# one pass takes about ``e2e_seconds``; 3D models on CPU use small batches (a 5x32x64x64 crop
# takes about a second on 2 cores).
SETTINGS = {
    False: {"batches": (1, 16, 64), "cpu_3d_batches": (1, 8), "repeats": 3, "e2e_seconds": 10.0,
            "scaling_seconds": 30.0, "max_cells": 3000, "ceiling_wells": 48},
    True: {"batches": (16,), "cpu_3d_batches": (8,), "repeats": 2, "e2e_seconds": 1.5,
           "scaling_seconds": 5.0, "max_cells": 1000, "ceiling_wells": 12},
}


STARTED = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small crops, few cells, one batch size, no earlier-layer graph: about 3 minutes on 2 cores")
    parser.add_argument("--device", choices=common.DEVICES, default="cpu")
    parser.add_argument("--models", default=",".join(common.MODELS),
                        help=f"comma-separated subset of {','.join(common.MODELS)}")
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="results file (default: benchmarks/results/<date>-<host-kind>[-quick|-scale].json)")
    parser.add_argument("--scale", action="store_true",
                        help="instead of the suite: a plate of >= 250k cells (minutes, a few GB in the temp dir)")
    parser.add_argument("--scale-wells", type=int, default=384, help="--scale: fields of ~784 cells (one per well)")
    parser.add_argument("--scale-resnet-fields", type=int, default=16,
                        help="--scale: fields scored with resnet18 (on CPU ~300 cells/s)")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - set(common.MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(common.MODELS)}")
    return args


def host_kind(device):
    """``cpu-2cores`` or the GPU's name, for the results file name."""
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return f"cpu-{common.machine_record()['sched_affinity']}cores"


def _batched(session, outputs, feed_of, n_cells):
    """A function of the batch size that runs ``session`` over ``n_cells``, ``feed_of(slice)`` per batch."""
    return lambda batch_size: [session.run(outputs, feed_of(sl)) for sl in peers.batches(n_cells, batch_size)]


def _graph_feed(crops):
    """Feeds of the gradient graph: the crops of a batch, target = the predicted class."""
    return lambda sl: {"image": crops[sl], "target": np.full(sl.stop - sl.start, -1, np.int64)}


def _ort_candidates(paths, crops, masks, device):
    """In-memory onnxruntime candidates: bare graphs, forward-only and the headed scoring graph.

    Returns the candidates and the gradient graph's session.
    """
    import onnx

    sessions = {key: common.create_session(path, device=device) for key, path in paths.items()}
    headed = head.append_score_head(onnx.load(paths["graph"]), crop_spatial=crops.shape[2:])
    scoring = create_scoring_session(headed.SerializeToString(), device=device)
    graph_feed = _graph_feed(crops)
    candidates = {
        "ort_graph": _batched(sessions["graph"], None, graph_feed, len(crops)),
        "ort_forward": _batched(sessions["forward"], None, lambda sl: {"image": crops[sl]}, len(crops)),
        "gradcamo_head": _batched(
            scoring, list(head.HEAD_OUTPUTS),
            lambda sl: {**graph_feed(sl), head.MASK: masks[sl].astype(np.float32)}, len(crops),
        ),
    }
    if "early" in sessions:
        candidates["ort_graph_early"] = _batched(sessions["early"], None, graph_feed, len(crops))
    return candidates, sessions["graph"]


def _peer_candidates(model, layer, crops, masks, device):
    model = model.to(common.torch_device(device))
    layer = common.get_layer(model, layer)
    return {
        name: (lambda batch_size, fn=getattr(peers, f"score_{name}"): fn(model, layer, crops, masks, None, batch_size))
        for name in PEERS
    }


def _agreement(candidates, crops, batch_size):
    """Max |difference| of each peer's scores from gradcamo's in-graph head on the same cells."""
    inside_total = candidates["gradcamo_head"](batch_size)
    inside = np.concatenate([out[1] for out in inside_total]).astype(np.float64)
    total = np.concatenate([out[2] for out in inside_total]).astype(np.float64)
    ours = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return {name: float(np.nanmax(np.abs(candidates[name](batch_size) - ours))) for name in PEERS}


def bench_model(name, args, settings, scratch):
    case = common.MODELS[name]
    shape = case["quick"] if args.quick else case["shape"]
    three_d = len(shape) == 4
    batches = settings["cpu_3d_batches"] if three_d and args.device == "cpu" else settings["batches"]
    model, layer = common.build_model(name, channels=shape[0])
    log(f"{name} {'x'.join(map(str, shape))}: exporting")
    paths = {key: scratch / f"{name}-{key}.onnx" for key in ("graph", "forward", "early")[: 2 if args.quick else 3]}
    # The exporter's validation is tested elsewhere; here it would only add minutes.
    gradcamo.export_model(model, layer, shape, paths["graph"], validate=False)
    common.export_forward_only(model, shape, paths["forward"])
    if "early" in paths:
        gradcamo.export_model(model, case["early_layer"], shape, paths["early"], validate=False)

    plate = scratch / f"{name}.zarr"
    fields = endtoend.make_plate(plate, shape, min_cells=max(batches) * 2)
    crops, masks = endtoend.crops_of(fields, shape, limit=max(batches))
    candidates, graph_session = _ort_candidates(paths, crops, masks, args.device)
    candidates |= _peer_candidates(model, layer, crops, masks, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else None

    result = {"model": name, "crop_shape": list(shape), "target_layer": layer, "early_layer": case["early_layer"],
              "cells_in_memory": len(crops), "providers": graph_session.get_providers(),
              "max_abs_diff_vs_gradcamo": _agreement(candidates, crops, batches[-1]), "cells_per_s": {}}
    for batch_size in batches:
        log(f"{name}: in memory, batch {batch_size}")
        timings = common.interleaved_median_times(
            {key: (lambda fn=fn: fn(batch_size)) for key, fn in candidates.items()},
            repeats=settings["repeats"], warmup=1, sync=sync,
        )
        result["cells_per_s"][batch_size] = {key: len(crops) / median for key, (median, _) in timings.items()}

    result["end_to_end"] = _bench_end_to_end(name, model, layer, paths["graph"], graph_session, shape, max(batches),
                                             result["cells_per_s"][max(batches)]["ort_graph"], args, settings, scratch)
    result["ratios"] = _ratios(result)
    return result


def _bench_end_to_end(name, model, layer, model_path, session, shape, batch_size, ort_rate, args, settings, scratch):
    """gradcamo.score on a plate vs bare ORT and torch eager on all its cells in memory, round-robin."""
    plate = scratch / f"{name}-e2e.zarr"
    cells = min(int(ort_rate * settings["e2e_seconds"]), settings["max_cells"])
    fields = endtoend.make_plate(plate, shape, min_cells=cells, seed=1000)
    crops, masks = endtoend.crops_of(fields, shape)
    log(f"{name}: end to end on {len(crops)} cells, batch {batch_size}")
    run_graph = _batched(session, None, _graph_feed(crops), len(crops))
    torch_layer = common.get_layer(model, layer)
    cells, steady = [], []

    def end_to_end():
        summary = endtoend.score_once(plate, model_path, scratch, device=args.device, batch_size=batch_size)
        cells.append(summary.cells)
        steady.append(endtoend.steady_cells_per_s(summary.output, endtoend.local_tasks()))

    timings = common.interleaved_median_times({
        "end_to_end": end_to_end,
        "ort_graph": lambda: run_graph(batch_size),
        "torch_eager": lambda: peers.score_torch_eager(model, torch_layer, crops, masks, None, batch_size),
    }, repeats=settings["repeats"], warmup=1, sync=torch.cuda.synchronize if args.device == "cuda" else None)
    if set(cells) != {len(crops)}:
        raise RuntimeError(f"end to end scored {sorted(set(cells))} cells, the plate has {len(crops)}")
    rates = {key: len(crops) / median for key, (median, _) in timings.items()}
    measured = [rate for rate in steady[1:] if rate]  # the warm-up run left out, as the timer does
    if measured:
        rates["steady"] = float(np.median(measured))
    return {"cells": len(crops), "batch_size": batch_size, "cells_per_s": rates}


def _best(result, key):
    return max(rates[key] for rates in result["cells_per_s"].values())


def _ratios(result):
    e2e = result["end_to_end"]["cells_per_s"]
    largest = max(result["cells_per_s"])
    at_largest = result["cells_per_s"][largest]
    ratios = {
        "R1 e2e / pytorch_grad_cam": e2e["end_to_end"] / _best(result, "pytorch_grad_cam"),
        "R1b e2e / torch_eager": e2e["end_to_end"] / e2e["torch_eager"],
        "R2 e2e / ort_graph": e2e["end_to_end"] / e2e["ort_graph"],
        **({"R2s steady / ort_graph": e2e["steady"] / e2e["ort_graph"]} if "steady" in e2e else {}),
        f"R3 ort_graph / ort_forward time, batch {largest}": at_largest["ort_forward"] / at_largest["ort_graph"],
    }
    if "ort_graph_early" in at_largest:
        ratios[f"R3 ort_graph_early / ort_forward time, batch {largest}"] = (
            at_largest["ort_forward"] / at_largest["ort_graph_early"])
    return ratios


def bench_scaling(args, settings, scratch, e2e_rate):
    """R4 on resnet18: peak RSS at 1x and 10x the cells; 2 workers vs 1 (one ORT thread each)."""
    shape = common.MODELS["resnet18"]["quick" if args.quick else "shape"]
    model_path = scratch / "resnet18-graph.onnx"
    plates = {}
    for scale in (1, 10):
        plates[scale] = scratch / f"rss-{scale}x.zarr"
        cells = min(e2e_rate * settings["scaling_seconds"], 2 * settings["max_cells"]) * scale // 10
        endtoend.make_plate(plates[scale], shape, min_cells=int(cells), seed=100)
    runs = {}
    for key, plate, options in (
        ("1x", plates[1], {}), ("10x", plates[10], {}),
        ("10x, 1 worker x 1 thread", plates[10], {"workers": 1, "threads": 1}),
        ("10x, 2 workers x 1 thread", plates[10], {"workers": 2, "threads": 1}),
    ):
        log(f"scaling: {key}")
        runs[key] = endtoend.score_in_subprocess(
            plate, model_path, scratch / f"scaling-{len(runs)}", device=args.device, batch_size=64, **options
        )
    rate = {key: run["steady_cells_per_s"] for key, run in runs.items()}
    return {
        "runs": runs,
        "R4 peak RSS 10x / 1x": runs["10x"]["peak_rss_mb"] / runs["1x"]["peak_rss_mb"],
        "R4 2 workers / 1 worker (1 thread each)":
            rate["10x, 2 workers x 1 thread"] / rate["10x, 1 worker x 1 thread"],
        "2 workers x 1 thread / 1 worker x default threads": rate["10x, 2 workers x 1 thread"] / rate["10x"],
    }


def bench_ceiling(args, settings, scratch):
    """End to end with the tiny model vs min(bare ORT, whole-array read), on one plate, same run."""
    plate = scratch / "ceiling.zarr"
    cells = plates.write_grid_plate(plate, wells=settings["ceiling_wells"], fields_per_well=2,
                                    field_shape=(1080, 1080), spacing=38, chunks=(540, 540))
    log(f"ceiling: tiny model on {cells} cells")
    model_path = ceiling.export_tiny(scratch / "tiny.onnx")
    return ceiling.measure(plate, model_path, cells, scratch, device=args.device)


def print_report(report):
    for result in report["models"]:
        print(f"\n{result['model']} {'x'.join(map(str, result['crop_shape']))}, target {result['target_layer']}, "
              f"{result['cells_in_memory']} cells in memory, providers {result['providers']}")
        rates = result["cells_per_s"]
        print(f"  {'cells/s':<20}" + "".join(f"{f'batch {b}':>12}" for b in rates))
        for key in next(iter(rates.values())):
            print(f"  {key:<20}" + "".join(f"{rates[b][key]:>12.1f}" for b in rates))
        e2e = result["end_to_end"]
        print(f"  end to end vs in memory on the same {e2e['cells']} cells, batch {e2e['batch_size']}, round-robin: "
              + ", ".join(f"{k} {v:.1f}" for k, v in e2e["cells_per_s"].items()) + " cells/s")
        print("  peers' max |score - gradcamo|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in result["max_abs_diff_vs_gradcamo"].items()))
        for key, value in result["ratios"].items():
            goal = GOALS.get(key, {}).get(report["device"])
            print(f"  {key:<48}{value:>7.2f}" + (f"   (goal >= {goal})" if goal else ""))
    if "ceiling" in report:
        record = report["ceiling"]
        rates = record["cells_per_s"]
        print(f"\npipeline ceiling (TinyCNN2d 5x32x32, {record['cells']} cells in {record['fields']} fields of "
              f"1080x1080x5 uint16, chunks 540x540, batch {record['batch_size']}):")
        print("  " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()) + " cells/s; worker stage seconds "
              + ", ".join(f"{k} {v:.1f}" for k, v in (record["stages"] or {}).items()))
        key = "ceiling e2e / min(ort_graph, read)"
        print(f"  {key:<48}{record['ceiling_ratio']:>7.2f}   (goal >= 0.5)")
    if "scaling" in report:
        scaling = report["scaling"]
        print("\nscaling (resnet18, fresh process per run; ratios of steady cells/s):")
        for key, run in scaling["runs"].items():
            print(f"  {key:<28} {run['cells']:>6} cells {run['cells'] / run['seconds']:>8.1f} cells/s whole call, "
                  f"{run['steady_cells_per_s'] or float('nan'):>8.1f} steady; peak RSS {run['peak_rss_mb']:.0f} MB")
        print(f"  {'R4 peak RSS 10x / 1x':<48}{scaling['R4 peak RSS 10x / 1x']:>7.2f}   (goal <= 1.1)")
        key = "R4 2 workers / 1 worker (1 thread each)"
        print(f"  {key:<48}{scaling[key]:>7.2f}   (goal >= 1.8 on 2 cores)")
        key = "2 workers x 1 thread / 1 worker x default threads"
        print(f"  {key:<48}{scaling[key]:>7.2f}")


def main(argv=None):
    args = parse_args(argv)
    settings = SETTINGS[args.quick]
    try:
        common.check_device_available(args.device)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    report = {"device": args.device, "quick": args.quick, "settings": settings, "models": []}
    suffix = "-scale" if args.scale else "-quick" if args.quick else ""
    output = args.output or RESULTS / f"{datetime.date.today().isoformat()}-{host_kind(args.device)}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every part, so a run cut short keeps what it measured
        report["machine"] = common.machine_record()
        report["wall_seconds"] = time.perf_counter() - STARTED
        output.write_text(json.dumps(report, indent=2, default=str) + "\n")

    if args.scale:
        import scale

        with tempfile.TemporaryDirectory(prefix="gradcamo-scale-") as scratch:
            report = {"device": args.device, "scale": scale.run_scale(args, scratch, log)}
        report["machine"] = common.machine_record()
        report["wall_seconds"] = time.perf_counter() - STARTED
        output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        scale.print_scale(report["scale"])
        print(f"\n{report['wall_seconds']:.0f} s; wrote {output}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gradcamo-bench-") as scratch:
        scratch = pathlib.Path(scratch)
        report["ceiling"] = bench_ceiling(args, settings, scratch)
        save()
        for name in args.models:
            report["models"].append(bench_model(name, args, settings, scratch))
            save()
        if "resnet18" in args.models:
            e2e_rate = report["models"][args.models.index("resnet18")]["end_to_end"]["cells_per_s"]["end_to_end"]
            report["scaling"] = bench_scaling(args, settings, scratch, e2e_rate)
            save()
    print_report(report)
    print(f"\n{report['wall_seconds']:.0f} s; wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
