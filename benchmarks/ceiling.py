"""Pipeline ceiling: gradcamo end to end with a tiny model vs what bounds it, in one run.

    python benchmarks/ceiling.py [--wells 48] [--field 1080] [--chunk 540] [--spacing 38] [--device cuda]
    python benchmarks/ceiling.py --3d [--depth 32] [--field 512] [--chunk 256] [--spacing 16]

The tiny model (``TinyCNN2d`` 5x32x32; with ``--3d`` ``TinyCNN3d`` 5x8x32x32) costs little per cell, so the end-to-end rate shows
what the scorer itself costs. Its bounds, measured in the same run on the same plate:
``ort_graph`` (bare onnxruntime run of the gradient graph over crops in memory) and
``read`` (every field's image and labels read once as whole arrays with zarr-python).
Prints cells/s and the ratio end to end / min(bare ORT, read) (goal >= 0.5).

Also the steady-state rate (first to last part file, so start-up is left out) against the
shared-core bound ``1 / (1/ORT + 1/read)`` (on a CPU-only machine inference and reading share
the cores, so their costs add up; goal >= 0.8) and against bare ORT, and the stage costs per
1000 cells (printed as a table; ``--plate`` reuses a plate written before, e.g. to compare two
source trees on the same plate). Where the scorer reads chunk files itself
(:mod:`gradcamo.data.direct`), also ``read_direct``, that reader's whole-array rate, and the
shared-core bound with it in place of zarr-python's.

Also what the gap is made of: the scorer once more with one task thread (``serial``), so its
stages do not overlap or compete; ``serial_ms_per_1000_cells`` is each stage's cost and
``additive_bound`` the cells/s if every stage ran, one after the other, at that cost. Where
reading and inference share the same cores (CPU), min(bare ORT, read) is out of reach: the
stages' costs add up.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import endtoend  # noqa: E402
import plates  # noqa: E402

from gradcamo.scorer.crops import cut_object_crops  # noqa: E402
from gradcamo.scorer.pipeline import score  # noqa: E402

try:  # the scorer's own chunk reader; absent from trees before issue #25 (compared with --plate)
    import gradcamo.data.direct  # noqa: F401
    DIRECT_READ = True
except ImportError:
    DIRECT_READ = False

CROP = (5, 32, 32)
CROP_3D = (5, 8, 32, 32)


def export_tiny(path, crop=CROP):
    """The tiny model of ``crop``'s dimensionality (random weights), exported to ``path``."""
    import torch

    import gradcamo
    from gradcamo.models import TinyCNN2d, TinyCNN3d

    torch.manual_seed(0)
    model = (TinyCNN2d if len(crop) == 3 else TinyCNN3d)(in_channels=crop[0], num_classes=2).eval()
    gradcamo.export_model(model, "features.block3", crop, path, validate=False)
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


