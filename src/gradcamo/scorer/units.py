"""Work units, run on Dask workers; their arguments are plain, picklable data.

A unit is a :class:`Block` of one image (the whole image when it fits the memory budget)
and the objects it scores: those whose crop centre lies in the block. For a whole image
the task measures the objects itself, from the same label read that its masks are cut
from (one task, one read of each chunk). A larger image is split into chunk-aligned
blocks scored in two passes: :func:`measure_block` sums each block's objects, the client
merges the sums of one image and hands every block its :class:`Objects`, then
:func:`score_unit` cuts the crops from the block plus a halo of half a crop.

:func:`score_unit` returns a :class:`UnitResult` whose table is finished: every column of
the score schema, built by :func:`unit_table` alone.
"""

import dataclasses
import time

import numpy as np

from gradcamo import contract
from gradcamo.cam import score_ratio, softmax
from gradcamo.data.chunks import chunks_read_as_fill
from gradcamo.data.read import ImageSource
from gradcamo.errors import InputError
from gradcamo.localisation import localisation_metrics
from gradcamo.scorer import causal, head
from gradcamo.scorer.causal import CausalSpec
from gradcamo.scorer.crops import CropCutter, Measurements, crop_starts, measure_objects, merge_measurements
from gradcamo.scorer.features import feature_columns, score_schema
from gradcamo.scorer.regions import Layout, read_region, region_index
from gradcamo.scorer.resources import describe_worker, worker_device_id
from gradcamo.scorer.session import CUDA, scoring_session
from gradcamo.scorer.sink import make_table
from gradcamo.scorer.worker import session_threads, worker_state

STAGES = ("read", "measure", "cut", "wait", "infer", "table")
"""Where a unit's seconds go; ``wait`` is time queued for the session while another task's batch runs."""


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """Everything a worker needs to score crops and label rows; small and picklable (no session inside)."""

    model_path: str
    model_sha256: str
    crop_shape: tuple
    convention: str
    device: str
    threads: object
    batch_size: int
    targets: tuple
    label_name: object
    class_names: tuple
    provenance: dict
    methods: tuple = ("gradcam",)
    centre_labels: object = None
    """Label image whose object k centres the crop of cell k (``--center-labels``), or None."""
    features: int = 0
    """Feature columns (the target layer's channels) written per row; 0 without ``--features``."""
    causal: CausalSpec | None = None  # the name, not causal.CausalSpec: the field shadows the module here
    """``--ablation``, ``--deletion-steps``, or None."""

    @property
    def crop_spatial(self) -> tuple[int, ...]:
        return tuple(self.crop_shape[1:])

    def session_arguments(self, threads, device_id=None) -> tuple:
        """Arguments of :func:`gradcamo.scorer.session.scoring_session` (and the worker's cache key),
        with ``threads`` onnxruntime threads (:func:`gradcamo.scorer.worker.session_threads`) on CUDA
        device ``device_id`` (:func:`gradcamo.scorer.resources.worker_device_id`)."""
        return (self.model_path, self.model_sha256, self.crop_spatial, self.convention, self.device, threads,
                self.methods, self.causal is not None and self.causal.deletion, device_id)


@dataclasses.dataclass(frozen=True)
class Block:
    """One spatial block ``[start, stop)`` of one image; ``whole`` when it is the entire image.

    ``source`` holds the opened level-0 arrays (zarr arrays pickle as store + metadata, so
    a worker reads chunks without opening and checking the image again).
    """

    unit_id: str
    source: ImageSource
    layout: Layout
    start: tuple
    stop: tuple

    @property
    def ref(self):
        return self.source.ref

    @property
    def whole(self) -> bool:
        return tuple(self.start) == (0,) * len(self.start) and tuple(self.stop) == tuple(self.layout.spatial_shape)


