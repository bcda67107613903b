"""The causal checks of score datasets (``score --ablation``, ``--deletion-steps``), summarised per group.

Per group: the median and mean confidence lost when the model sees only the cell (its
context filled) and only the context (the cell filled), the share of rows whose predicted
class flips in each case, the median deletion and insertion AUCs, and a one-line verdict
from the two mean confidences lost (``prob_target`` minus that on the cell alone, i.e.
without the context; minus that on the context alone, i.e. without the cell):

- both below :data:`LOSS`: "neither the cell nor the context alone decides";
- the loss without the cell at least :data:`DOMINANCE` times the loss without the context:
  "the decision depends on the cell"; the reverse: "on the context"; otherwise "on both".

The mean confidence lost decides: it counts flips (a large loss each) and the confidence lost
without a flip alike. On the demo plates the flips alone did not separate the models in 2D (a
filled crop is unusual to any model), and the median missed the 40 % of the 3D shortcut model's
cells that flip without their context (more than half gain a little confidence).
"""

import pyarrow as pa

ABLATION_COLUMNS = ("prob_target_cell_only", "prob_target_context_only", "predicted_class_cell_only",
                    "predicted_class_context_only")
DELETION_COLUMNS = ("deletion_auc", "insertion_auc")
LOSS = 0.05
"""Mean confidence lost (in probability) from which removing a part counts as changing the decision."""
DOMINANCE = 2.0
"""How many times more confidence one removal must cost than the other for a one-sided verdict."""
CELL = "the decision depends on the cell"
CONTEXT = "the decision depends on the context"
BOTH = "the decision depends on both"
NEITHER = "neither the cell nor the context alone decides"
THRESHOLDS = (f"verdict: mean confidence lost without the context (cell only) vs without the cell (context "
              f"only); both < {LOSS:g}: neither; one >= {DOMINANCE:g}x the other: that part decides; else both")


def causal_aggregates(columns) -> list[str]:
    """SQL aggregates (``expression AS name``) of the causal columns among ``columns``; [] when there are none.

    ``columns`` are the names the rows have (NULL columns of datasets scored without the
    checks make NULL aggregates for their groups).
    """
    aggregates = []
    if all(name in columns for name in ABLATION_COLUMNS):
        for kind in ("cell_only", "context_only"):
            aggregates += [
                f"quantile_cont(prob_target - prob_target_{kind}, 0.5)::DOUBLE AS median_confidence_lost_{kind}",
                f"avg(prob_target - prob_target_{kind})::DOUBLE AS mean_confidence_lost_{kind}",
                f"avg((predicted_class_{kind} <> predicted_class)::DOUBLE)::DOUBLE AS share_flipped_{kind}",
            ]
    if all(name in columns for name in DELETION_COLUMNS):
        aggregates += [f"quantile_cont({name}, 0.5)::DOUBLE AS median_{name}" for name in DELETION_COLUMNS]
    return aggregates


def verdict(lost_cell_only, lost_context_only) -> str | None:
    """The one-line verdict from the mean confidences lost on the cell alone and on the context
    alone (None when either is unknown)."""
    if lost_cell_only is None or lost_context_only is None:
        return None
    if max(lost_cell_only, lost_context_only) < LOSS:
        return NEITHER
    if lost_context_only >= DOMINANCE * lost_cell_only:
        return CELL
    if lost_cell_only >= DOMINANCE * lost_context_only:
        return CONTEXT
    return BOTH


def with_verdicts(table) -> pa.Table:
    """``table`` (a summary) with a ``verdict`` column appended; unchanged without ``mean_confidence_lost_*``."""
    if "mean_confidence_lost_cell_only" not in table.column_names:
        return table
    verdicts = [verdict(c, x) for c, x in zip(table["mean_confidence_lost_cell_only"].to_pylist(),
                                              table["mean_confidence_lost_context_only"].to_pylist())]
    return table.append_column("verdict", pa.array(verdicts, pa.string()))


__all__ = ["BOTH", "CELL", "CONTEXT", "DOMINANCE", "LOSS", "NEITHER", "THRESHOLDS", "causal_aggregates",
           "verdict", "with_verdicts"]
