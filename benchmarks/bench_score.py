"""gradcamo score end to end vs bare compute on the same crops, and peak memory at 1x / 10x cells.

    python benchmarks/bench_score.py [--quick] [--device cpu|cuda] [--json FILE]

Measured in one run on one synthetic HCS plate (resnet18, 5 channels, target layer4):
- end-to-end: ``gradcamo.score`` (OME-Zarr in, Parquet out, local Dask cluster), cells/s
  over the whole call, cluster start included;
- bare ORT: the same exported graph on the same crops already in memory (batch 64), cells/s;
- peers on the same crops in memory: pytorch-grad-cam's GradCAM loop and a plain torch
  eager hook + autograd loop (both with Grad-CAMO computed);
- peak RSS (client process and the largest worker) when scoring 1x and 10x the cells,
  each in a fresh subprocess.
"""

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402

from gradcamo.data.synthetic import make_cells  # noqa: E402
from gradcamo.data.write import write_plate  # noqa: E402
from gradcamo.scorer.crops import cut_object_crops  # noqa: E402

FIELD = (256, 256)
CELLS_PER_FIELD = 40
RADIUS = 12.0


def make_plate(path, n_wells, seed=0):
    """An HCS plate of ``n_wells`` wells x 2 fields; returns the (image, labels) fields."""
    fields = {}
    for well in range(n_wells):
        row, column = "ABCDEFGH"[well // 12], well % 12 + 1
        fields[(row, column)] = [
            make_cells(FIELD, CELLS_PER_FIELD, n_channels=5, radius=RADIUS, seed=seed + 2 * well + site)
            for site in range(2)
        ]
    write_plate(path, fields, name="bench", chunks=(128, 128))
    return [pair for pairs in fields.values() for pair in pairs]


def crops_of(fields, crop_shape):
    """Every cell's crop and mask, cut as the scorer cuts them."""
    cut = [cut_object_crops(image, labels, crop_shape[1:]) for image, labels in fields]
    return np.concatenate([crops for _, crops, _ in cut]), np.concatenate([masks for _, _, masks in cut])


def _child_score(plate, model, output, device, workers):
    """Run in a subprocess: score, then print the peak RSS of this process and its children."""
    from gradcamo.scorer.pipeline import score

    started = time.perf_counter()
    summary = score([plate], model, output, device=device, workers=workers, batch_size=64)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "cells": summary.cells, "seconds": seconds, "providers": summary.providers,
        "client_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def score_in_subprocess(plate, model, output, device, workers):
    command = [sys.executable, __file__, "--child", str(plate), str(model), str(output), device, str(workers)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 and 20 wells of 64x64 crops (about 2 minutes).")
    parser.add_argument("--device", choices=common.DEVICES, default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", help="Also write the results to this file.")
    args = parser.parse_args(argv)

    import gradcamo

    crop_shape = (5, 64, 64)
    small_wells = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        model, _ = common.build_model("resnet18")
        model_path = scratch / "resnet18.onnx"
        gradcamo.export_model(model, common.TARGET_LAYER, crop_shape, model_path)
        fields = make_plate(scratch / "plate1x.zarr", small_wells)
        make_plate(scratch / "plate10x.zarr", 10 * small_wells)

        one = score_in_subprocess(scratch / "plate1x.zarr", model_path, scratch / "s1", args.device, args.workers)
        ten = score_in_subprocess(scratch / "plate10x.zarr", model_path, scratch / "s10", args.device, args.workers)

        crops, masks = crops_of(fields, crop_shape)
        session = common.create_session(model_path, device=args.device)
        layer = common.get_layer(model, common.TARGET_LAYER)
        n = len(crops)
        timings = common.interleaved_median_times(
            {
                "bare ORT": lambda: peers.score_gradcamo_onnx(session, crops, masks, batch_size=64),
                "torch eager": lambda: peers.score_torch_eager(model, layer, crops, masks, batch_size=64),
                "pytorch-grad-cam": lambda: peers.score_pytorch_grad_cam(model, layer, crops, masks, batch_size=64),
            },
            repeats=3,
        )
    rates = {name: n / median for name, (median, _) in timings.items()}
    end_to_end = ten["cells"] / ten["seconds"]
    results = {
        "machine": common.machine_record([session]),
        "crop_shape": crop_shape, "cells_1x": one["cells"], "cells_10x": ten["cells"],
        "end_to_end_cells_per_s_10x": end_to_end, "end_to_end_cells_per_s_1x": one["cells"] / one["seconds"],
        "in_memory_cells_per_s": rates, "providers": ten["providers"],
        "ratio_end_to_end_vs_bare_ort": end_to_end / rates["bare ORT"],
        "ratio_end_to_end_vs_torch_eager": end_to_end / rates["torch eager"],
        "ratio_end_to_end_vs_pytorch_grad_cam": end_to_end / rates["pytorch-grad-cam"],
        "peak_rss_mb": {"1x": one, "10x": ten},
        "ratio_worker_rss_10x_vs_1x": ten["worker_peak_rss_mb"] / one["worker_peak_rss_mb"],
        "ratio_client_rss_10x_vs_1x": ten["client_peak_rss_mb"] / one["client_peak_rss_mb"],
    }
    print(f"cells: 1x {one['cells']}, 10x {ten['cells']}; crops {crop_shape}; providers {ten['providers']}")
    print(f"end to end (10x plate, whole call): {end_to_end:8.1f} cells/s")
    for name, rate in rates.items():
        print(f"{name:>17} (in memory):   {rate:8.1f} cells/s")
    for key in ("ratio_end_to_end_vs_bare_ort", "ratio_end_to_end_vs_torch_eager",
                "ratio_end_to_end_vs_pytorch_grad_cam", "ratio_worker_rss_10x_vs_1x", "ratio_client_rss_10x_vs_1x"):
        print(f"{key}: {results[key]:.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_score(*sys.argv[2:5], sys.argv[5], int(sys.argv[6]))
    else:
        main()
