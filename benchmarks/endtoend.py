"""gradcamo end to end on synthetic OME-Zarr plates: throughput, peak memory, worker scaling.

"End to end" is one call of ``gradcamo.score``: plan the inputs, start the Dask cluster,
read the Zarr chunks, cut the crops, run the graph, write the Parquet parts and the
manifest. The same plate's crops, cut as the scorer cuts them, feed the in-memory
candidates of ``run.py``, so every candidate scores the same cells.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_plate
from gradcamo.scorer.crops import cut_object_crops
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.sink import part_files

FIELDS_PER_WELL = 2


def _field_shape(crop_shape):
    """A field holding a few dozen cells of about a fifth of the crop's width."""
    spatial = crop_shape[1:]
    yx = (4 * spatial[-1],) * 2
    return yx if len(spatial) == 2 else (spatial[0], *yx)


def make_plate(path, crop_shape, min_cells, seed=0):
    """Write an HCS plate with at least ``min_cells`` cells; return its (image, labels) fields."""
    field_shape = _field_shape(crop_shape)
    radius = crop_shape[-1] / 5
    fields, cells = [], 0
    while cells < min_cells:
        image, labels = make_cells(field_shape, 40, n_channels=crop_shape[0], radius=radius, seed=seed + len(fields))
        fields.append((image, labels))
        cells += int(labels.max())
    wells = {}
    for index in range(0, len(fields), FIELDS_PER_WELL):
        well = index // FIELDS_PER_WELL
        wells[("ABCDEFGH"[well // 12], well % 12 + 1)] = fields[index : index + FIELDS_PER_WELL]
    write_plate(path, wells, name="bench", chunks=field_shape)  # one chunk per field and channel, as HCS stores do
    return fields


def crops_of(fields, crop_shape, limit=None):
    """The first ``limit`` cells' crops (N, C, *S) float32 and masks (N, *S) bool, cut as the scorer cuts."""
    cut = [cut_object_crops(image, labels, crop_shape[1:]) for image, labels in fields]
    crops = np.concatenate([c for _, c, _ in cut])[:limit]
    masks = np.concatenate([m for _, _, m in cut])[:limit]
    return crops, masks


def score_once(plate, model, scratch, **options):
    """One ``score`` call into a fresh output directory under ``scratch``; returns its summary."""
    output = tempfile.mkdtemp(prefix="scores-", dir=scratch)  # new and empty: score accepts it
    return score([str(plate)], str(model), output, **options)


def _peak_rss_mb():
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a
    child inherits from its parent's peak)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def steady_cells_per_s(output, workers):
    """Cells/s between the ``workers``-th and the last finished part file of a dataset.

    Leaves out what every run pays once (process and cluster start, sessions, the first
    unit of each worker), which a million-cell screen does not notice. ``workers``: the units
    in flight at once (:func:`local_tasks`), whose first parts finish together; counting fewer
    overstates the rate of a plate of few units.
    """
    parts = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in part_files(output))
    if len(parts) <= workers:
        return None
    rows = sum(n for _, n in parts[workers:])
    return rows / (parts[-1][0] - parts[workers - 1][0])


def local_tasks(workers=None):
    """Units a local cluster of ``workers`` processes (default one) scores at a time: its task threads."""
    workers = workers or 1
    try:
        from gradcamo.scorer.resources import task_threads, usable_cpus
    except ImportError:  # a tree from before issue 25 (ceiling.py compares trees): a fixed count per worker
        from gradcamo.scorer.pipeline import TASK_THREADS_PER_LOCAL_WORKER
        return workers * TASK_THREADS_PER_LOCAL_WORKER
    return workers * task_threads(max(1, usable_cpus().cpus // workers))


def emit_record(record, output=None):
    """Print a benchmark's record as JSON, and write it to ``output`` too when given."""
    text = json.dumps(record, indent=2)
    print(text)
    if output:
        pathlib.Path(output).write_text(text + "\n")
    return record


def _child(plate, model, output, options):
    """In a subprocess: score once, then print cells, seconds and the peak RSS of this process."""
    options = json.loads(options)
    summary = score([plate], model, output, **options)
    print(json.dumps({
        "cells": summary.cells, "seconds": summary.seconds, "providers": summary.providers,
        "steady_cells_per_s": steady_cells_per_s(output, options.get("workers") or 1),
        "peak_rss_mb": _peak_rss_mb(), "stage_seconds": summary.stage_seconds,
    }))


def score_in_subprocess(plate, model, output, **options):
    """``score`` in a fresh interpreter (so peak RSS is this run's alone); returns the child's record."""
    command = [sys.executable, __file__, str(plate), str(model), str(output), json.dumps(options)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"scoring subprocess failed:\n{result.stderr[-2000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = time.perf_counter() - started
    return record


if __name__ == "__main__":
    _child(*sys.argv[1:5])
