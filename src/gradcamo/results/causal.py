"""The causal checks of score datasets (``score --ablation``, ``--deletion-steps``), summarised per group.

Per group: the median confidence lost when the model sees only the cell (its context
filled) and only the context (the cell filled), the share of rows whose predicted class
flips in each case, the median deletion and insertion AUCs, and a one-line verdict:

- fewer than :data:`FLIP_SHARE` of the rows flip either way: "neither the cell nor the
  context alone decides";
- the share flipping without the cell is at least :data:`DOMINANCE` times the share
  flipping without the context: "the decision depends on the cell"; the reverse: "on the
  context"; otherwise "on both".
"""

import pyarrow as pa

ABLATION_COLUMNS = ("prob_target_cell_only", "prob_target_context_only", "predicted_class_cell_only",
                    "predicted_class_context_only")
DELETION_COLUMNS = ("deletion_auc", "insertion_auc")
FLIP_SHARE = 0.1
"""Share of flipped predictions from which removing a part counts as changing the decision."""
DOMINANCE = 2.0
"""How many times more flips one removal must cause than the other for a one-sided verdict."""
CELL = "the decision depends on the cell"
CONTEXT = "the decision depends on the context"
BOTH = "the decision depends on both"
NEITHER = "neither the cell nor the context alone decides"
THRESHOLDS = (f"verdict: share of predictions flipped by removing the context (cell only) vs the cell (context "
              f"only); < {FLIP_SHARE:.0%} both: neither; >= {DOMINANCE:g}x the other: that part; else both")


def causal_aggregates(columns):
    """SQL aggregates (``expression AS name``) of the causal columns among ``columns``; [] when there are none.

    ``columns`` are the names the rows have (NULL columns of datasets scored without the
    checks make NULL aggregates for their groups).
    """
    aggregates = []
    if all(name in columns for name in ABLATION_COLUMNS):
        for kind in ("cell_only", "context_only"):
            aggregates += [
                f"quantile_cont(prob_target - prob_target_{kind}, 0.5)::DOUBLE AS median_confidence_lost_{kind}",
                f"avg((predicted_class_{kind} <> predicted_class)::DOUBLE)::DOUBLE AS share_flipped_{kind}",
            ]
    if all(name in columns for name in DELETION_COLUMNS):
        aggregates += [f"quantile_cont({name}, 0.5)::DOUBLE AS median_{name}" for name in DELETION_COLUMNS]
    return aggregates


def verdict(flipped_cell_only, flipped_context_only):
    """The one-line verdict from the shares of flipped predictions (None when either is unknown)."""
    if flipped_cell_only is None or flipped_context_only is None:
        return None
    if max(flipped_cell_only, flipped_context_only) < FLIP_SHARE:
        return NEITHER
    if flipped_context_only >= DOMINANCE * flipped_cell_only:
        return CELL
    if flipped_cell_only >= DOMINANCE * flipped_context_only:
        return CONTEXT
    return BOTH


def with_verdicts(table):
    """``table`` (a summary with ``share_flipped_*``) with a ``verdict`` column appended; unchanged without them."""
    if "share_flipped_cell_only" not in table.column_names:
        return table
    verdicts = [verdict(c, x) for c, x in zip(table["share_flipped_cell_only"].to_pylist(),
                                              table["share_flipped_context_only"].to_pylist())]
    return table.append_column("verdict", pa.array(verdicts, pa.string()))


__all__ = ["BOTH", "CELL", "CONTEXT", "DOMINANCE", "FLIP_SHARE", "NEITHER", "THRESHOLDS", "causal_aggregates",
           "verdict", "with_verdicts"]