def serial_stages(plate, model_path, scratch, *, batch_size, **options):
    """ms per 1000 cells of each stage of the scorer, with one task thread (stages in sequence)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        output = tempfile.mkdtemp(prefix="ceiling-serial-", dir=scratch)
        summary = score([str(plate)], str(model_path), output, batch_size=batch_size, scheduler=cluster.scheduler_address,
                        **{k: v for k, v in options.items() if k != "workers"})
    return {stage: 1e6 * seconds / summary.cells for stage, seconds in summary.stage_seconds.items()}


def measure(plate, model_path, cells, scratch, *, batch_size=64, repeats=2, crop=CROP, **options):
    """One record: cells/s of end to end, bare ORT and whole-array read, and the ceiling ratio."""
    from gradcamo.data.read import discover_images, open_image

    first = open_image(discover_images(str(plate))[0])
    crops = cut_object_crops(first.image[...], first.labels[...], crop[1:])[1]
    fields = None
    read_times, direct_times, e2e_times, steady, ort_rates = [], [], [], [], []
    for repeat in range(repeats):
        started = time.perf_counter()
        fields = plates.read_whole_arrays(plate)
        read_times.append(time.perf_counter() - started)
        if DIRECT_READ:
            started = time.perf_counter()
            plates.read_whole_arrays(plate, direct=True)
            direct_times.append(time.perf_counter() - started)
        output = tempfile.mkdtemp(prefix="ceiling-", dir=scratch)
        started = time.perf_counter()
        summary = score([str(plate)], str(model_path), output, batch_size=batch_size, **options)
        e2e_times.append(time.perf_counter() - started)
        steady.append(endtoend.steady_cells_per_s(output, endtoend.local_tasks(options.get("workers"))))
        ort_rates.append(bare_ort_rate(model_path, crops, batch_size, device=options.get("device", "cpu")))
        if summary.cells != cells:
            raise RuntimeError(f"scored {summary.cells} cells, the plate has {cells}")
    rates = {
        "end_to_end": cells / min(e2e_times),
        "steady": max(steady),
        "ort_graph": max(ort_rates),  # measured after each end-to-end run: the same minutes of a shared machine
        "read": cells / min(read_times),
    }
    shared = 1 / (1 / rates["ort_graph"] + 1 / rates["read"])
    direct = {}
    if direct_times:  # the bound with the scorer's own reader (the chunk files read directly) in place of zarr's
        rates["read_direct"] = cells / min(direct_times)
        bound = 1 / (1 / rates["ort_graph"] + 1 / rates["read_direct"])
        direct = {"shared_core_bound_direct_read": bound,
                  "steady_vs_shared_core_bound_direct_read": rates["steady"] / bound}
    serial = serial_stages(plate, model_path, scratch, batch_size=batch_size, **options)
    return {"cells": cells, "fields": fields, "crop": list(crop), "batch_size": batch_size, "options": options,
            "cells_per_s": rates, "ceiling_ratio": rates["end_to_end"] / min(rates["ort_graph"], rates["read"]),
            "shared_core_bound": shared, "steady_vs_shared_core_bound": rates["steady"] / shared,
            "steady_vs_bare_ort": rates["steady"] / rates["ort_graph"], **direct,
            "stages": getattr(summary, "stage_seconds", None),
            "serial_ms_per_1000_cells": serial, "additive_bound": 1e6 / sum(serial.values())}


def print_stage_costs(record):
    """The stage costs per 1000 cells (one task thread) and the steady-state ratios, as a table."""
    serial = record["serial_ms_per_1000_cells"]
    print("ms per 1000 cells: " + ", ".join(f"{stage} {ms:.1f}" for stage, ms in serial.items()))
    rates = record["cells_per_s"]
    print(f"steady {rates['steady']:,.0f} cells/s; bare ORT {rates['ort_graph']:,.0f}; read {rates['read']:,.0f}; "
          f"shared-core bound {record['shared_core_bound']:,.0f}; steady / bound "
          f"{record['steady_vs_shared_core_bound']:.2f} (goal 0.8); steady / bare ORT "
          f"{record['steady_vs_bare_ort']:.2f}", flush=True)
    if "read_direct" in rates:
        print(f"read with the scorer's reader {rates['read_direct']:,.0f} cells/s; shared-core bound with it "
              f"{record['shared_core_bound_direct_read']:,.0f}; steady / that bound "
              f"{record['steady_vs_shared_core_bound_direct_read']:.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--3d", dest="three_d", action="store_true",
                        help="3D fields (depth x field x field) and TinyCNN3d 5x8x32x32")
    parser.add_argument("--wells", type=int, default=48)
    parser.add_argument("--fields-per-well", type=int, default=2)
    parser.add_argument("--field", type=int, default=None, help="field height = width (default 1080; 3D 512)")
    parser.add_argument("--depth", type=int, default=32, help="3D field depth (z chunk: the whole depth)")
    parser.add_argument("--chunk", type=int, default=None, help="y/x chunk size (default 540; 3D 256)")
    parser.add_argument("--spacing", type=int, default=None, help="grid pitch of the cells (default 38; 3D 16)")
    parser.add_argument("--scratch", type=pathlib.Path, default=None)
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="an exported TinyCNN2d 5x32x32 graph (default: export one here; needs torch)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=pathlib.Path, default=None, help="write the record as JSON here too")
    parser.add_argument("--plate", type=pathlib.Path, default=None, help="score this plate (written by an earlier "
                        "run with --keep-plate) instead of writing one")
    parser.add_argument("--keep-plate", type=pathlib.Path, default=None, help="write the plate here and keep it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradcamo-ceiling-", dir=args.scratch) as scratch:
        scratch = pathlib.Path(scratch)
        crop = CROP_3D if args.three_d else CROP
        field, chunk = args.field or (512 if args.three_d else 1080), args.chunk or (256 if args.three_d else 540)
        depth = (args.depth,) if args.three_d else ()
        model_path = args.model or export_tiny(scratch / "tiny.onnx", crop)
        plate = args.plate or args.keep_plate or scratch / "plate.zarr"
        started = time.perf_counter()
        if args.plate:
            cells = plates.count_cells(plate)
        else:
            cells = plates.write_grid_plate(plate, wells=args.wells, fields_per_well=args.fields_per_well,
                                            field_shape=(*depth, field, field),
                                            spacing=args.spacing or (16 if args.three_d else 38),
                                            chunks=(*depth, chunk, chunk))
        print(f"plate: {cells} cells in {time.perf_counter() - started:.0f} s", flush=True)
        options = {key: value for key, value in (("workers", args.workers), ("threads", args.threads)) if value}
        record = measure(plate, model_path, cells, scratch, batch_size=args.batch_size, crop=crop, device=args.device,
                         **options)
    endtoend.emit_record(record, args.output)
    print_stage_costs(record)
    return record


if __name__ == "__main__":
    main()
