"""The cost of the causal checks (issue #24): cells/s of ``score``, ``score --ablation`` and
``score --deletion-steps 8``, timed round-robin in one run on the same synthetic plate.

Each check runs the model's forward-only graph on extra crops: ``--ablation`` 2 per cell,
``--deletion-steps K`` 2K - 1 per cell (15 for K = 8). If a forward pass cost as much as the
scoring graph's forward/backward pass and nothing else mattered, a run would take
1 + extra forwards times as long; the printed ratio is measured cells/s over that
prediction (> 1: cheaper than predicted, as a forward pass costs less than forward+backward
and reading, cutting and writing are shared). Usage::

    python benchmarks/causal.py                  # resnet18 5x64x64, 512 cells, 3 rounds
    python benchmarks/causal.py --model r3d_18 --cells 256 --output results/causal.json
"""

import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import endtoend  # noqa: E402

import gradcamo  # noqa: E402

BATCH_SIZE = 64
DELETION_STEPS = 8
CANDIDATES = {
    "score": ({}, 0),
    "ablation": ({"ablation": True}, 2),
    f"deletion_steps_{DELETION_STEPS}": ({"deletion_steps": DELETION_STEPS}, 2 * DELETION_STEPS - 1),
}
"""name: (score options, extra forward passes per cell)."""


def _runs(plate, model_path, scratch, cells):
    def run(options):
        summary = endtoend.score_once(plate, model_path, scratch, batch_size=BATCH_SIZE, workers=1, **options)
        if summary.cells != cells:
            raise RuntimeError(f"{options}: scored {summary.cells} cells, expected {cells}")
    return {name: lambda options=options: run(options) for name, (options, _) in CANDIDATES.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(common.MODELS))
    parser.add_argument("--full", action="store_true", help="the suite's full crop shape instead of the quick one")
    parser.add_argument("--cells", type=int, default=512, help="cells on the plate (at least)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    shape = (common.SHAPES if args.full else common.QUICK_SHAPES)[args.model]
    with tempfile.TemporaryDirectory(prefix="gradcamo-causal-") as scratch:
        scratch = pathlib.Path(scratch)
        model, layer = common.build_model(args.model, channels=shape[0])
        model_path = scratch / f"{args.model}.onnx"
        gradcamo.export_model(model, layer, shape, model_path)
        plate = scratch / "plate.zarr"
        cells = sum(int(labels.max()) for _, labels in endtoend.make_plate(plate, shape, min_cells=args.cells))
        print(f"{args.model} {shape}: {cells} cells, batch {BATCH_SIZE}, {args.repeats} rounds", flush=True)
        times = common.interleaved_median_times(_runs(plate, model_path, scratch, cells), repeats=args.repeats)
    base = cells / times["score"][0]
    result = {"model": args.model, "shape": list(shape), "cells": cells, "batch_size": BATCH_SIZE,
              "repeats": args.repeats, "candidates": {}, "machine": common.machine_record()}
    for name, (_, extra) in CANDIDATES.items():
        rate = cells / times[name][0]
        predicted = base / (1 + extra)
        result["candidates"][name] = {"seconds": times[name][0], "cells_per_s": rate, "extra_forwards": extra,
                                      "predicted_cells_per_s": predicted, "ratio_to_prediction": rate / predicted}
        print(f"{name:>17}: {rate:8.1f} cells/s  (1 + {extra:2d} forwards predict {predicted:8.1f}; "
              f"measured / predicted {rate / predicted:.2f})")
    common.finish_record(result, args.output)


if __name__ == "__main__":
    main()
