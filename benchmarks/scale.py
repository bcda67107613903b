"""``run.py --scale``: a plate of >= 250k cells, scored with the tiny model and with resnet18.

Prints and records: cells/s end to end, the pipeline-ceiling ratio (end to end with the tiny
model / min(bare ORT, whole-array read), all measured here), peak RSS of every process of
the scoring run (the scorer and any worker processes, polled with psutil), part files, and
the time of a DuckDB query over the result. Memory in the number of cells: the tiny model with
2 worker processes on a tenth of the plate and on all of it, peak RSS of the client process
(client, scheduler and nannies) and of the largest worker process, 10x / 1x. Not run by CI: generating the plate takes
minutes and a few GB of disk.
"""

import json
import pathlib
import subprocess
import sys
import threading
import time

import duckdb
import psutil

import ceiling
import plates
from gradcamo.data.read import discover_images, open_image
from gradcamo.scorer.crops import cut_object_crops
from gradcamo.scorer.sink import part_files

FIELD = 1080
SPACING = 38
CHUNK = 540
QUERY = ("select Metadata_Well, count(*) as cells, median(grad_camo) as median_grad_camo, "
         "avg((grad_camo > 0.5)::int) as share_above_half from read_parquet('{}/*.parquet') group by 1 order by 1")


def _role(member, root):
    """``client`` (the scoring process: client, scheduler, nannies), ``worker`` (a Dask worker
    process, started by multiprocessing's spawn) or ``other`` (e.g. its resource tracker)."""
    if member.pid == root.pid:
        return "client"
    return "worker" if any("spawn_main" in part for part in member.cmdline()) else "other"


def _watch_tree(process, peaks, stop):
    """Peak RSS (MB) of ``process`` and its descendants, per pid and role, until ``stop`` is set."""
    root = psutil.Process(process.pid)
    while not stop.is_set():
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            try:
                rss = member.memory_info().rss / 2**20
                key = f"{member.pid} {_role(member, root)}"
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            peaks[key] = max(peaks.get(key, 0.0), rss)
        time.sleep(0.2)


def score_watched(plate, model, output, **options):
    """``score`` in a fresh interpreter, with the peak RSS of every process of its tree."""
    import endtoend

    command = [sys.executable, endtoend.__file__, str(plate), str(model), str(output), json.dumps(options)]
    peaks, stop = {}, threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=_watch_tree, args=(process, peaks, stop), daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    stop.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"scoring subprocess failed:\n{stderr[-2000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    record["wall_seconds"] = time.perf_counter() - started
    record["cells_per_s"] = record["cells"] / record["seconds"]
    record["peak_rss_mb_per_process"] = {key: round(value, 1) for key, value in sorted(peaks.items())}
    record["part_files"] = len(part_files(output))
    started = time.perf_counter()
    rows = duckdb.sql(QUERY.format(output)).fetchall()
    record["duckdb_query_seconds"] = time.perf_counter() - started
    record["duckdb_query_rows"] = len(rows)
    return record


def _bare_rates(plate, model_path, batch_size):
    first = open_image(discover_images(str(plate))[0])
    crops = cut_object_crops(first.image[...], first.labels[...], ceiling.CROP[1:])[1]
    return ceiling.bare_ort_rate(model_path, crops, batch_size)


def _peak_by_role(run, role):
    return max((peak for key, peak in run["peak_rss_mb_per_process"].items() if key.endswith(role)), default=None)


