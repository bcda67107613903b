"""score(): OME-Zarr inputs -> Grad-CAMO scores in a Parquet dataset, on a Dask cluster."""

import dataclasses
import logging
import os
import time

import numpy as np
from distributed import Client, LocalCluster, as_completed

from gradcamo.errors import InputError
from gradcamo.model_file import read_model_info
from gradcamo.cam import CONVENTIONS
from gradcamo.scorer.crops import merge_measurements
from gradcamo.scorer.plan import assign_objects, parse_targets, plan_inputs
from gradcamo.scorer.progress import cell_progress
from gradcamo.scorer.session import check_device, providers_used
from gradcamo.scorer.sink import ScoreDataset, make_table
from gradcamo.scorer.units import ScoreSpec, measure_unit, score_unit

LOGGER = logging.getLogger(__name__)
TASKS_IN_FLIGHT_PER_WORKER = 2


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """What a call of :func:`score` did."""

    output: str
    images: int
    units: int
    units_resumed: int
    cells: int
    rows: int
    seconds: float
    providers: tuple


def _check_positive(value, option, *, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{option}: expected a whole number >= 1, got {value!r}")
    return value


def _run_bounded(client, function, items, window, on_result):
    """Submit ``function(*item)`` for each item with at most ``window`` tasks in flight."""
    items = iter(items)
    pending = as_completed()
    keys = {}
    for item in items:
        future = client.submit(function, *item, pure=False)
        keys[future.key] = item
        pending.add(future)
        if pending.count() >= window:
            break
    for future in pending:
        item = keys.pop(future.key)
        on_result(item, future.result())
        future.release()
        next_item = next(items, None)
        if next_item is not None:
            new = client.submit(function, *next_item, pure=False)
            keys[new.key] = next_item
            pending.add(new)


def _open_client(scheduler, workers, threads):
    """A client of ``scheduler``; else a local cluster: one in-process worker by default (starts in
    about a second), ``workers`` worker processes when more than one is asked for."""
    if scheduler:
        return Client(scheduler), None
    if (workers or 1) == 1:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
        return Client(cluster), cluster
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True,
        dashboard_address=None, silence_logs=logging.CRITICAL,  # task errors reach the client anyway
        env={"OMP_NUM_THREADS": str(threads or max(1, (os.cpu_count() or 1) // workers))},
    )
    return Client(cluster), cluster


def _key_columns(unit, columns, class_names, provenance):
    n = len(columns["object_number"])
    centroids = columns.pop("centroids")
    spatial = unit.layout.spatial_axes
    ref = unit.ref
    keyed = {
        "Metadata_Plate": [ref.plate] * n,
        "Metadata_Well": [ref.well] * n,
        "Metadata_Site": np.full(n, ref.site, dtype=np.int32),
        "Metadata_Image": [ref.name] * n,
        "Metadata_ObjectNumber": columns.pop("object_number"),
        "centroid_z": centroids[:, 0] if "z" in spatial else [None] * n,
        "centroid_y": centroids[:, spatial.index("y")],
        "centroid_x": centroids[:, spatial.index("x")],
        "target_name": [class_names[t] for t in columns["target_class"]],
    }
    return make_table({**keyed, **columns}, provenance=provenance)


def score(
    inputs, model, output, *, labels=None, channels=None, target="predicted", batch_size=64,
    device="auto", workers=None, threads=None, scheduler=None, convention="raw",
    overwrite=False, timepoint=0, block_shape=None, progress=False,
):
    """Score every cell of the given OME-Zarr images; write Grad-CAMO rows to ``output``.

    Parameters
    ----------
    inputs : sequence of str
        OME-Zarr images or HCS plates (local paths or fsspec URLs).
    model : str
        A gradcamo ONNX file (``gradcamo export``).
    output : str
        Parquet dataset directory; re-running with the same parameters resumes.
    labels : str, optional
        Label image name under ``labels/``; needed when there are several.
    channels : sequence of int, optional
        Image channels fed to the model, in order; default all.
    target : str or int
        ``predicted``, ``all``, a class index or a class name.
    batch_size, workers, threads : int
        Crops per onnxruntime call; Dask worker processes; onnxruntime threads per worker.
    device : {"auto", "cpu", "cuda"}
    scheduler : str, optional
        Address of a running dask.distributed scheduler; default: a local cluster.
    convention : {"raw", "pytorch-grad-cam"}
    overwrite : bool
        Replace a dataset written with other parameters.
    timepoint : int
        Index on the ``t`` axis, if any.
    block_shape : tuple of int, optional
        Spatial work-unit size; default whole label chunks spanning >= 8 crops.
    progress : bool
        Show cells, cells/s and ETA on stderr.

    Returns
    -------
    ScoreSummary
    """
    started = time.time()
    _check_positive(batch_size, "--batch-size", allow_none=False)
    _check_positive(workers, "--workers")
    _check_positive(threads, "--threads")
    check_device(device)
    if convention not in CONVENTIONS:
        raise InputError(f"--convention: expected one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if isinstance(timepoint, bool) or not isinstance(timepoint, int) or timepoint < 0:
        raise InputError(f"--timepoint: expected a whole number >= 0, got {timepoint!r}")
    if not inputs:
        raise InputError("INPUT: give at least one OME-Zarr image or plate")
    info = read_model_info(model)
    targets = parse_targets(target, list(info.class_names))
    images = plan_inputs(
        [str(i) for i in inputs], info, label_name=labels,
        channels=None if channels is None else tuple(channels), timepoint=timepoint, block_shape=block_shape,
    )
    spec = ScoreSpec(
        model_path=str(os.path.abspath(model)), model_sha256=info.sha256, crop_shape=tuple(info.input_shape),
        convention=convention, device=device, threads=threads, batch_size=batch_size, targets=targets,
        label_name=labels,
    )
    parameters = {
        "model_sha256": info.sha256, "target_layer": info.target_layer, "convention": convention,
        "targets": list(targets), "labels": labels, "channels": None if channels is None else list(channels),
        "timepoint": timepoint, "crop_shape": list(info.input_shape),
        "inputs": [str(i) for i in inputs], "block_shape": None if block_shape is None else list(block_shape),
    }
    provenance = {"model_sha256": info.sha256, "target_layer": info.target_layer, "convention": convention}
    with ScoreDataset.open(output, parameters, overwrite=overwrite) as dataset:
        done = dataset.completed_units()
        todo = [image for image in images if any(u.unit_id not in done for u in image.units)]
        counts = {"images": len(images), "units": sum(len(i.units) for i in images), "cells": 0, "rows": 0}
        client, cluster = _open_client(scheduler, workers, threads)
        try:
            window = TASKS_IN_FLIGHT_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
            with cell_progress(progress) as bar:
                units = _measure(client, todo, spec, window, info.spatial_dims)
                units = [u for u in units if u.unit_id not in done]
                task = bar.add_task("scoring", total=int(sum(len(u.ids) for u in units)))

                def on_scored(item, columns):
                    _, unit = item
                    table = _key_columns(unit, columns, info.class_names, provenance) if columns else make_table({}, provenance=provenance)
                    dataset.write_part(unit.unit_id, table)
                    counts["cells"] += len(unit.ids)
                    counts["rows"] += table.num_rows
                    bar.update(task, advance=len(unit.ids))

                _run_bounded(client, score_unit, [(spec, u) for u in units], window, on_scored)
            counts["providers"] = sorted({p for used in client.run(providers_used).values() for p in used})
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        dataset.finish(counts)
    summary = ScoreSummary(
        output=str(output), images=len(images), units=counts["units"],
        units_resumed=len(done), cells=counts["cells"], rows=counts["rows"], seconds=time.time() - started,
        providers=tuple(counts["providers"]),
    )
    LOGGER.info(
        "scored %d cells (%d rows) in %.1f s on %s", summary.cells, summary.rows, summary.seconds,
        ", ".join(summary.providers) or "no onnxruntime session (nothing to score)",
    )
    return summary


def _measure(client, images, spec, window, ndim):
    """Pass 1: object centroids per image from block-wise sums; returns units with objects."""
    parts = {image.ref: [] for image in images}
    _run_bounded(
        client, measure_unit, [(unit, spec.label_name) for image in images for unit in image.units],
        window, lambda item, measured: parts[item[0].ref].append(measured),
    )
    units = []
    for image in images:
        units += assign_objects(image.units, merge_measurements(parts[image.ref], ndim))
    return units


__all__ = ["ScoreSummary", "score"]
