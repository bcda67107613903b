"""Causal checks of each score row: the model on the cell alone, on its context alone, and
deletion / insertion curves along the row's CAM (``score --ablation``, ``--deletion-steps K``).

The conventions (docs/score.md, "Causal checks"), for one crop ``x`` with mask ``M``:

- **fill**: per channel, the median (numpy's: the mean of the two middle values for an even
  count) of the crop's in-image pixels whose label is 0 (background); 0 where the crop has
  none. Padding (crop pixels outside the image) stays 0 in every modified crop.
- **cell only**: in-image pixels outside ``M`` replaced by the fill; **context only**: the
  pixels of ``M`` replaced by the fill.
- **deletion / insertion**: the crop's ``P`` pixels (voxels; all channels together) ranked by
  the row's crop-resolution CAM (its method and convention), descending, ties by ascending
  flat index; at step ``i = 0..K`` the first ``n_i = floor(i * P / K + 1/2)`` pixels are
  replaced by the fill (deletion), or only they are kept and the rest filled (insertion).
  ``prob_target`` at the K + 1 steps; AUCs by the trapezoid rule over the fractions ``i / K``.

The modified crops run through the forward-only part of the gradient graph
(:func:`forward_graph`, extracted once per worker), in the same unit and batches as the
scores, so nothing is read twice. Deletion's step 0 and insertion's step K are the unmodified
crop (the scoring graph's own logits); deletion's step K and insertion's step 0 are the same
fully filled crop, run once: ``2 + 2K - 1`` extra forwards per row at most.
"""

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
from onnx.utils import Extractor

from gradcamo.cam import softmax
from gradcamo.contract import IMAGE, LOGITS
from gradcamo.errors import InputError
from gradcamo.scorer.session import create_session
from gradcamo.options import check_whole_number

ABLATIONS = ("cell_only", "context_only")
DELETION_CURVE = "deletion_curve"
INSERTION_CURVE = "insertion_curve"


@dataclasses.dataclass(frozen=True)
class CausalSpec:
    """Which causal checks a scoring run adds (picklable; part of :class:`gradcamo.scorer.score_pass.ScorePass`)."""

    ablation: bool = False
    deletion_steps: object = None
    """K >= 1, or None: no deletion / insertion."""
    curves: bool = False
    """Also write the K + 1 probabilities of each curve as list columns."""

    @property
    def deletion(self) -> bool:
        return self.deletion_steps is not None

    def parameters(self) -> dict:
        """What the dataset's parameters record (a resumed run must repeat them)."""
        return {"ablation": self.ablation, "deletion_steps": self.deletion_steps, "deletion_curves": self.curves}

    def fields(self) -> list[tuple[str, pa.DataType]]:
        """The columns these checks add to the score schema, in order."""
        fields = []
        if self.ablation:
            for kind in ABLATIONS:
                fields += [(f"prob_target_{kind}", pa.float32()), (f"logit_target_{kind}", pa.float32()),
                           (f"predicted_class_{kind}", pa.int32())]
        if self.deletion:
            fields += [("deletion_auc", pa.float64()), ("insertion_auc", pa.float64())]
        if self.curves:
            fields += [(DELETION_CURVE, pa.list_(pa.float32())), (INSERTION_CURVE, pa.list_(pa.float32()))]
        return fields


def check_causal_options(*, ablation=False, deletion_steps=None, deletion_curves=False) -> "CausalSpec | None":
    """A :class:`CausalSpec`, or None when no check is asked for.

    Raises
    ------
    InputError
        ``deletion_steps`` not a whole number >= 1; ``deletion_curves`` without ``deletion_steps``.
    """
    check_whole_number(deletion_steps, "deletion_steps", optional=True,
                       meaning="the steps from the full to the fully filled crop")
    if deletion_curves and deletion_steps is None:
        raise InputError("deletion_curves: needs deletion_steps (the curves have K + 1 points)",
                         argument="deletion_curves")
    if not ablation and deletion_steps is None:
        return None
    return CausalSpec(bool(ablation), deletion_steps, bool(deletion_curves))


