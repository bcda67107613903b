"""score(): OME-Zarr inputs -> Grad-CAMO scores in a Parquet dataset, on a Dask cluster."""

import collections
import concurrent.futures
import dataclasses
import logging
import os
import time

from distributed import Client, LocalCluster, as_completed

from gradcamo.data.chunks import check_mode
from gradcamo.errors import GradcamoError, InputError, Interrupted
from gradcamo.model_file import read_model_info
from gradcamo.cam import CONVENTIONS, check_choice, check_methods
from gradcamo.scorer.causal import check_causal_options
from gradcamo.scorer.channels import channel_note, describe_choices, parse_channels
from gradcamo.scorer.empty import empty_maps_warning
from gradcamo.scorer.failures import DEFAULT_MAX_FAILURES, FailureLog, UnitFailure
from gradcamo.scorer.plan import UNIT_MAX_BYTES, parse_targets, plan_inputs
from gradcamo.progress import RunProgress, cell_progress
from gradcamo.scorer.resources import DEVICE_ID_ENV, choose_gpu_workers, task_threads, usable_cpus
from gradcamo.scorer.session import check_device
from gradcamo.scorer.sink import ScoreDataset, part_files
from gradcamo.scorer.features import feature_count
from gradcamo.scorer.engine import PassKind, run_unit
from gradcamo.scorer.score_pass import ScorePass
from gradcamo.scorer.tally import RunTally
from gradcamo.scorer.units import assign_objects, measure_block, merge_blocks
from gradcamo.scorer.worker import PLUGIN_NAME, ScorerPlugin
from gradcamo.signals import children_ignore_sigint
from gradcamo.options import check_whole_number
from gradcamo.wording import counted

LOGGER = logging.getLogger(__name__)
LOCAL_ALLOWED_FAILURES = 1
"""Worker deaths a task may take part in on a local cluster before it fails (Dask's default: 3):
a unit that kills its worker twice is recorded as failed and the run goes on."""
WRITES_IN_FLIGHT = 4
"""Part files queued for the client's writer thread before the result loop waits for it."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a call of :func:`score` (or ``encode``) did.

    ``stage_seconds`` sums, over all units, the seconds workers spent reading, measuring,
    cutting, inferring and building tables; with task threads overlapping, their sum can
    exceed the wall time. ``write`` is the client's writer thread's seconds writing parts.
    ``failures`` lists the units that failed (their rows are missing; re-running the same
    call retries them); ``stopped_early`` is true when more than ``max_failures`` failed and
    the run stopped.
    """

    output: str
    images: int
    units: int
    units_resumed: int
    cells: int
    rows: int
    seconds: float
    providers: tuple
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    failures: tuple = ()
    stopped_early: bool = False
    channel_note: str = ""
    """How the image channels were matched to the model's (for the last line of ``score``)."""
    cells_without_centre: object = None
    """With centre labels: cells left out for want of a centre object (None without)."""
    missing_chunks: dict = dataclasses.field(default_factory=dict)
    """Image name -> image chunks read as the fill value (``--missing-chunks zeros``), this run's and the kept parts'."""
    empty_maps: int = 0
    """Rows of this run whose map is empty (``cam_empty``); :attr:`warning` when more than half."""

    @property
    def warning(self) -> str | None:
        return empty_maps_warning(self.empty_maps, self.rows)


def check_run_options(*, inputs, batch_size, workers, threads, unit_max_bytes, timepoint, max_failures, device) -> None:
    """Refuse bad run options of :func:`score` or ``encode`` before any work (``InputError`` naming the option)."""
    if not inputs:
        raise InputError("inputs: give at least one OME-Zarr image or plate", argument="inputs")
    check_whole_number(batch_size, "batch_size")
    check_whole_number(workers, "workers", optional=True)
    check_whole_number(threads, "threads", optional=True)
    check_whole_number(unit_max_bytes, "unit_max_bytes")
    check_whole_number(timepoint, "timepoint", minimum=0)
    check_whole_number(max_failures, "max_failures", minimum=0)
    check_device(device)