@dataclasses.dataclass(frozen=True)
class Objects:
    """The objects a block scores: label ids, voxel counts, centroids (whole-image coordinates).

    ``centres``: where each crop is centred, when another label image gives the centres
    (NaN rows: no centre object of that id); None: at the centroids. ``without_centre``:
    objects of the unit left out for want of a centre object (:meth:`centred`).
    """

    ids: np.ndarray
    voxels: np.ndarray
    centroids: np.ndarray
    centres: object = None
    without_centre: int = 0

    @classmethod
    def of(cls, measurements, chosen=slice(None), centres=None) -> "Objects":
        """The ``chosen`` objects of ``measurements``; with ``centres`` (Measurements of the centre label
        image), each centred on the centre object of its id."""
        objects = cls(measurements.ids, measurements.voxels, measurements.centroids)
        if centres is not None:
            matched = np.full(objects.centroids.shape, np.nan)
            found = np.isin(objects.ids, centres.ids)
            matched[found] = centres.centroids[np.searchsorted(centres.ids, objects.ids[found])]
            objects = dataclasses.replace(objects, centres=matched)
        return objects.subset(chosen)

    def subset(self, chosen):
        return Objects(self.ids[chosen], self.voxels[chosen], self.centroids[chosen],
                       None if self.centres is None else self.centres[chosen], self.without_centre)

    @property
    def crop_centres(self):
        """(n, ndim) float64: where the crops are centred (NaN rows: no centre object)."""
        return self.centroids if self.centres is None else self.centres

    def centred(self) -> "Objects":
        """The objects with a crop centre; those without are counted in ``without_centre``."""
        has = np.isfinite(self.crop_centres).all(axis=1)
        if has.all():
            return self
        return dataclasses.replace(self.subset(has), without_centre=self.without_centre + int((~has).sum()))

    def __len__(self):
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class UnitResult:
    """What a scored unit sends back: its finished rows, the provider used and seconds per stage;
    ``worker`` describes the worker that ran it (:func:`gradcamo.scorer.resources.describe_worker`)."""

    table: object
    cells: int
    provider: object
    seconds: dict
    without_centre: int = 0
    """Cells left out for want of a centre object (``--center-labels``)."""
    missing_chunks: tuple = ()
    """Image chunks read as the fill value (``--missing-chunks zeros``): ``store/array/key``."""
    worker: object = None


def _slices(start, stop):
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _read_labels(source, layout, start, stop, cache=None, centres=False):
    array, name = (source.centres, source.centre_name) if centres else (source.labels, source.label_name)
    labels = read_region(array, layout.label_axes, layout.spatial_axes, _slices(start, stop), cache=cache)
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError(
            f"{source.ref.name}: labels/{name} holds negative ids (e.g. {int(labels.min())}); "
            "label ids must be 0 (background) or positive"
        )
    return labels


def measure_block(block) -> Measurements | tuple[Measurements, Measurements]:
    """Pass 1 of a blocked image: voxel counts and coordinate sums of the objects in ``block``; with
    centre labels, a pair: those of the scored objects and those of the centre objects."""
    cache = worker_state().chunks
    cells = measure_objects(_read_labels(block.source, block.layout, block.start, block.stop, cache=cache),
                            offset=block.start)
    if block.source.centres is None:
        return cells
    centres = _read_labels(block.source, block.layout, block.start, block.stop, cache=cache, centres=True)
    return cells, measure_objects(centres, offset=block.start)


def merge_blocks(parts, ndim) -> Objects:
    """One image's :class:`Objects` from the :func:`measure_block` results of all its blocks."""
    if parts and isinstance(parts[0], tuple):
        cells, centres = zip(*parts)
        return Objects.of(merge_measurements(cells, ndim), centres=merge_measurements(centres, ndim))
    return Objects.of(merge_measurements(parts, ndim))


def assign_objects(blocks, objects) -> list[tuple[Block, Objects]]:
    """Pair each block with the objects whose crop centre it holds (one image's merged :class:`Objects`).

    An object without a centre object goes to the block holding its centroid, which counts it
    as left out.
    """
    centres = objects.crop_centres
    centres = np.floor(np.where(np.isfinite(centres), centres, objects.centroids) + 0.5).astype(np.int64)
    return [
        (block, objects.subset(np.all((centres >= block.start) & (centres < block.stop), axis=1)))
        for block in blocks
    ]