def memory_in_cells(plate, cells, fields, model, scratch, log, workers=2):
    """Peak RSS of the client and of the largest worker process, scoring a tenth of ``plate``'s
    fields (a plate written here, same generator and seeds) and all of it, ``workers`` workers."""
    small = scratch / "scale-tenth.zarr"
    small_cells = plates.write_grid_plate(small, wells=max(1, fields // 10), fields_per_well=1,
                                          field_shape=(FIELD, FIELD), spacing=SPACING, chunks=(CHUNK, CHUNK))
    runs = {}
    for name, (source, n) in {"1x": (small, small_cells), "10x": (plate, cells)}.items():
        log(f"scale: memory, tiny model, {workers} workers, {n} cells")
        runs[name] = score_watched(source, model, scratch / f"scores-memory-{name}", batch_size=64, workers=workers)
    ratios = {role: _peak_by_role(runs["10x"], role) / _peak_by_role(runs["1x"], role) for role in ("client", "worker")}
    return {"workers": workers, "runs": runs, "peak_rss_ratio_10x_1x": ratios,
            "cells": {"1x": small_cells, "10x": cells}}


def run_scale(args, scratch, log):
    import common

    import gradcamo

    scratch = pathlib.Path(scratch)
    plate = scratch / "scale.zarr"
    log(f"scale: writing {args.scale_wells} wells x 1 field of {FIELD}x{FIELD}, 5 channels")
    started = time.perf_counter()
    cells = plates.write_grid_plate(plate, wells=args.scale_wells, fields_per_well=1, field_shape=(FIELD, FIELD),
                                    spacing=SPACING, chunks=(CHUNK, CHUNK))
    report = {"cells": cells, "fields": args.scale_wells, "field": [5, FIELD, FIELD], "chunks": [CHUNK, CHUNK],
              "plate_seconds": time.perf_counter() - started, "runs": {}}
    log(f"scale: {cells} cells in {report['plate_seconds']:.0f} s")

    tiny = ceiling.export_tiny(scratch / "tiny.onnx")
    log("scale: tiny model, end to end")
    run = score_watched(plate, tiny, scratch / "scores-tiny", batch_size=64)
    started = time.perf_counter()
    plates.read_whole_arrays(plate)
    read_rate = cells / (time.perf_counter() - started)
    ort_rate = _bare_rates(plate, tiny, 64)
    run["bounds_cells_per_s"] = {"ort_graph": ort_rate, "read": read_rate}
    run["ceiling_ratio"] = run["cells_per_s"] / min(ort_rate, read_rate)
    report["runs"]["tiny"] = run

    shape = common.MODELS["resnet18"]["quick"]
    model, layer = common.build_model("resnet18", channels=shape[0])
    resnet = scratch / "resnet18.onnx"
    gradcamo.export_model(model, layer, shape, resnet, validate=False)
    subset = scratch / "scale-resnet18.zarr"
    fields = args.scale_resnet_fields
    subset_cells = plates.write_grid_plate(subset, wells=fields, fields_per_well=1, field_shape=(FIELD, FIELD),
                                           spacing=SPACING, chunks=(CHUNK, CHUNK))
    log(f"scale: resnet18 {'x'.join(map(str, shape))}, end to end on {subset_cells} cells ({fields} fields)")
    run = score_watched(subset, resnet, scratch / "scores-resnet18", batch_size=64)
    run["crop_shape"] = list(shape)
    run["fields"] = fields
    report["runs"]["resnet18"] = run
    report["memory"] = memory_in_cells(plate, cells, args.scale_wells, tiny, scratch, log)
    return report


def print_scale(report):
    print(f"\nscale: {report['cells']} cells, {report['fields']} fields of {report['field']}, chunks {report['chunks']}")
    for name, run in report["runs"].items():
        print(f"  {name}: {run['cells']} cells, {run['cells_per_s']:,.0f} cells/s end to end "
              f"({run['seconds']:.0f} s), {run['part_files']} part files, "
              f"DuckDB query {run['duckdb_query_seconds'] * 1000:.0f} ms")
        if "ceiling_ratio" in run:
            bounds = run["bounds_cells_per_s"]
            print(f"    bare ORT {bounds['ort_graph']:,.0f} cells/s, whole-array read {bounds['read']:,.0f} cells/s; "
                  f"ceiling ratio {run['ceiling_ratio']:.2f} (goal >= 0.5)")
        for process, peak in run["peak_rss_mb_per_process"].items():
            print(f"    peak RSS {peak:8.0f} MB  {process}")
    memory = report["memory"]
    print(f"  memory, {memory['workers']} workers, {memory['cells']['1x']} vs {memory['cells']['10x']} cells:")
    for role, ratio in memory["peak_rss_ratio_10x_1x"].items():
        peaks = [_peak_by_role(memory["runs"][name], role) for name in ("1x", "10x")]
        print(f"    {role}: peak RSS {peaks[0]:.0f} -> {peaks[1]:.0f} MB, 10x / 1x = {ratio:.2f} (goal <= 1.1)")


__all__ = ["print_scale", "run_scale", "score_watched"]