def causal_schema(schema, causal) -> pa.Schema:
    """``schema`` with the columns of ``causal`` (a :class:`CausalSpec` or None) appended."""
    if causal is None:
        return schema
    for name, kind in causal.fields():
        schema = schema.append(pa.field(name, kind))
    return schema


def forward_graph(model) -> onnx.ModelProto:
    """The logits part of a gradcamo gradient graph: input ``image``, output ``logits``.

    Raises
    ------
    ValueError
        The logits depend on more than the image (the graph breaks the gradcamo contract).
    """
    forward = Extractor(model).extract_model([IMAGE], [LOGITS])
    inputs = [i.name for i in forward.graph.input]
    if inputs != [IMAGE]:
        raise ValueError(f"{LOGITS}: depends on inputs {inputs}, expected only {IMAGE!r}")
    return forward


def forward_session(model_path, model_sha256, *, device, threads, device_id=None) -> ort.InferenceSession:
    """A new forward-only session of a model file, kept for the run by the engine
    (:meth:`gradcamo.scorer.engine.Inference.session`; ``model_sha256`` is part of its key only)."""
    return create_session(forward_graph(onnx.load(model_path)).SerializeToString(), device=device, threads=threads,
                          device_id=device_id)


def background_fill(crops, background) -> np.ndarray:
    """Per crop and channel: the median of the background pixels, 0 where the crop has none.

    Parameters
    ----------
    crops : (n, C, *S) float32 ndarray
    background : (n, *S) bool ndarray
        In-image pixels whose label is 0.

    Returns
    -------
    (n, C) float32 ndarray
    """
    fill = np.zeros(crops.shape[:2], np.float32)
    for i, (crop, where) in enumerate(zip(crops, background)):
        if where.any():
            fill[i] = np.median(crop[:, where], axis=1)
    return fill


def filled(crops, replace, fill) -> np.ndarray:
    """``crops`` with the pixels where ``replace`` ((n, *S) bool) set to ``fill`` ((n, C)), all channels."""
    view = fill.reshape(fill.shape + (1,) * (crops.ndim - 2))
    return np.where(replace[:, None], view, crops).astype(np.float32, copy=False)


def ablated(crops, masks, in_image, fill) -> tuple[np.ndarray, np.ndarray]:
    """The cell-only crops (in-image pixels outside ``masks`` filled) and the context-only crops (``masks`` filled)."""
    return filled(crops, in_image & ~masks, fill), filled(crops, masks, fill)


