"""The numbers a report shows, from DuckDB over the ``scores`` view (headline figures via ``summary``)."""

import dataclasses

import numpy as np

from gradcamo.errors import InputError
from gradcamo.results.datasets import DEFAULT_METHODS, connect, recorded_methods, resolve_datasets
from gradcamo.results.summary import summarize
from gradcamo.visual.select import VALID_SCORE

HISTOGRAM_BINS = 20
DENSITY_BINS = 20
CONFIDENT = 0.9
"""prob_target above which a prediction counts as confident."""


@dataclasses.dataclass(frozen=True)
class ReportStats:
    """Everything but the galleries and the provenance, for all datasets of a report.

    ``method``: the CAM method all of it is about (the other figures are of its rows alone);
    ``headline`` and ``per_target``: rows of :func:`summarize` by dataset (and target_name);
    ``per_method``: rows of :func:`summarize` by dataset and method, over every method scored;
    ``histograms``: {dataset: {target_name: (HISTOGRAM_BINS,) counts}};
    ``density``: {dataset: (DENSITY_BINS, DENSITY_BINS) counts of grad_camo x prob_target};
    ``confident_elsewhere``: {dataset: share of scored rows with prob_target > 0.9 and grad_camo < 0.5}.
    """

    datasets: dict
    method: str
    headline: list
    per_target: list
    per_method: list
    histograms: dict
    density: dict
    confident_elsewhere: dict


def _binned_counts(con, keys, columns, bins):
    """{key values: counts} of the scored rows in ``bins`` equal bins of [0, 1] along each column."""
    binned = ", ".join(f"least(floor({column} * {bins}), {bins - 1})::INTEGER" for column in columns)
    rows = con.execute(
        f"SELECT {', '.join(keys)}, {binned}, count(*) FROM scores WHERE {VALID_SCORE} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    counts = {}
    for row in rows:
        key, index = row[:len(keys)], row[len(keys):-1]
        counts.setdefault(key, np.zeros((bins,) * len(columns), np.int64))[index] += row[-1]
    return counts


def _histograms(con):
    histograms = {}
    for (dataset, target), counts in _binned_counts(con, ["dataset", "target_name"], ["grad_camo"], HISTOGRAM_BINS).items():
        histograms.setdefault(dataset, {})[target] = counts
    return histograms


def _density(con):
    counts = _binned_counts(con, ["dataset"], ["grad_camo", "prob_target"], DENSITY_BINS)
    return {dataset: grid for (dataset,), grid in counts.items()}


def _confident_elsewhere(con):
    return dict(con.execute(
        f"SELECT dataset, avg(CASE WHEN prob_target > {CONFIDENT} AND grad_camo < 0.5 THEN 1.0 ELSE 0.0 END) "
        f"FROM scores WHERE {VALID_SCORE} GROUP BY dataset"
    ).fetchall())


def common_method(datasets) -> str:
    """The method a report shows by default: the first the first dataset scored that every
    dataset holds (``gradcam`` unless asked otherwise); InputError when they share none."""
    held = {name: recorded_methods(path) or DEFAULT_METHODS for name, path in datasets.items()}
    shared = [m for m in next(iter(held.values())) if all(m in methods for methods in held.values())]
    if not shared:
        scored = "; ".join(f"{name}: {', '.join(methods)}" for name, methods in held.items())
        raise InputError(f"method: the datasets share no CAM method ({scored}); report them separately",
                         argument="method")
    return shared[0]


def report_stats(paths, method=None) -> ReportStats:
    """Headline figures, histograms and the score-confidence density of the given score datasets.

    Parameters
    ----------
    paths : sequence of path-like
        Score dataset directories.
    method : str, optional
        The CAM method to show; default :func:`common_method`.

    Returns
    -------
    ReportStats
    """
    datasets = resolve_datasets(paths)
    method = method or common_method(datasets)
    con = connect(datasets, method=method)
    try:
        histograms, density, confident = _histograms(con), _density(con), _confident_elsewhere(con)
    finally:
        con.close()
    return ReportStats(
        datasets=datasets,
        method=method,
        headline=summarize(paths, by=["dataset"], method=method, warn=False).to_pylist(),
        per_target=summarize(paths, by=["dataset", "target_name"], method=method, warn=False).to_pylist(),
        per_method=summarize(paths, by=["dataset", "method"], warn=False).to_pylist(),
        histograms=histograms,
        density=density,
        confident_elsewhere=confident,
    )


def well_stats(directory, targets, method) -> tuple[list[dict], list[dict]]:
    """Per well (and target, for datasets that score several per cell): :func:`summarize` rows.

    Returns
    -------
    wells, images : list of dict
        Rows of plate wells, and rows of single images (no plate), each with the
        ``summarize`` columns.
    """
    by_target = ["target_name"] if len(targets) > 1 else []
    wells = summarize([directory], by=by_target + ["Metadata_Plate", "Metadata_Well"], method=method,
                      warn=False).to_pylist()
    images = summarize([directory], by=by_target + ["Metadata_Plate", "Metadata_Image"], method=method,
                       warn=False).to_pylist()
    return [w for w in wells if w["Metadata_Plate"] is not None], [i for i in images if i["Metadata_Plate"] is None]
