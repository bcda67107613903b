"""summary: the localisation metrics beside the score, by method; datasets written before them."""

import numpy as np
import pyarrow as pa
import pytest

from gradcamo.results.summary import METRIC_COLUMNS, summarize
from tests.results.test_results import random_rows, write_dataset

METHODS = ["gradcam", "hirescam", "layercam"]


def _rows(rng, n, method):
    table = random_rows(rng, n, plate="P", well="A01", image="i")
    index = table.schema.get_field_index("method")
    return table.set_column(index, "method", pa.array([method] * n, table.schema.field("method").type))


def _without_metrics(table):
    """Rows as written before issue #16."""
    return table.drop_columns(["method", "mask_fraction", *METRIC_COLUMNS.keys() - {"method"}])


def _expected(table, method):
    chosen = [m == method for m in table.column("method").to_pylist()]
    enrichment = table.column("enrichment").to_numpy()[chosen]
    rank = table.column("rank_accuracy").to_numpy()[chosen]
    hits = [h for h, c in zip(table.column("pointing_hit").to_pylist(), chosen) if c and h is not None]
    return {
        "cells": sum(chosen),
        "median_enrichment": float(np.median(enrichment[~np.isnan(enrichment)])),
        "mean_rank_accuracy": float(np.mean(rank[~np.isnan(rank)])),
        "pointing_hit_rate": float(np.mean(hits)),
    }


def test_metrics_per_method_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    tables = [_rows(rng, 30, method) for method in METHODS]
    path = write_dataset(tmp_path / "methods", tables)
    whole = pa.concat_tables(tables)
    rows = summarize(path, by="method").to_pylist()
    assert [row["method"] for row in rows] == sorted(METHODS)
    for row in rows:
        for name, value in _expected(whole, row["method"]).items():
            assert row[name] == pytest.approx(value, rel=1e-12), name


def test_datasets_written_before_the_metrics_are_gradcam_rows_without_them(tmp_path):
    rng = np.random.default_rng(4)
    old = write_dataset(tmp_path / "old", [_without_metrics(_rows(rng, 12, "gradcam"))])
    new = write_dataset(tmp_path / "new", [_rows(rng, 8, "hirescam")])
    alone = summarize(old).to_pylist()
    assert [row["method"] for row in alone] == ["gradcam"] * len(alone)
    assert all(row[name] is None for row in alone for name in ("median_enrichment", "mean_rank_accuracy",
                                                                 "pointing_hit_rate"))
    mixed = {(row["dataset"], row["method"]): row for row in summarize([old, new], by=["dataset", "method"]).to_pylist()}
    assert set(mixed) == {("old", "gradcam"), ("new", "hirescam")}
    assert mixed[("old", "gradcam")]["cells"] == 12 and mixed[("old", "gradcam")]["mean_rank_accuracy"] is None
    assert mixed[("new", "hirescam")]["mean_rank_accuracy"] is not None


def test_the_command_groups_by_method_by_default(tmp_path, capsys):
    """`gradcamo summary` without --by counts each method's rows apart (as summarize does), not a
    cell once per method."""
    import json

    from gradcamo.cli import main

    rng = np.random.default_rng(5)
    tables = [_rows(rng, 10, method) for method in METHODS]
    path = write_dataset(tmp_path / "methods", tables)
    assert main(["summary", str(path), "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    whole = pa.concat_tables(tables)
    cells = {method: sum(row["cells"] for row in rows if row["method"] == method) for method in METHODS}
    assert cells == {method: _expected(whole, method)["cells"] for method in METHODS} == dict.fromkeys(METHODS, 10)