def ablated_crops(crops, masks, background, in_image) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ablated` with each crop's :func:`background_fill`: what ``--ablation`` feeds the model.

    Parameters
    ----------
    crops : (n, C, *S) float32 ndarray
    masks, background, in_image : (n, *S) bool ndarrays
        The cell's mask; in-image pixels with label 0; in-image pixels.

    Returns
    -------
    cell_only, context_only : (n, C, *S) float32 ndarrays
    """
    return ablated(crops, masks, in_image, background_fill(crops, background))


def step_counts(steps, voxels) -> np.ndarray:
    """(K + 1,) int64: ``floor(i * P / K + 1/2)`` pixels at step ``i``, in exact integer arithmetic."""
    i = np.arange(steps + 1, dtype=np.int64)
    return (2 * i * voxels + steps) // (2 * steps)


def deletion_ranks(cams) -> np.ndarray:
    """(n, P) int64: each pixel's place in its row's order (CAM descending, ties by ascending flat index)."""
    flat = np.asarray(cams).reshape(len(cams), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks


def trapezoid_auc(curves) -> np.ndarray:
    """(rows,) float64: the trapezoid rule over ``K + 1`` equally spaced fractions ``i / K`` of [0, 1]."""
    curves = np.asarray(curves, dtype=np.float64)
    steps = curves.shape[1] - 1
    return (curves.sum(axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / steps


def _target_values(logits, targets):
    rows = np.arange(len(targets))
    return softmax(logits)[rows, targets], logits[rows, targets], logits.argmax(axis=1)


def _ablation_columns(forward, crops, masks, in_image, fill, targets):
    """Per crop: the target's probability and logit, and the argmax class, on the cell and the context alone."""
    n = len(crops)
    logits = forward(np.concatenate(ablated(crops, masks, in_image, fill)))
    columns = {}
    for k, kind in enumerate(ABLATIONS):
        prob, logit, predicted = _target_values(logits[k * n:(k + 1) * n], targets)
        columns[f"prob_target_{kind}"] = prob.astype(np.float32)
        columns[f"logit_target_{kind}"] = logit.astype(np.float32)
        columns[f"predicted_class_{kind}"] = predicted.astype(np.int32)
    return columns


def _curves(forward, steps, crops, in_image, fill, cams, pair, targets, full_prob, chunk):
    """(rows, K + 1) deletion and insertion curves of each row (``pair``: its crop; ``targets``: its class)."""
    rows = len(pair)
    spatial = crops.shape[2:]
    counts = step_counts(steps, int(np.prod(spatial)))
    ranks = deletion_ranks(cams)
    modified = 2 * steps - 1  # deletion 1..K, insertion 1..K-1 (insertion 0 is deletion K)
    probs = np.empty((rows, modified))
    for begin in range(0, rows, chunk):
        r = np.arange(begin, min(begin + chunk, rows))
        rank = ranks[r][:, None, :]
        replace = np.concatenate([rank < counts[None, 1:, None], rank >= counts[None, 1:steps, None]], axis=1)
        replace = replace.reshape(len(r), modified, *spatial) & in_image[pair[r]][:, None]
        images = filled(np.repeat(crops[pair[r]], modified, axis=0), replace.reshape(-1, *spatial),
                        np.repeat(fill[pair[r]], modified, axis=0))
        prob, _, _ = _target_values(forward(images), np.repeat(targets[r], modified))
        probs[r] = prob.reshape(len(r), modified)
    deletion = np.concatenate([full_prob[:, None], probs[:, :steps]], axis=1)
    insertion = np.concatenate([probs[:, steps - 1:steps], probs[:, steps:], full_prob[:, None]], axis=1)
    return deletion, insertion


def causal_columns(causal, forward, *, crops, masks, background, in_image, targets, logits, cams, methods,
                   chunk) -> dict[str, Any]:
    """The causal columns of one batch's rows ((crop, method) pairs, crop-major).

    Parameters
    ----------
    causal : CausalSpec
    forward : callable
        ``(m, C, *S) float32 -> (m, classes) logits`` by the forward-only graph.
    crops : (n, C, *S) float32 ndarray
        The batch's crops as scored.
    masks, background, in_image : (n, *S) bool ndarrays
        The cell's mask; in-image pixels with label 0; in-image pixels.
    targets : (n,) int ndarray
        Each crop's target class (resolved: no -1).
    logits : (n, classes) ndarray
        The scoring graph's logits of the unmodified crops.
    cams : (n * methods, *S) ndarray or None
        The rows' crop-resolution CAMs (needed for deletion).
    methods : int
        Rows per crop.
    chunk : int
        Rows whose deletion crops are built at once (memory: ``chunk * (2K - 1)`` crops).

    Returns
    -------
    dict of str to ndarray
        One entry per row for each column of :meth:`CausalSpec.fields`.
    """
    fill = background_fill(crops, background)
    columns: dict[str, Any] = {}
    if causal.ablation:
        per_crop = _ablation_columns(forward, crops, masks, in_image, fill, targets)
        columns.update({name: np.repeat(values, methods) for name, values in per_crop.items()})
    if causal.deletion:
        pair = np.repeat(np.arange(len(crops)), methods)
        row_targets = targets[pair]
        full_prob, _, _ = _target_values(logits[pair], row_targets)
        deletion, insertion = _curves(forward, causal.deletion_steps, crops, in_image, fill, cams, pair,
                                      row_targets, full_prob, chunk)
        columns["deletion_auc"] = trapezoid_auc(deletion)
        columns["insertion_auc"] = trapezoid_auc(insertion)
        if causal.curves:
            columns[DELETION_CURVE] = list(deletion.astype(np.float32))
            columns[INSERTION_CURVE] = list(insertion.astype(np.float32))
    return columns


__all__ = ["CausalSpec", "ablated_crops", "background_fill", "causal_columns", "causal_schema", "check_causal_options",
           "deletion_ranks", "forward_graph", "forward_session", "step_counts", "trapezoid_auc"]
