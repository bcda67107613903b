"""The report's causal-check section: the cell alone, the context alone, deletion and insertion, per dataset and target."""

import html

from gradcamo.results.causal import THRESHOLDS

CAUSAL_FIELDS = (
    ("median_confidence_lost_cell_only", "confidence lost: cell only", "{:.3f}"),
    ("median_confidence_lost_context_only", "confidence lost: context only", "{:.3f}"),
    ("mean_confidence_lost_cell_only", "mean lost: cell only", "{:.3f}"),
    ("mean_confidence_lost_context_only", "mean lost: context only", "{:.3f}"),
    ("share_flipped_cell_only", "flipped: cell only", "{:.1%}"),
    ("share_flipped_context_only", "flipped: context only", "{:.1%}"),
    ("median_deletion_auc", "deletion AUC", "{:.3f}"),
    ("median_insertion_auc", "insertion AUC", "{:.3f}"),
)
NOTE = (
    "Confidence lost (median and mean over the rows; the verdict uses the means): prob_target minus that on the "
    "cell alone (its context replaced by the crop's background median) and on the context alone (the cell "
    "replaced); a flip is a predicted class that changes. Deletion / insertion: "
    "prob_target as the most attended pixels are filled / restored (low deletion and high insertion AUC: the CAM "
    "points at what the decision rests on). A filled crop is out of distribution; compare models, not absolute "
    "values. See docs/score.md, Causal checks."
)


def causal_section(stats, value_cell) -> str:
    """HTML of the section, or "" when no dataset was scored with ``--ablation`` or ``--deletion-steps``.

    ``stats`` is the report's :class:`~gradcamo.visual.stats.ReportStats`; ``value_cell(field, value,
    pattern)`` renders one ``<td>``.
    """
    rows = [("all", row) for row in stats.headline] + [(row["target_name"], row) for row in stats.per_target]
    rows = [(target, row) for target, row in rows if any(row.get(f) is not None for f, _, _ in CAUSAL_FIELDS)]
    if not rows:
        return ""
    head = "".join(f"<th>{label}</th>" for _, label, _ in CAUSAL_FIELDS)
    body = "".join(
        f'<tr data-dataset="{html.escape(row["dataset"])}" data-target="{html.escape(str(target))}">'
        f'<td class="key">{html.escape(row["dataset"])}</td><td class="key">{html.escape(str(target))}</td>'
        + "".join(value_cell(field, row.get(field), pattern) for field, _, pattern in CAUSAL_FIELDS)
        + f'<td class="key verdict">{html.escape(row.get("verdict") or "–")}</td></tr>'
        for target, row in sorted(rows, key=lambda item: list(stats.datasets).index(item[1]["dataset"]))
    )
    return (f'<table class="causal"><tr><th class="key">dataset</th><th class="key">target</th>{head}'
            f'<th class="key">verdict</th></tr>{body}</table><p class="note">{html.escape(NOTE)} '
            f"{html.escape(THRESHOLDS)}.</p>")
