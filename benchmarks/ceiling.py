"""Pipeline ceiling: gradcamo end to end with a tiny model vs what bounds it, in one run.

    python benchmarks/ceiling.py [--wells 48] [--field 1080] [--chunk 540] [--spacing 38] [--device cuda]

The tiny model (``TinyCNN2d`` 5x32x32) costs little per cell, so the end-to-end rate shows
what the scorer itself costs. Its bounds, measured in the same run on the same plate:
``ort_graph`` (bare onnxruntime run of the gradient graph over crops in memory) and
``read`` (every field's image and labels read once as whole arrays with zarr-python).
Prints cells/s and the ratio end to end / min(bare ORT, read) (goal >= 0.5).
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import plates  # noqa: E402

from gradcamo.scorer.crops import cut_object_crops  # noqa: E402
from gradcamo.scorer.pipeline import score  # noqa: E402

CROP = (5, 32, 32)


def export_tiny(path):
    import torch

    import gradcamo
    from gradcamo.models import TinyCNN2d

    torch.manual_seed(0)
    gradcamo.export_model(TinyCNN2d(in_channels=5, num_classes=2).eval(), "features.block3", CROP, path,
                          validate=False)
    return path


def bare_ort_rate(model_path, crops, batch_size, repeats=3, device="cpu"):
    """Cells/s of the bare gradient graph, the faster of spinning and sleeping idle ORT threads."""
    import onnxruntime as ort

    from gradcamo.scorer.session import providers_for

    providers = providers_for(device)  # the scorer's own provider options
    best = np.inf
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(model_path), options, providers=providers)
        for _ in range(repeats + 1):
            started = time.perf_counter()
            for begin in range(0, len(crops), batch_size):
                batch = crops[begin:begin + batch_size]
                session.run(None, {"image": batch, "target": np.full(len(batch), -1, np.int64)})
            best = min(best, time.perf_counter() - started)
    return len(crops) / best


def measure(plate, model_path, cells, scratch, *, batch_size=64, repeats=2, **options):
    """One record: cells/s of end to end, bare ORT and whole-array read, and the ceiling ratio."""
    from gradcamo.data.read import discover_images, open_image

    first = open_image(discover_images(str(plate))[0])
    crops = cut_object_crops(first.image[...], first.labels[...], CROP[1:])[1]
    fields = None
    read_times, e2e_times = [], []
    for repeat in range(repeats):
        started = time.perf_counter()
        fields = plates.read_whole_arrays(plate)
        read_times.append(time.perf_counter() - started)
        output = tempfile.mkdtemp(prefix="ceiling-", dir=scratch)
        started = time.perf_counter()
        summary = score([str(plate)], str(model_path), output, batch_size=batch_size, **options)
        e2e_times.append(time.perf_counter() - started)
        if summary.cells != cells:
            raise RuntimeError(f"scored {summary.cells} cells, the plate has {cells}")
    rates = {
        "end_to_end": cells / min(e2e_times),
        "ort_graph": bare_ort_rate(model_path, crops, batch_size, device=options.get("device", "cpu")),
        "read": cells / min(read_times),
    }
    return {"cells": cells, "fields": fields, "batch_size": batch_size, "options": options,
            "cells_per_s": rates, "ceiling_ratio": rates["end_to_end"] / min(rates["ort_graph"], rates["read"]),
            "stages": getattr(summary, "stage_seconds", None)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wells", type=int, default=48)
    parser.add_argument("--fields-per-well", type=int, default=2)
    parser.add_argument("--field", type=int, default=1080)
    parser.add_argument("--chunk", type=int, default=540)
    parser.add_argument("--spacing", type=int, default=38)
    parser.add_argument("--scratch", type=pathlib.Path, default=None)
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="an exported TinyCNN2d 5x32x32 graph (default: export one here; needs torch)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=pathlib.Path, default=None, help="write the record as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradcamo-ceiling-", dir=args.scratch) as scratch:
        scratch = pathlib.Path(scratch)
        model_path = args.model or export_tiny(scratch / "tiny.onnx")
        plate = scratch / "plate.zarr"
        started = time.perf_counter()
        cells = plates.write_grid_plate(plate, wells=args.wells, fields_per_well=args.fields_per_well,
                                        field_shape=(args.field, args.field), spacing=args.spacing,
                                        chunks=(args.chunk, args.chunk))
        print(f"plate: {cells} cells in {time.perf_counter() - started:.0f} s", flush=True)
        options = {key: value for key, value in (("workers", args.workers), ("threads", args.threads)) if value}
        record = measure(plate, model_path, cells, scratch, batch_size=args.batch_size, device=args.device, **options)
    print(json.dumps(record, indent=2))
    if args.output:
        args.output.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