class StageClock:
    """Seconds per stage of one unit (:data:`STAGES`): each :meth:`lap` charges the time since the last."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._clock = time.perf_counter()

    def lap(self, stage) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._clock
        self._clock = now


def unit_region(block, objects, crop_spatial) -> tuple[np.ndarray, np.ndarray]:
    """The spatial region ``[start, stop)`` a unit reads: the whole image (``objects`` None), or
    the block and the halo its objects' crops reach into."""
    layout = block.layout
    crop = np.asarray(crop_spatial)
    if objects is None:
        return np.zeros(len(crop), np.int64), np.asarray(layout.spatial_shape)
    # Crops of objects centred in [start, stop) span [start - crop//2, stop - 1 - crop//2 + crop).
    return (np.maximum(np.asarray(block.start) - crop // 2, 0),
            np.minimum(np.asarray(block.stop) - 1 - crop // 2 + crop, layout.spatial_shape))


def missing_in_unit(block, objects, crop_spatial) -> tuple[str, ...]:
    """The image chunks a unit read as the fill value (``--missing-chunks zeros``), as
    :func:`gradcamo.data.chunks.chunks_read_as_fill` names them."""
    layout = block.layout
    start, stop = unit_region(block, objects, crop_spatial)
    index, _ = region_index(layout.image_axes, layout.spatial_axes, _slices(start, stop),
                            channels=layout.channels, timepoint=layout.timepoint)
    return tuple(chunks_read_as_fill(block.source.image, index))


def read_unit(block, objects, crop_spatial, clock) -> tuple:
    """Read a unit's region (the whole image, or the block and its halo), measure its objects if
    needed, and set up the cutting of their crops: the read, measure and cut steps of every unit.

    Parameters
    ----------
    block : Block
    objects : Objects, optional
        The block's objects from pass 1; None for a whole image, measured here from the
        same label read that the masks are cut from.
    crop_spatial : tuple of int
        The crop's spatial shape.
    clock : StageClock

    Returns
    -------
    objects : Objects
        Those with a crop centre (:meth:`Objects.centred`).
    cutter : CropCutter or None
        Cuts the objects' crops and masks; None when there are no objects.
    """
    source = block.source
    layout = block.layout
    crop = np.asarray(crop_spatial)
    region_start, region_stop = unit_region(block, objects, crop_spatial)
    cache = None if objects is None else worker_state().chunks  # a whole image reads every chunk once anyway
    labels = _read_labels(source, layout, region_start, region_stop, cache)
    image = read_region(
        source.image, layout.image_axes, layout.spatial_axes, _slices(region_start, region_stop),
        channels=layout.channels, timepoint=layout.timepoint, cache=cache,
    )
    clock.lap("read")
    if objects is None:
        centres = None
        if source.centres is not None:
            centres = measure_objects(_read_labels(source, layout, region_start, region_stop, centres=True))
        objects = Objects.of(measure_objects(labels), centres=centres)
        clock.lap("measure")
    objects = objects.centred()
    if not len(objects):
        return objects, None
    return objects, CropCutter(image, labels, crop_starts(objects.crop_centres, crop) - region_start, crop)


def padded_for(session, feed, batch_size) -> dict:
    """``feed`` padded to ``batch_size`` rows when ``session`` runs on CUDA (:func:`_padded_to`), else as it is."""
    return _padded_to(feed, batch_size) if session.get_providers()[0] == CUDA else feed


def score_unit(spec, block, objects=None) -> UnitResult:
    """Score the objects of one block: read, (measure,) cut, run the headed graph, build the rows.

    Parameters
    ----------
    spec : ScoreSpec
    block : Block
    objects : Objects, optional
        The block's objects from pass 1; None for a whole image, measured here from the
        same label read that the masks are cut from.

    Returns
    -------
    UnitResult
    """
    state = worker_state()
    clock = StageClock()
    given = objects
    objects, cutter = read_unit(block, objects, spec.crop_spatial, clock)
    missing = missing_in_unit(block, given, spec.crop_spatial)
    if not len(objects):
        return UnitResult(unit_table(spec, block, objects, None), 0, None, clock.seconds,
                          without_centre=objects.without_centre, missing_chunks=missing)

    threads = session_threads(spec.threads)
    session = state.session(scoring_session, *spec.session_arguments(threads, worker_device_id()))
    targets = np.asarray(spec.targets, dtype=np.int64)
    pair_object = np.repeat(np.arange(len(objects)), len(targets))
    pair_target = np.tile(targets, len(objects))
    per_method = len(spec.methods)  # the head's rows: (pair, method), pair-major
    outputs, checks = [], []
    extra = (head.CROP_CAM,) if spec.causal is not None and spec.causal.deletion else ()
    fetched = head.HEAD_OUTPUTS + head.METRIC_OUTPUTS + extra + ((head.FEATURES,) if spec.features else ())
    per_row = len(head.HEAD_OUTPUTS + head.METRIC_OUTPUTS + extra) - 1  # all but logits; then per sample
    if spec.causal is not None:
        forward_session = state.session(causal.forward_session, spec.model_path, spec.model_sha256, spec.device,
                                        threads, worker_device_id())
        forward = _forward_runner(state, forward_session, spec.batch_size)
    for begin in range(0, len(pair_object), spec.batch_size):
        chosen = pair_object[begin:begin + spec.batch_size]
        crops, masks = cutter.cut(chosen, objects.ids[chosen], mask_dtype=np.float32)
        feed = {"image": crops, "target": pair_target[begin:begin + spec.batch_size], head.MASK: masks}
        feed = padded_for(session, feed, spec.batch_size)
        clock.lap("cut")
        with state.batch_slot(session):
            clock.lap("wait")
            logits, *rows = session.run(list(fetched), feed)
            outputs.append([logits[:len(chosen)], *(row[:len(chosen) * per_method] for row in rows[:per_row]),
                            *(row[:len(chosen)] for row in rows[per_row:])])
            clock.lap("infer")
        if spec.causal is not None:
            checks.append(_causal_batch(spec, cutter, chosen, crops, masks, outputs[-1], forward,
                                        pair_target[begin:begin + spec.batch_size]))
            clock.lap("infer")
    columns = list(zip(*outputs))
    logits, inside, total, voxels, ranks, peaks = (np.concatenate(column) for column in columns[:6])
    row_pair = np.repeat(np.arange(len(pair_object)), per_method)
    scored = {"object": pair_object[row_pair], "target": pair_target[row_pair], "logits": logits[row_pair],
              "method": np.tile(np.arange(per_method), len(pair_object)), "inside": inside, "total": total,
              "mask_voxels": voxels, "rank_counts": ranks, "peak_values": peaks,
              "pad": cutter.pad_fractions[pair_object[row_pair]]}
    if spec.features:
        scored["features"] = np.concatenate(columns[-1])[row_pair]
    if checks:
        scored["causal"] = {name: _concatenated([c[name] for c in checks]) for name in checks[0]}
    table = unit_table(spec, block, objects, scored, missing_chunks=bool(missing))
    clock.lap("table")
    provider = session.get_providers()[0]
    return UnitResult(table, len(objects), provider, clock.seconds, without_centre=objects.without_centre,
                      missing_chunks=missing, worker=describe_worker(provider, threads))


def _forward_runner(state, session, batch_size):
    """``images -> logits`` by the forward-only ``session``, ``batch_size`` crops per run (padded on CUDA)."""
    def forward(images):
        parts = []
        for begin in range(0, len(images), batch_size):
            chunk = images[begin:begin + batch_size]
            with state.batch_slot(session):
                (logits,) = session.run([contract.LOGITS], padded_for(session, {contract.IMAGE: chunk}, batch_size))
            parts.append(logits[:len(chunk)])
        return np.concatenate(parts)
    return forward


def _causal_batch(spec, cutter, chosen, crops, masks, batch_outputs, forward, requested):
    """The causal columns (:func:`gradcamo.scorer.causal.causal_columns`) of one batch's rows."""
    logits = batch_outputs[0]
    background, in_image = cutter.surroundings(chosen)
    cams = batch_outputs[6][:, 0] if spec.causal.deletion else None
    return causal.causal_columns(
        spec.causal, forward, crops=crops, masks=masks.astype(bool), background=background, in_image=in_image,
        targets=np.where(requested < 0, logits.argmax(axis=1), requested), logits=logits, cams=cams,
        methods=len(spec.methods), chunk=max(1, spec.batch_size // (2 * (spec.causal.deletion_steps or 1) - 1)),
    )


def _concatenated(parts):
    return [v for part in parts for v in part] if isinstance(parts[0], list) else np.concatenate(parts)


def _padded_to(feed, batch_size):
    """``feed`` with its last sample repeated up to ``batch_size`` rows.

    On CUDA every new batch shape costs onnxruntime a new plan (a short last batch per unit
    made the tiny model 10-50x slower on an H100); each sample's outputs depend on that
    sample alone, so the repeats are computed and dropped.
    """
    missing = batch_size - len(feed["image"])
    return {name: np.concatenate([value, np.repeat(value[-1:], missing, axis=0)]) if missing else value
            for name, value in feed.items()}


def key_columns(block, objects, index) -> dict:
    """The key columns (:data:`gradcamo.scorer.sink.KEY_FIELDS`) of the rows of ``objects[index]`` of ``block``."""
    n = len(index)
    centroids = objects.centroids[index]
    spatial = block.layout.spatial_axes
    ref = block.ref
    return {
        "Metadata_Plate": [ref.plate] * n,
        "Metadata_Well": [ref.well] * n,
        "Metadata_Site": np.full(n, ref.site, dtype=np.int32),
        "Metadata_Image": [ref.name] * n,
        "Metadata_ObjectNumber": objects.ids[index],
        "centroid_z": centroids[:, 0] if "z" in spatial else [None] * n,
        "centroid_y": centroids[:, spatial.index("y")],
        "centroid_x": centroids[:, spatial.index("x")],
        "object_voxels": objects.voxels[index],
    }


def unit_table(spec, block, objects, scored, *, missing_chunks=False):
    """The rows of one unit as an Arrow table with the score schema (0 rows when ``scored`` is None).

    ``missing_chunks`` flags every row: the unit read image chunks as the fill value.

    ``scored`` holds, per (object, target, method) row: ``object`` (index into ``objects``),
    ``target`` (requested class, -1 = predicted), ``logits``, ``inside``, ``total`` (the
    head's outputs: ``method`` indexes ``spec.methods``; ``mask_voxels``, ``rank_counts``,
    ``peak_values`` feed the localisation metrics), ``pad`` (pad fraction of the crop) and, with
    ``spec.features``, ``features`` (the row's pooled activations, ``(rows, C)``).
    """
    schema = causal.causal_schema(score_schema(spec.features), spec.causal)
    if scored is None:
        return make_table({}, provenance=spec.provenance, schema=schema)
    index = scored["object"]
    n = len(index)
    logits = scored["logits"]
    predicted = logits.argmax(axis=1)
    target = np.where(scored["target"] < 0, predicted, scored["target"])
    inside = scored["inside"].astype(np.float64)
    total = scored["total"].astype(np.float64)
    value, empty = score_ratio(inside, total)
    metrics = localisation_metrics(value, empty, scored["mask_voxels"], int(np.prod(spec.crop_spatial)),
                                   scored["rank_counts"], scored["peak_values"])
    pad = scored["pad"].astype(np.float32)
    return make_table({
        **key_columns(block, objects, index),
        "target_class": target.astype(np.int32),
        "predicted_class": predicted.astype(np.int32),
        "target_name": [spec.class_names[t] for t in target],
        "method": [spec.methods[m] for m in scored["method"]],
        "logit_target": logits[np.arange(n), target].astype(np.float32),
        "prob_target": softmax(logits)[np.arange(n), target].astype(np.float32),
        "cam_inside": inside,
        "cam_total": total,
        "grad_camo": value,
        "cam_empty": empty,
        "edge_padded": pad > 0,
        "pad_fraction": pad,
        "mask_fraction": metrics.mask_fraction,
        "enrichment": metrics.enrichment,
        "rank_accuracy": metrics.rank_accuracy,
        "pointing_hit": np.ma.MaskedArray(metrics.pointing_hit, mask=~metrics.pointing_known),
        "missing_chunks": np.full(n, missing_chunks),
        **(feature_columns(scored["features"]) if spec.features else {}),
        **scored.get("causal", {}),
    }, provenance=spec.provenance, schema=schema)


__all__ = ["Block", "Measurements", "Objects", "ScoreSpec", "StageClock", "UnitResult", "assign_objects",
           "key_columns", "measure_block", "merge_blocks", "missing_in_unit", "padded_for", "read_unit",
           "score_unit", "unit_region", "unit_table"]
