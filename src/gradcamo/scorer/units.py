"""Work units: one spatial block of one image. Run on Dask workers; arguments are plain data."""

import dataclasses

import numpy as np

from gradcamo.data.read import ImageRef
from gradcamo.errors import InputError
from gradcamo.scorer import head
from gradcamo.scorer.crops import crop_starts, cut_window, measure_objects
from gradcamo.scorer.regions import Layout, open_cached, read_region
from gradcamo.scorer.session import scoring_session


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """Everything a worker needs to score crops; small and picklable (no session inside)."""

    model_path: str
    model_sha256: str
    crop_shape: tuple
    convention: str
    device: str
    threads: object
    batch_size: int
    targets: tuple
    label_name: object

    @property
    def crop_spatial(self):
        return tuple(self.crop_shape[1:])


@dataclasses.dataclass(frozen=True)
class Unit:
    """One block of one image, and the objects whose crop centre lies inside it."""

    unit_id: str
    ref: ImageRef
    layout: Layout
    start: tuple
    stop: tuple
    ids: np.ndarray = None
    voxels: np.ndarray = None
    centroids: np.ndarray = None


def _slices(start, stop):
    return tuple(slice(a, b) for a, b in zip(start, stop))


def measure_unit(unit, label_name):
    """Pass 1: voxel counts and coordinate sums of the objects in the unit's block."""
    source = open_cached(unit.ref, label_name)
    layout = unit.layout
    labels = read_region(source.labels, layout.label_axes, layout.spatial_axes, _slices(unit.start, unit.stop))
    if labels.size and labels.min() < 0:
        raise InputError(
            f"{unit.ref.name}: labels/{source.label_name} holds negative ids (e.g. {int(labels.min())}); "
            "label ids must be 0 (background) or positive"
        )
    return measure_objects(labels, offset=unit.start)


def _batches(n_objects, targets, batch_size):
    """(object index, target) pairs in batches of at most ``batch_size``."""
    pairs = [(i, t) for i in range(n_objects) for t in targets]
    for begin in range(0, len(pairs), batch_size):
        yield pairs[begin : begin + batch_size]


def _softmax_at(logits, columns):
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return probabilities[np.arange(len(logits)), columns]


def score_unit(spec, unit):
    """Pass 2: cut each object's crop from one halo'd read of the block and score it.

    Returns
    -------
    dict of str to ndarray, or None
        Per-row columns (one row per object and target; image keys are added by the
        caller); None when no object's crop centre lies in the block.
    """
    source = open_cached(unit.ref, spec.label_name)
    layout = unit.layout
    crop = np.asarray(spec.crop_spatial)
    starts = crop_starts(unit.centroids, crop) if len(unit.ids) else np.zeros((0, len(crop)), np.int64)
    # Crops of objects centred in [start, stop) span [start - crop//2, stop - 1 - crop//2 + crop).
    region_start = np.maximum(np.asarray(unit.start) - crop // 2, 0)
    region_stop = np.minimum(np.asarray(unit.stop) - 1 - crop // 2 + crop, layout.spatial_shape)
    region = _slices(region_start, region_stop)
    image = read_region(
        source.image, layout.image_axes, layout.spatial_axes, region,
        channels=layout.channels, timepoint=layout.timepoint,
    )
    labels = read_region(source.labels, layout.label_axes, layout.spatial_axes, region)
    session = scoring_session(
        spec.model_path, spec.model_sha256, spec.crop_spatial, spec.convention, spec.device, spec.threads
    )
    rows = {key: [] for key in ("object", "target", "logits", "inside", "total", "pad")}
    for batch in _batches(len(unit.ids), spec.targets, spec.batch_size):
        crops, masks, pads = [], [], []
        for index, _ in batch:
            local = starts[index] - region_start
            window, pad = cut_window(image, local, crop)
            label_window, _ = cut_window(labels, local, crop)
            crops.append(window.astype(np.float32))
            masks.append((label_window == unit.ids[index]).astype(np.float32))
            pads.append(pad)
        targets = np.asarray([t for _, t in batch], dtype=np.int64)
        logits, inside, total = session.run(
            list(head.HEAD_OUTPUTS),
            {"image": np.stack(crops), "target": targets, head.MASK: np.stack(masks)},
        )
        rows["object"].append(np.asarray([i for i, _ in batch], dtype=np.int64))
        rows["target"].append(targets)
        rows["logits"].append(logits)
        rows["inside"].append(inside)
        rows["total"].append(total)
        rows["pad"].append(np.asarray(pads))
    return _columns(unit, rows) if rows["object"] else None


def _columns(unit, rows):
    objects = np.concatenate(rows["object"])
    logits = np.concatenate(rows["logits"])
    predicted = logits.argmax(axis=1)
    requested = np.concatenate(rows["target"])
    target = np.where(requested < 0, predicted, requested)
    inside = np.concatenate(rows["inside"]).astype(np.float64)
    total = np.concatenate(rows["total"]).astype(np.float64)
    empty = ~(total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(empty, np.nan, inside / np.where(empty, 1.0, total))
    pad = np.concatenate(rows["pad"]).astype(np.float32)
    centroids = unit.centroids[objects]
    return {
        "object_number": unit.ids[objects],
        "centroids": centroids,
        "object_voxels": unit.voxels[objects],
        "target_class": target.astype(np.int32),
        "predicted_class": predicted.astype(np.int32),
        "logit_target": logits[np.arange(len(logits)), target].astype(np.float32),
        "prob_target": _softmax_at(logits.astype(np.float64), target).astype(np.float32),
        "cam_inside": inside,
        "cam_total": total,
        "grad_camo": score,
        "cam_empty": empty,
        "edge_padded": pad > 0,
        "pad_fraction": pad,
    }
