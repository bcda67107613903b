"""Scoring with all five CAM methods together, or with ``--features``, vs Grad-CAM alone, on the suite's
resnet18, in one run.

Two ratios per extra, each (median seconds with ``gradcam,hirescam,gradcam++,xgradcam,layercam``,
or with Grad-CAM and ``features=True``) / (median seconds with ``gradcam``), the candidates timed
round-robin:

- ``head``: the scorer's headed ONNX graph alone (one forward/backward pass, every method's
  CAM, resize, masked sums and localisation counts) on the same crops and masks, per batch;
- ``end_to_end``: one ``gradcamo.score`` call on the same synthetic plate (Zarr in, five
  times the rows out), as ``run.py`` times it.

Goals: all methods < 1.15 (issue #16); features <= 1.1 (issue 21: the pooled target-layer
activations, 512 float32 columns for resnet18, from the same pass). Usage::

    python benchmarks/methods.py                 # ~3 min on 2 cores
    python benchmarks/methods.py --quick         # 5x64x64 crops, fewer cells and repeats
"""

import argparse
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import endtoend  # noqa: E402

import gradcamo  # noqa: E402
from gradcamo.cam import METHODS  # noqa: E402
from gradcamo.scorer import head  # noqa: E402
from gradcamo.scorer.session import build_scoring_session  # noqa: E402

MODEL = "resnet18"
BATCH_SIZE = 64
CANDIDATES = {"gradcam": ("gradcam",), "all_methods": METHODS, "features": ("gradcam",)}
EXTRAS = {"all_methods": 1.15, "features": 1.1}
"""Candidates compared with ``gradcam``, and their goals."""


def _head_runs(model_path, crops, masks):
    """{candidate: callable scoring every crop in batches with the session the scorer's workers build}."""
    runs = {}
    for name, methods in CANDIDATES.items():
        session = build_scoring_session(str(model_path), crops.shape[2:], "raw", "cpu", None, methods)

        outputs = head.HEAD_OUTPUTS + head.METRIC_OUTPUTS + ((head.FEATURES,) if name == "features" else ())

        def run(session=session, outputs=outputs):
            for begin in range(0, len(crops), BATCH_SIZE):
                batch = slice(begin, begin + BATCH_SIZE)
                session.run(list(outputs),
                            {"image": crops[batch], "target": np.full(len(crops[batch]), -1),
                             head.MASK: masks[batch].astype(np.float32)})
        runs[name] = run
    return runs


def _end_to_end_runs(plate, model_path, scratch, cells):
    """{candidate: callable running one ``gradcamo.score`` of the plate}; each checks its row count."""
    def run(methods, features):
        summary = endtoend.score_once(plate, model_path, scratch, methods=methods, batch_size=BATCH_SIZE, workers=1,
                                      features=features)
        if (summary.cells, summary.rows) != (cells, cells * len(methods)):
            raise RuntimeError(f"{methods}: scored {summary.cells} cells in {summary.rows} rows, expected {cells}")
    return {name: lambda methods=methods, features=name == "features": run(methods, features)
            for name, methods in CANDIDATES.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5x64x64 crops, 256 cells, 3 repeats")
    parser.add_argument("--cells", type=int, default=None, help="cells on the plate (default 1024; quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 3)")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    shape = common.QUICK_SHAPES[MODEL] if args.quick else common.SHAPES[MODEL]
    cells = args.cells or (256 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="gradcamo-methods-") as scratch:
        scratch = pathlib.Path(scratch)
        model, layer = common.build_model(MODEL, channels=shape[0])
        model_path = scratch / f"{MODEL}.onnx"
        gradcamo.export_model(model, layer, shape, model_path)
        plate = scratch / "plate.zarr"
        crops, masks = endtoend.crops_of(endtoend.make_plate(plate, shape, min_cells=cells), shape)
        print(f"{MODEL} {shape}: {len(crops)} cells, batch {BATCH_SIZE}, {repeats} rounds", flush=True)
        head_times = common.interleaved_median_times(_head_runs(model_path, crops, masks), repeats=repeats)
        end_times = common.interleaved_median_times(_end_to_end_runs(plate, model_path, scratch, len(crops)),
                                                    repeats=repeats)
    result = {
        "model": MODEL, "shape": list(shape), "cells": len(crops), "batch_size": BATCH_SIZE, "repeats": repeats,
        "seconds": {"head": {k: v for k, (v, _) in head_times.items()},
                    "end_to_end": {k: v for k, (v, _) in end_times.items()}},
        **{f"ratio_{extra}_over_gradcam": {kind: times[extra][0] / times["gradcam"][0]
                                           for kind, times in (("head", head_times), ("end_to_end", end_times))}
           for extra in EXTRAS},
        "machine": common.machine_record(),
    }
    for extra, goal in EXTRAS.items():
        for kind, ratio in result[f"ratio_{extra}_over_gradcam"].items():
            seconds = result["seconds"][kind]
            print(f"{kind:>11}: gradcam {seconds['gradcam']:.3f} s, {extra} {seconds[extra]:.3f} s, "
                  f"ratio {ratio:.3f} (goal <= {goal})")
    common.finish_record(result, args.output)


if __name__ == "__main__":
    main()