def plan_run(inputs, crop_shape, *, labels=None, channels=None, timepoint=0, block_shape=None,
             unit_max_bytes=UNIT_MAX_BYTES, site_base=0, channel_names=(), centre_labels=None,
             missing_chunks="error") -> tuple[list, dict]:
    """Plan every image of ``inputs`` for crops of ``crop_shape`` (C, [D,] H, W); ``channel_names``
    are the model's (matched to the stores' channel labels), ``site_base`` that of plate fields'
    indices where no site was recorded by ``gradcamo import``; ``centre_labels`` names the label
    image whose objects centre the crops; ``missing_chunks`` is what reading an absent image chunk does.

    Returns
    -------
    images : list
        As :func:`gradcamo.scorer.plan.plan_inputs`.
    parameters : dict
        The input parameters a dataset records (and a resumed run must repeat): labels,
        channels, timepoint, crop shape, inputs (local paths absolute), block shape, unit budget,
        site base and the channel mapping (:func:`gradcamo.scorer.channels.describe_choices`)
        (and the centre labels, when given).
    """
    channels = parse_channels(channels)
    images = plan_inputs(
        [str(i) for i in inputs], tuple(crop_shape), label_name=labels,
        channels=channels, timepoint=timepoint, block_shape=block_shape,
        unit_max_bytes=unit_max_bytes, site_base=site_base, model_channel_names=tuple(channel_names),
        centre_labels=centre_labels, missing_chunks=missing_chunks,
    )
    mapping = describe_choices(
        ((image.blocks[0].layout, image.blocks[0].source.channel_labels) for image in images if image.blocks),
        tuple(channel_names),
    )
    parameters = {
        "labels": labels, "channels": None if channels is None else list(channels),
        "timepoint": timepoint, "crop_shape": list(crop_shape),
        "inputs": [_recorded_input(str(i)) for i in inputs],
        "block_shape": None if block_shape is None else list(block_shape),
        "unit_max_bytes": unit_max_bytes,
        "site_base": site_base, "channel_mapping": mapping,
    }
    if centre_labels is not None:
        parameters["center_labels"] = centre_labels
    return images, parameters


def _run_bounded(client, function, items, window, on_result, failures):
    """Submit ``function(*item)`` for each item with at most ``window`` tasks in flight.

    A task that raises is recorded in ``failures`` (item[1] is its block) and the others go
    on, except for a :class:`GradcamoError` (bad input found late), which stops the run.
    Once ``failures`` is exceeded, the tasks in flight are cancelled and no more submitted.
    """
    if failures.exceeded:  # already (plate fields that could not be opened): submit nothing
        return
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
        try:
            result = future.result()
        except GradcamoError:
            raise
        except Exception as error:
            failures.record(UnitFailure.of(item[1], error))
        else:
            on_result(item, result)
        future.release()
        if failures.exceeded:
            in_flight = list(pending.futures)
            pending.clear()
            client.cancel(in_flight)
            return
        next_item = next(items, None)
        if next_item is not None:
            new = client.submit(function, *next_item, pure=False)
            keys[new.key] = next_item
            pending.add(new)


LOCAL_HTTP_ADDRESS = "127.0.0.1:0"
"""Where a local cluster's HTTP endpoints listen: loopback, any free port. (``None`` means the
default 8787 to distributed, which warns when another Dask already holds it.)"""


def _recorded_input(path):
    """An input as the manifest records it: URLs as given, local paths absolute, so that a run
    from another directory neither resumes the wrong store nor loses the way to it."""
    return path if "://" in path else os.path.abspath(path)


