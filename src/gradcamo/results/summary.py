"""Per-group summary of score datasets: counts, NaNs, the distribution of grad_camo and the localisation metrics."""

import duckdb
import pyarrow as pa

from gradcamo.errors import InputError, first_line
from gradcamo.results.causal import causal_aggregates, with_verdicts
from gradcamo.results.datasets import DATASET_COLUMN, VIEW, connect, quote_identifier, resolve_datasets
from gradcamo.results.query import to_arrow

DEFAULT_BY = ("dataset", "Metadata_Plate", "Metadata_Well", "target_name", "method")
SUMMARY_COLUMNS = (
    "cells",
    "nan_scores",
    "empty_maps",
    "mean_grad_camo",
    "median_grad_camo",
    "share_above_half",
    "share_edge_padded",
    "median_enrichment",
    "mean_rank_accuracy",
    "pointing_hit_rate",
    "predicted_class_counts",
)
METRIC_COLUMNS = {"method": "VARCHAR", "enrichment": "DOUBLE", "rank_accuracy": "DOUBLE", "pointing_hit": "BOOLEAN"}
"""Columns added by issue #16 and their type; datasets written before it have gradcam rows and no metrics."""


def summarize(paths, by=DEFAULT_BY, *, method=None, warn=True) -> pa.Table:
    """One row per group: how many cells, how many NaN scores, and how the scores spread.

    Parameters
    ----------
    paths : str or path-like, or a sequence of them
        Score dataset directories.
    by : sequence of str, or str
        Grouping columns: ``dataset`` (the dataset's name) or any column of the scores
        that is not floating point (``Metadata_*``, ``target_class``, ``target_name``,
        ``predicted_class``, ``cam_empty``, ...). A string is split at commas. Empty:
        one row for everything.
    method : str, optional
        Summarise only this CAM method's rows.
    warn : bool
        Warn about incomplete datasets; False where the calling command has resolved them already.

    Returns
    -------
    pyarrow.Table
        The ``by`` columns, then ``cells`` (rows, i.e. cell x target), ``nan_scores``
        (grad_camo NaN or null), ``empty_maps`` (rows whose map is empty, ``cam_empty``), ``mean_grad_camo`` and ``median_grad_camo`` (over
        non-NaN scores; null when there is none), ``share_above_half`` (share of the
        non-NaN scores > 0.5; null when there is none), ``share_edge_padded`` (over all
        rows), ``median_enrichment``, ``mean_rank_accuracy`` (over non-NaN values) and
        ``pointing_hit_rate`` (share of true among the non-null ``pointing_hit``), all null
        for datasets written without them, and ``predicted_class_counts`` (``"0:12 1:3"``,
        classes ascending); for datasets scored with ``--ablation`` / ``--deletion-steps``, then
        ``median_confidence_lost_cell_only``, ``mean_confidence_lost_cell_only``,
        ``share_flipped_cell_only``, the same ``_context_only``,
        ``median_deletion_auc``, ``median_insertion_auc`` and ``verdict``
        (:mod:`gradcamo.results.causal`). Sorted by the ``by`` columns, nulls last. No rows for datasets
        without rows. ``method`` is ``gradcam`` for rows written without a method column.

    Notes
    -----
    The median is the interpolated one (``quantile_cont(0.5)``, as ``numpy.median``).

    Raises
    ------
    InputError
        A path is not a score dataset, ``by`` names an unknown, floating-point or
        repeated column, or a dataset holds no rows of ``method``.
    """
    by = _split_by(by)
    con = connect(resolve_datasets(paths, warn=warn), method=method)
    try:
        schema = {row[0]: row[1] for row in con.execute(f"DESCRIBE {VIEW}").fetchall()}
        missing = {name: kind for name, kind in METRIC_COLUMNS.items() if name not in schema}
        _check_by(by, {**schema, **missing})
        return with_verdicts(to_arrow(con.sql(_summary_sql(by, missing, causal_aggregates(schema)))))
    except duckdb.Error as error:
        raise InputError(f"summary: {first_line(error)}") from None
    finally:
        con.close()


def _split_by(by):
    if by is None:
        return []
    if isinstance(by, str):
        by = [by]
    keys = [key.strip() for item in by for key in str(item).split(",") if key.strip()]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InputError(f"--by: {', '.join(repeated)} given more than once; name each column once")
    return keys


