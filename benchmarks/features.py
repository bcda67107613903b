"""``score --features`` vs ``score`` on the same small plate, in one run (issue 21).

Ratio = (median seconds of one ``gradcamo.score`` call with ``features=True``) / (median
seconds without), the two timed round-robin on the suite's resnet18 (target ``layer4``,
512 feature columns). Goal: <= 1.1. Usage::

    python benchmarks/features.py                # 1024 cells, 5 rounds
    python benchmarks/features.py --quick        # 5x64x64 crops, 256 cells, 3 rounds
"""

import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import endtoend  # noqa: E402

import gradcamo  # noqa: E402

MODEL = "resnet18"
BATCH_SIZE = 64


def _runs(plate, model_path, scratch, cells):
    """{candidate: callable running one ``gradcamo.score`` of the plate}; each checks what it wrote."""
    def run(features):
        summary = endtoend.score_once(plate, model_path, scratch, features=features, batch_size=BATCH_SIZE, workers=1)
        if summary.cells != cells:
            raise RuntimeError(f"features={features}: scored {summary.cells} cells, expected {cells}")
    return {"score": lambda: run(False), "score_features": lambda: run(True)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5x64x64 crops, 256 cells, 3 repeats")
    parser.add_argument("--model", default=MODEL, choices=sorted(common.SHAPES), help="benchmark model")
    parser.add_argument("--cells", type=int, default=None, help="cells on the plate (default 1024; quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 3)")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    shape = common.QUICK_SHAPES[args.model] if args.quick else common.SHAPES[args.model]
    cells = args.cells or (256 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="gradcamo-features-") as scratch:
        scratch = pathlib.Path(scratch)
        model, layer = common.build_model(args.model, channels=shape[0])
        model_path = scratch / f"{args.model}.onnx"
        gradcamo.export_model(model, layer, shape, model_path)
        plate = scratch / "plate.zarr"
        fields = endtoend.make_plate(plate, shape, min_cells=cells)
        n_cells = len(endtoend.crops_of(fields, shape)[0])
        print(f"{args.model} {shape}: {n_cells} cells, batch {BATCH_SIZE}, {repeats} rounds", flush=True)
        times = common.interleaved_median_times(_runs(plate, model_path, scratch, n_cells), repeats=repeats)
    seconds = {k: v for k, (v, _) in times.items()}
    result = {
        "model": args.model, "shape": list(shape), "cells": n_cells, "batch_size": BATCH_SIZE, "repeats": repeats,
        "seconds": seconds, "ratio_features_over_score": seconds["score_features"] / seconds["score"],
        "machine": common.machine_record(),
    }
    print(f"score {seconds['score']:.3f} s, score --features {seconds['score_features']:.3f} s, "
          f"ratio {result['ratio_features_over_score']:.3f} (goal <= 1.1)")
    print(common.format_record(result["machine"]))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