def _open_client(scheduler, workers, threads, cpus, gpu_workers=None):
    """A client of ``scheduler``; else a local cluster: one worker process per GPU of ``gpu_workers``
    (:func:`_open_gpu_cluster`); else one in-process worker by default (starts in about a second),
    ``workers`` worker processes when more than one is asked for; each local CPU worker runs 1 to
    4 tasks at a time, from the ``cpus`` this process may use
    (:func:`gradcamo.scorer.resources.task_threads`)."""
    if scheduler:
        return Client(scheduler), None
    if gpu_workers:
        cluster = _open_gpu_cluster(gpu_workers)
        return Client(cluster), cluster
    tasks = task_threads(cpus if (workers or 1) == 1 else max(1, cpus // workers))
    if (workers or 1) == 1:
        cluster = LocalCluster(n_workers=1, threads_per_worker=tasks, processes=False,
                               dashboard_address=LOCAL_HTTP_ADDRESS, silence_logs=logging.CRITICAL,
                               scheduler_kwargs={"allowed_failures": LOCAL_ALLOWED_FAILURES})
        return Client(cluster), cluster
    with children_ignore_sigint():
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=tasks, processes=True,
            dashboard_address=LOCAL_HTTP_ADDRESS, silence_logs=logging.CRITICAL,  # task errors reach the client
            scheduler_kwargs={"allowed_failures": LOCAL_ALLOWED_FAILURES},
            env={"OMP_NUM_THREADS": str(threads or max(1, cpus // workers))},
        )
    return Client(cluster), cluster


def _open_gpu_cluster(gpu_workers):
    """A local cluster of one worker process per :class:`~gradcamo.scorer.resources.GpuWorker`, named
    after its GPU (``gpu3``), its sessions bound to that device (:data:`DEVICE_ID_ENV`, read by
    :func:`gradcamo.scorer.resources.worker_device_id`), with its share of the CPUs as task
    threads that read, decompress and cut while one of them runs a batch on the GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": LOCAL_HTTP_ADDRESS,
                                               "allowed_failures": LOCAL_ALLOWED_FAILURES}}
    workers = {
        worker.name: {"cls": Nanny, "options": {
            "name": worker.name, "host": "127.0.0.1", "nthreads": worker.task_threads, "dashboard": False,
            "silence_logs": logging.CRITICAL,
            "env": {DEVICE_ID_ENV: str(worker.gpu.ordinal), "OMP_NUM_THREADS": str(worker.cpu_threads)},
        }}
        for worker in gpu_workers
    }
    with children_ignore_sigint():
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.CRITICAL)


def score(
    inputs, model, output, *, labels=None, channels=None, target="predicted", batch_size=64,
    device="auto", workers=None, threads=None, scheduler=None, convention="raw", methods=("gradcam",),
    overwrite=False, timepoint=0, block_shape=None, progress=False, unit_max_bytes=UNIT_MAX_BYTES,
    max_failures=DEFAULT_MAX_FAILURES, site_base=0, centre_labels=None, features=False, missing_chunks="error",
    gpus=None, ablation=False, deletion_steps=None, deletion_curves=False,
) -> RunSummary:
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
    channels : sequence of int or str, optional
        Image channels fed to the model, in order: indices, or names of the store's channels
        (``omero.channels[].label``, case-insensitive). Default: the model's channel names
        matched to the store's, where both name them; else all channels in order.
    target : str or int
        ``predicted``, ``all``, a class index or a class name.
    batch_size, workers, threads : int
        Crops per onnxruntime call; Dask worker processes; onnxruntime threads per worker.
    device : {"auto", "cpu", "cuda"}
    scheduler : str, optional
        Address of a running dask.distributed scheduler; default: a local cluster.
    convention : {"raw", "pytorch-grad-cam"}
    methods : sequence of str, or str
        CAM methods (``gradcam``, ``hirescam``, ``gradcam++``, ``xgradcam``, ``layercam``;
        a string is split at commas), each one row per cell and target, from one pass.
    overwrite : bool
        Replace a dataset written with other parameters.
    timepoint : int
        Index on the ``t`` axis, if any.
    block_shape : tuple of int, optional
        Split every image into blocks of this spatial size (scored in two passes).
    unit_max_bytes : int
        Default work unit: the whole image when its chosen channels and labels take at
        most this many bytes; else blocks of whole label chunks spanning >= 8 crops.
    progress : bool
        Show cells, cells/s and ETA on stderr.
    max_failures : int
        Failed work units tolerated: one more stops the run early (cancelling the rest).
    site_base : {0, 1}
        ``Metadata_Site`` of a plate field that ``gradcamo import`` did not record a site
        for: its index in the well plus ``site_base``.
    centre_labels : str, optional
        Label image whose object k centres the crop of cell k (the Grad-CAMO mask stays the
        cell's); cells without a centre object are left out and counted.
    features : bool
        Also write the target layer's activations averaged over space (``feature_0..``).
    missing_chunks : {"error", "zeros"}
        An image chunk the store lacks fails its unit, or is read as the fill value: then
        counted per image (``RunSummary.missing_chunks``, ``_gradcamo.json``) and its unit's
        rows flagged (``missing_chunks``). Not a parameter: a re-run may change it.
    gpus : str, optional
        ``all`` or device numbers such as ``0,1,3``: one local worker process per GPU, each
        bound to its device. Default: every visible GPU when there are several (and neither
        ``scheduler`` nor ``workers`` is given, nor ``device="cpu"``).
    ablation : bool
        Also run the model on each crop's cell alone and context alone (the rest filled with
        the crop's background median): ``prob_target_cell_only``, ... (docs/score.md, "Causal checks").
    deletion_steps : int, optional
        K >= 1: deletion and insertion along the row's CAM in K steps: ``deletion_auc``, ``insertion_auc``.
    deletion_curves : bool
        With ``deletion_steps``: also the K + 1 probabilities, ``deletion_curve`` and ``insertion_curve``.

    Returns
    -------
    RunSummary

    Raises
    ------
    InputError
        Bad input or options, found before any work or in a unit (the run stops).
    Interrupted
        SIGINT/SIGTERM (or KeyboardInterrupt): finished parts are kept, the lock released;
        the message says how many units are done.
    """
    started = time.time()
    check_run_options(inputs=inputs, batch_size=batch_size, workers=workers, threads=threads,
                      unit_max_bytes=unit_max_bytes, timepoint=timepoint, max_failures=max_failures, device=device)
    check_choice("convention", convention, CONVENTIONS)
    check_mode(missing_chunks)
    methods = check_methods(methods)
    cpus = usable_cpus()
    gpu_workers = choose_gpu_workers(gpus, device=device, scheduler=scheduler, workers=workers, cpus=cpus.cpus)
    if gpus is not None:
        device = "cuda"  # asked for GPUs: a worker whose session does not get CUDA is an error, not a CPU run
    checks = check_causal_options(ablation=ablation, deletion_steps=deletion_steps, deletion_curves=deletion_curves)
    info = read_model_info(model)
    targets = parse_targets(target, list(info.class_names))
    if site_base not in (0, 1) or isinstance(site_base, bool):
        raise InputError(f"site_base: expected 0 or 1, got {site_base!r}", argument="site_base")
    n_features = feature_count(info) if features else 0
    images, parameters = plan_run(
        inputs, info.input_shape, labels=labels, channels=channels, timepoint=timepoint, block_shape=block_shape,
        unit_max_bytes=unit_max_bytes, site_base=site_base, channel_names=info.channel_names,
        centre_labels=centre_labels, missing_chunks=missing_chunks,
    )
    provenance = {"model_sha256": info.sha256, "target_layer": info.target_layer, "convention": convention}
    kind = ScorePass(
        model_path=str(os.path.abspath(model)), model_sha256=info.sha256, crop_shape=tuple(info.input_shape),
        convention=convention, device=device, threads=threads, batch_size=batch_size, targets=tuple(targets),
        class_names=tuple(info.class_names), provenance=provenance, methods=tuple(methods), features=n_features,
        causal=checks,
    )
    parameters.update({
        "model_sha256": info.sha256, "target_layer": info.target_layer, "convention": convention,
        "methods": list(methods), "targets": list(targets),
        **(checks.parameters() if checks is not None else {}),
    })
    if features:
        parameters["features"] = n_features
    summary = run_units(
        kind, images, output, parameters,
        record={"model": kind.model_path},  # where `cams` and `report` find it; not a parameter: may move
        overwrite=overwrite, scheduler=scheduler, workers=workers, threads=threads, progress=progress,
        max_failures=max_failures, started=started, verb="scored", cpus=cpus, gpu_workers=gpu_workers,
    )
    return dataclasses.replace(summary, channel_note=channel_note(parameters["channel_mapping"], info.channel_names))


def run_units(kind: PassKind, images, output, parameters, *, record, overwrite=False, scheduler=None, workers=None,
              threads=None, progress=False, max_failures=DEFAULT_MAX_FAILURES, started=None, verb="processed",
              cpus=None, gpu_workers=None) -> RunSummary:
    """Run the pass ``kind`` on every work unit not yet done (:func:`gradcamo.scorer.engine.run_unit`);
    write each one's table as a part.

    The run loop of :func:`score` and ``encode``: opens (creates, resumes or replaces) the
    dataset, starts or joins the Dask cluster and registers the per-worker state, submits a
    bounded number of units (blocked images measured first), writes parts on a background
    thread, shows progress, records failed units and stops after ``max_failures``, turns
    SIGINT/SIGTERM into :class:`Interrupted` with finished parts kept, and writes the manifest.

    Parameters
    ----------
    kind : gradcamo.scorer.engine.PassKind
        Picklable; handed to every unit. Its ``schema`` is the parts' columns.
    images : list
        From :func:`plan_run`.
    output : str
        The dataset directory.
    parameters : dict
        What the dataset records; a resumed run must give the same.
    record : dict
        Top-level manifest entries that may change between runs (e.g. where the model is).
    overwrite, scheduler, workers, threads, progress, max_failures
        As for :func:`score`.
    started : float, optional
        ``time.time()`` when the command began (default: now); the summary's seconds count from it.
    verb : str
        Past tense for the log line (``scored``, ``encoded``).
    cpus : gradcamo.scorer.resources.CpuAllocation, optional
        The CPUs this process may use (default: found here); recorded in the manifest.
    gpu_workers : list of gradcamo.scorer.resources.GpuWorker, optional
        One local worker process per GPU (:func:`gradcamo.scorer.resources.choose_gpu_workers`).

    Returns
    -------
    RunSummary
    """
    started = time.time() if started is None else started
    spatial_dims = len(kind.crop_shape) - 1
    cpus = cpus or usable_cpus()
    with ScoreDataset.open(output, parameters, overwrite=overwrite, schema=kind.schema) as dataset:
        dataset.record(**record, resources={
            **cpus.to_json(), "gpus": [{"worker": w.name, "device": w.gpu.label, "name": w.gpu.name,
                                        "uuid": w.gpu.uuid} for w in gpu_workers or ()]})
        done = dataset.completed_units()
        tally = RunTally(images, centre_labels=parameters.get("center_labels") is not None,
                         missing_chunks=dataset.missing_chunks())
        failures = FailureLog(max_failures)
        for image in images:
            if not image.blocks:  # a plate field that could not be opened
                failures.record(UnitFailure.unopened(image))
        client, cluster = _open_client(scheduler, workers, threads, cpus.cpus, gpu_workers)
        try:
            client.register_plugin(ScorerPlugin(), name=PLUGIN_NAME)
            nthreads = [w["nthreads"] for w in client.scheduler_info()["workers"].values()]
            window = max(2, sum(nthreads) + len(nthreads))
            todo = [image for image in images if any(b.unit_id not in done for b in image.blocks)]
            with cell_progress(progress) as bar, _PartWriter(dataset) as writer:
                shown = RunProgress(bar, verb, [w.gpu.label for w in gpu_workers or ()])

                def on_result(item, result):
                    writer.write(item[1].unit_id, result.table)
                    tally.add(item[1], result)
                    shown.advance(result.cells, tally.expected_cells(len(todo)),
                                  result.worker["device"] if result.worker else None)

                items = _work_items(client, todo, kind, done, spatial_dims, failures)
                _run_bounded(client, run_unit, items, window, on_result, failures)
            stage_seconds = {stage: round(seconds, 3) for stage, seconds in tally.stages.items()}
            stage_seconds["write"] = round(writer.seconds, 3)
        except (KeyboardInterrupt, Interrupted) as stop:  # parts written so far are whole: say so
            raise Interrupted(f"{len(part_files(dataset.directory))} of {counted(tally.counts['units'], 'work unit')} "
                              f"done, kept in {output}; run the same command again to resume") from stop
        finally:
            try:
                client.unregister_worker_plugin(PLUGIN_NAME)
            except Exception:  # a worker gone or a scheduler closing: its state goes with it
                LOGGER.debug("could not unregister %s", PLUGIN_NAME, exc_info=True)
            client.close()
            if cluster is not None:
                cluster.close()
        tally.record(dataset)
        dataset.finish({**tally.counts, "providers": sorted(tally.providers)}, failures=failures.to_json(),
                       stopped_early=failures.exceeded)
    summary = RunSummary(
        output=str(output), images=len(images), units=tally.counts["units"], units_resumed=len(done),
        cells=tally.counts["cells"], rows=tally.counts["rows"], seconds=time.time() - started,
        providers=tuple(sorted(tally.providers)), stage_seconds=stage_seconds, failures=tuple(failures.failures),
        stopped_early=failures.exceeded, missing_chunks=tally.missing_chunks,
        cells_without_centre=tally.counts.get("cells_without_centre"), empty_maps=tally.empty_maps,
    )
    LOGGER.info(
        "%s %d cells (%d rows) in %.1f s on %s", verb, summary.cells, summary.rows, summary.seconds,
        ", ".join(summary.providers) or "no onnxruntime session (nothing to do)",
    )
    return summary


def _work_items(client, images, kind, done, ndim, failures):
    """Arguments of :func:`gradcamo.scorer.engine.run_unit`, image by image, for the units not yet done.

    A whole image is one item (measured inside its task); a blocked image is measured
    first (pass 1, its blocks in parallel) and then yields one item per block with its
    objects, so the client holds one image's centroids at a time. When measuring fails,
    the image's blocks are left unscored and one failure, naming the block that failed,
    is recorded in ``failures``.
    """
    for image in images:
        if image.whole:
            block = image.blocks[0]
            if block.unit_id not in done:
                yield (kind, block)
            continue
        futures = client.map(measure_block, image.blocks, pure=False)
        try:
            measured = merge_blocks(client.gather(futures), ndim)
        except GradcamoError:
            raise
        except Exception as error:
            failed = [b for b, f in zip(image.blocks, futures) if f.status == "error"] or image.blocks
            failures.record(UnitFailure.of(failed[0], error, stage="measuring"))
            if failures.exceeded:
                return
            continue
        for block, objects in assign_objects([b for b in image.blocks if b.unit_id not in done], measured):
            yield (kind, block, objects)


class _PartWriter:
    """Writes part files on one background thread, so the result loop goes on submitting work."""

    def __init__(self, dataset):
        self._dataset = dataset
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcamo-writer")
        self._pending = collections.deque()
        self.seconds = 0.0
        """Seconds the writer thread spent writing parts (the ``write`` stage)."""

    def _write_part(self, unit_id, table):
        started = time.perf_counter()
        self._dataset.write_part(unit_id, table)
        self.seconds += time.perf_counter() - started

    def write(self, unit_id, table):
        self._pending.append(self._pool.submit(self._write_part, unit_id, table))
        while len(self._pending) > WRITES_IN_FLIGHT:
            self._pending.popleft().result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


__all__ = ["RunSummary", "check_run_options", "plan_run", "run_units", "score"]