_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL", "DECIMAL")


def _check_by(by, schema):
    valid = [DATASET_COLUMN] + [
        name for name, kind in schema.items() if name != DATASET_COLUMN and not kind.upper().startswith(_FLOAT_TYPES)
    ]
    for key in by:
        if key not in valid:
            what = "is a measurement, not a grouping column" if key in schema else "is not a column"
            raise InputError(f"--by {key}: {what}; expected some of {', '.join(valid)}")


def _rows_sql(missing):
    """The view with the metric columns it lacks: typed NULLs, and ``gradcam`` as the method."""
    added = [f"NULL::{kind} AS {name}" for name, kind in missing.items() if name != "method"]
    method = "'gradcam'" if "method" in missing else "coalesce(method::VARCHAR, 'gradcam')"
    exclude = "" if "method" in missing else " EXCLUDE (method)"
    return f"SELECT *{exclude}, {', '.join([f'{method} AS method', *added])} FROM {VIEW}"


def _nan_to_null(column):
    return f"CASE WHEN isnan({column}) THEN NULL ELSE {column} END"


def _summary_sql(by, missing, extra=()):
    keys = ", ".join(quote_identifier(key) for key in by)
    group = f"GROUP BY {keys}" if by else ""
    select_keys = f"{keys}, " if by else ""
    order = "ORDER BY " + ", ".join(f"s.{quote_identifier(key)} NULLS LAST" for key in by) if by else ""
    join = " AND ".join(f"s.{quote_identifier(k)} IS NOT DISTINCT FROM p.{quote_identifier(k)}" for k in by) or "TRUE"
    out_keys = ", ".join(f"s.{quote_identifier(key)}" for key in by)
    # NaN scores become NULL once and every aggregate skips NULLs alike. This relies on
    # isnan() seeing the NaNs: DuckDB 2.0 folds it to false over Parquet columns whose
    # min/max statistics exist, so the sink writes none for floats (sink.statistics_columns).
    return f"""
WITH valid AS (
    SELECT *, {_nan_to_null("grad_camo")} AS _score, {_nan_to_null("enrichment")} AS _enrichment,
        {_nan_to_null("rank_accuracy")} AS _rank_accuracy
    FROM ({_rows_sql(missing)})
),
stats AS (
    SELECT {select_keys}
        count(*)::BIGINT AS cells,
        (count(*) - count(_score))::BIGINT AS nan_scores,
        count_if(cam_empty)::BIGINT AS empty_maps,
        avg(_score)::DOUBLE AS mean_grad_camo,
        quantile_cont(_score, 0.5)::DOUBLE AS median_grad_camo,
        avg((_score > 0.5)::DOUBLE)::DOUBLE AS share_above_half,
        avg(edge_padded::DOUBLE)::DOUBLE AS share_edge_padded,
        quantile_cont(_enrichment, 0.5)::DOUBLE AS median_enrichment,
        avg(_rank_accuracy)::DOUBLE AS mean_rank_accuracy,
        avg(pointing_hit::DOUBLE)::DOUBLE AS pointing_hit_rate{"".join(", " + e for e in extra)}
    FROM valid {group}
),
per_class AS (
    SELECT {select_keys} predicted_class, count(*) AS n
    FROM valid GROUP BY {select_keys} predicted_class
),
classes AS (
    SELECT {select_keys}
        string_agg(coalesce(predicted_class::VARCHAR, 'null') || ':' || n::VARCHAR, ' '
                   ORDER BY predicted_class NULLS LAST) AS predicted_class_counts
    FROM per_class {group}
)
SELECT {out_keys}{", " if by else ""}
    s.cells, s.nan_scores, s.empty_maps, s.mean_grad_camo, s.median_grad_camo, s.share_above_half,
    s.share_edge_padded, s.median_enrichment, s.mean_rank_accuracy, s.pointing_hit_rate, p.predicted_class_counts
    {"".join(", s." + e.rsplit(" AS ", 1)[1] for e in extra)}
FROM stats s LEFT JOIN classes p ON {join}
WHERE s.cells > 0
{order}
"""


__all__ = ["DEFAULT_BY", "METRIC_COLUMNS", "SUMMARY_COLUMNS", "summarize"]
