"""CPU per 1000 cells of the scorer's work unit alone, in one thread (no Dask, no writer), on whole
fields of a plate written by ``ceiling.py --keep-plate PLATE``. Runs against older trees too, so a
restructure's cost per unit can be compared in one script:

    PYTHONPATH=/path/to/tree/src OMP_NUM_THREADS=1 python benchmarks/unit_cpu.py NAME --plate PLATE

The units are those ``score`` plans (its ``run_units`` is replaced by a function that keeps its
arguments); the worker plugin is set up once and kept for every call, as on a worker, and the
first unit (which builds the session) is not timed. Prints wall and thread-CPU ms per 1000 cells;
thread CPU leaves out what zarr-python decodes on its own threads (compare it only between trees
that read alike).
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ceiling  # noqa: E402


class _Planned(Exception):
    """Raised by the stand-in for ``run_units`` with its arguments: the planned units."""


def planned_units(plate, model, batch_size):
    """``(call, blocks)``: one unit of the installed tree as a function of its block, and the blocks."""
    from gradcamo.scorer import pipeline
    from gradcamo.scorer.worker import ScorerPlugin

    def keep(*arguments, **options):
        raise _Planned(arguments)

    pipeline.run_units = keep
    try:
        pipeline.score([str(plate)], str(model), tempfile.mkdtemp(), batch_size=batch_size)
    except _Planned as planned:
        arguments = planned.args[0]
    plugin = ScorerPlugin()
    plugin.setup()
    if callable(arguments[0]):  # trees before the engine: run_units(unit, spec, images, ...)
        from gradcamo.scorer import units
        unit, spec, images = arguments[:3]
        units.worker_state = lambda: plugin
        return (lambda block: unit(spec, block)), [image.blocks[0] for image in images]
    from gradcamo.scorer import engine
    kind, images = arguments[:2]
    engine.worker_state = lambda: plugin
    return (lambda block: engine.run_unit(kind, block)), [image.blocks[0] for image in images]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="what to call this tree in the output line")
    parser.add_argument("--plate", type=pathlib.Path, required=True)
    parser.add_argument("--fields", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = ceiling.export_tiny(pathlib.Path(scratch) / "tiny.onnx")
        call, blocks = planned_units(args.plate, model, args.batch_size)
        call(blocks[0])  # builds the session
        wall, cpu = time.perf_counter(), time.thread_time()
        cells = sum(call(block).cells for block in blocks[:args.fields])
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    print(f"{args.name}: {cells} cells, wall {wall / cells * 1e6:.1f} ms per 1000 cells, "
          f"thread CPU {cpu / cells * 1e6:.1f}")


if __name__ == "__main__":
    main()
