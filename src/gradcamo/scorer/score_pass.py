"""The Grad-CAMO pass (``score``) as a kind of the cell-stream engine (:mod:`gradcamo.scorer.engine`).

Each cell's crop is fed once per requested target through the headed graph
(:mod:`gradcamo.scorer.head`), which returns per (crop, method) row only the sums and counts
the score and the localisation metrics need, and per crop the logits (and, with
``--features``, the pooled activations). With causal checks (:mod:`gradcamo.scorer.causal`)
the modified crops of the same batch run through the forward-only part of the graph.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from gradcamo import contract
from gradcamo.cam import score_ratio, softmax
from gradcamo.localisation import localisation_metrics
from gradcamo.scorer import causal
from gradcamo.scorer.causal import CausalSpec
from gradcamo.scorer.engine import CellBatch, Inference, Rows
from gradcamo.scorer.features import feature_columns, score_schema
from gradcamo.scorer.head import MASK, HeadOutputs
from gradcamo.scorer.session import scoring_session


@dataclasses.dataclass(frozen=True)
class ScoredBatch:
    """What one batch gives the score rows: its crops' cells and requested targets, the head's
    outputs and the causal columns of its rows."""

    cells: np.ndarray
    requested: np.ndarray
    """(m,) int64: each crop's requested class, -1 for the predicted one."""
    head: HeadOutputs
    checks: dict


@dataclasses.dataclass(frozen=True)
class ScorePass:
    """The ``score`` pass: everything a worker needs, small and picklable (no session inside)."""

    model_path: str
    model_sha256: str
    crop_shape: tuple[int, ...]
    convention: str
    device: str
    threads: int | None
    batch_size: int
    targets: tuple[int, ...]
    """Requested classes, -1 for the predicted one; each cell is fed once per target."""
    class_names: tuple[str, ...]
    provenance: dict
    methods: tuple[str, ...] = ("gradcam",)
    features: int = 0
    """Feature columns (the target layer's channels) written per row; 0 without ``--features``."""
    causal: CausalSpec | None = None  # the name, not causal.CausalSpec: the field shadows the module here
    """``--ablation``, ``--deletion-steps``, or None."""
    mask_dtype = np.float32  # the head's mask input

    @property
    def schema(self) -> pa.Schema:
        return causal.causal_schema(score_schema(self.features), self.causal)

    @property
    def inputs_per_cell(self) -> int:
        return len(self.targets)

    @property
    def _deletion(self) -> bool:
        return self.causal is not None and self.causal.deletion

    def run_batch(self, batch: CellBatch, inference: Inference) -> ScoredBatch:
        """The headed graph on the batch's crops (and the causal checks' forward passes)."""
        session = inference.session(scoring_session, self.model_path, self.model_sha256, self.crop_shape[1:],
                                    self.convention, self.methods, self._deletion)
        requested = np.asarray(self.targets, dtype=np.int64)[batch.slots]
        fetched = {"crop_cam": self._deletion, "features": bool(self.features)}
        values = inference.run(session, HeadOutputs.names(**fetched),
                               {contract.IMAGE: batch.crops, contract.TARGET: requested, MASK: batch.masks})
        outputs = HeadOutputs.of(values, **fetched)
        checks = {} if self.causal is None else self._causal_columns(batch, outputs, requested, inference)
        return ScoredBatch(batch.cells, requested, outputs, checks)

    def _causal_columns(self, batch, outputs, requested, inference):
        """The causal columns (:func:`gradcamo.scorer.causal.causal_columns`) of one batch's rows."""
        forward = inference.session(causal.forward_session, self.model_path, self.model_sha256)
        background, in_image = batch.surroundings()
        return causal.causal_columns(
            self.causal, lambda images: inference.run(forward, [contract.LOGITS], {contract.IMAGE: images})[0],
            crops=batch.crops, masks=batch.masks.astype(bool), background=background, in_image=in_image,
            targets=np.where(requested < 0, outputs.logits.argmax(axis=1), requested), logits=outputs.logits,
            cams=outputs.crop_cam[:, 0] if outputs.crop_cam is not None else None, methods=len(self.methods),
            chunk=max(1, self.batch_size // (2 * (self.causal.deletion_steps or 1) - 1)),
        )

    def rows(self, batches: Sequence[ScoredBatch]) -> Rows:
        """One row per (crop, method), crop-major: the score, the localisation metrics, the class and
        probability of the target, and the features and causal columns when asked for."""
        head = HeadOutputs.concatenate([batch.head for batch in batches])
        crop = np.repeat(np.arange(len(head.logits)), len(self.methods))  # each row's crop
        requested = np.concatenate([batch.requested for batch in batches])[crop]
        logits = head.logits[crop]
        n = len(crop)
        predicted = logits.argmax(axis=1)
        target = np.where(requested < 0, predicted, requested)
        inside = head.cam_inside.astype(np.float64)
        total = head.cam_total.astype(np.float64)
        value, empty = score_ratio(inside, total)
        metrics = localisation_metrics(value, empty, head.mask_voxels, int(np.prod(self.crop_shape[1:])),
                                       head.rank_counts, head.peak_values)
        columns = {
            "target_class": target.astype(np.int32),
            "predicted_class": predicted.astype(np.int32),
            "target_name": [self.class_names[t] for t in target],
            "method": [self.methods[m] for m in np.tile(np.arange(len(self.methods)), len(head.logits))],
            "logit_target": logits[np.arange(n), target].astype(np.float32),
            "prob_target": softmax(logits)[np.arange(n), target].astype(np.float32),
            "cam_inside": inside,
            "cam_total": total,
            "grad_camo": value,
            "cam_empty": empty,
            "mask_fraction": metrics.mask_fraction,
            "enrichment": metrics.enrichment,
            "rank_accuracy": metrics.rank_accuracy,
            "pointing_hit": np.ma.MaskedArray(metrics.pointing_hit, mask=~metrics.pointing_known),
            **(feature_columns(head.features[crop]) if head.features is not None else {}),
        }
        if self.causal is not None:
            columns.update({name: _joined([batch.checks[name] for batch in batches]) for name in batches[0].checks})
        return Rows(np.concatenate([batch.cells for batch in batches])[crop], columns)


def _joined(parts):
    """Consecutive batches' values of one column: arrays, or lists (the curves)."""
    return [value for part in parts for value in part] if isinstance(parts[0], list) else np.concatenate(parts)


__all__ = ["ScorePass", "ScoredBatch"]
