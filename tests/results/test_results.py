"""gradcamo.results: queries and summaries over score datasets, checked against numpy."""

import csv
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gradcamo.errors import InputError
from gradcamo.results.datasets import connect, resolve_datasets, view_names
from gradcamo.results.query import run_query, write_table
from gradcamo.results.summary import SUMMARY_COLUMNS, summarize
from gradcamo.scorer.sink import SCORE_SCHEMA, ScoreDataset

SCHEMA = SCORE_SCHEMA  # the documented columns, as the scorer writes them
CLASSES = ["alive", "dead", "mitotic"]


def random_rows(rng, n, *, plate, well, image):
    """n rows with the score schema; about one in six scores is NaN (cam_empty)."""
    cam_total = rng.uniform(1, 10, n)
    cam_empty = rng.random(n) < 1 / 6
    cam_inside = rng.uniform(0, 1, n) * cam_total
    cam_inside[cam_empty] = 0.0
    cam_total[cam_empty] = 0.0
    score = np.where(cam_empty, np.nan, cam_inside / np.where(cam_empty, 1.0, cam_total))
    target = rng.integers(0, 3, n).astype(np.int32)
    columns = {
        "Metadata_Plate": [plate] * n,
        "Metadata_Well": [well] * n,
        "Metadata_Site": np.zeros(n, np.int32),
        "Metadata_Image": [image] * n,
        "Metadata_ObjectNumber": np.arange(1, n + 1, dtype=np.int64),
        "centroid_z": [None] * n,
        "centroid_y": rng.uniform(0, 100, n),
        "centroid_x": rng.uniform(0, 100, n),
        "object_voxels": rng.integers(10, 500, n),
        "target_class": target,
        "predicted_class": rng.integers(0, 3, n).astype(np.int32),
        "target_name": [CLASSES[t] for t in target],
        "logit_target": rng.normal(size=n).astype(np.float32),
        "prob_target": rng.random(n).astype(np.float32),
        "cam_inside": cam_inside,
        "cam_total": cam_total,
        "grad_camo": score,
        "cam_empty": cam_empty,
        "edge_padded": rng.random(n) < 0.3,
        "pad_fraction": rng.random(n).astype(np.float32),
        "method": ["gradcam"] * n,
        "mask_fraction": rng.random(n),
        "enrichment": np.where(cam_empty, np.nan, rng.uniform(0, 3, n)),
        "rank_accuracy": np.where(cam_empty, np.nan, rng.random(n)),
        "pointing_hit": [None if e else bool(h) for e, h in zip(cam_empty, rng.random(n) < 0.5)],
        "missing_chunks": np.zeros(n, bool),
    }
    arrays = [pa.array(columns[f.name], f.type) for f in SCHEMA if f.name in columns]
    for name, value in [("model_sha256", "ab" * 32), ("target_layer", "layer4"), ("convention", "raw")]:
        arrays.append(pa.array([value] * n, pa.string()).dictionary_encode())
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_dataset(directory, tables):
    directory.mkdir(parents=True)
    for i, table in enumerate(tables):
        pq.write_table(table, directory / f"part-{i:04d}.parquet")
    manifest = {"version": 1, "parameters": {}, "counts": {"cells": sum(t.num_rows for t in tables)}}
    (directory / "_gradcamo.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def plate_dataset(tmp_path):
    """2 plates x 2 wells (one part each, of uneven sizes), an image outside plates, an empty part."""
    rng = np.random.default_rng(7)
    tables = []
    for p, plate in enumerate(["P1", "P2"]):
        for w, well in enumerate(["A01", "B02"]):
            tables.append(random_rows(rng, 20 + 7 * p + 3 * w, plate=plate, well=well, image=f"{plate}.zarr/{well}"))
    tables.append(random_rows(rng, 9, plate=None, well=None, image="nuclei.zarr"))
    tables.append(SCHEMA.empty_table())
    return write_dataset(tmp_path / "plate's [run]", tables), pa.concat_tables(tables)


@pytest.fixture
def empty_dataset(tmp_path):
    return write_dataset(tmp_path / "empty", [SCHEMA.empty_table()])


def _groups(table, keys):
    """Row indices per group, computed with plain Python (independent of DuckDB)."""
    if not keys:
        return {(): list(range(table.num_rows))}
    columns = [table.column(k).to_pylist() for k in keys]
    groups = {}
    for i, key in enumerate(zip(*columns)):
        groups.setdefault(key, []).append(i)
    return groups


def _expected_summary(table, keys):
    score = table.column("grad_camo").to_numpy()
    padded = table.column("edge_padded").to_numpy(zero_copy_only=False)
    predicted = table.column("predicted_class").to_numpy()
    expected = {}
    for key, rows in _groups(table, keys).items():
        rows = np.asarray(rows)
        s = score[rows]
        valid = s[~np.isnan(s)]
        classes, counts = np.unique(predicted[rows], return_counts=True)
        expected[key] = {
            "cells": len(rows),
            "nan_scores": int(np.isnan(s).sum()),
            "mean_grad_camo": float(valid.mean()) if valid.size else None,
            "median_grad_camo": float(np.median(valid)) if valid.size else None,
            "share_above_half": float((valid > 0.5).mean()) if valid.size else None,
            "share_edge_padded": float(padded[rows].mean()),
            "predicted_class_counts": " ".join(f"{c}:{n}" for c, n in zip(classes, counts)),
        }
    return expected


def _check_summary(result, expected, keys):
    assert result.num_rows == len(expected)
    for row in result.to_pylist():
        want = expected[tuple(row[k] for k in keys)]
        for name, value in want.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, rel=1e-12), name
            else:
                assert row[name] == value, name


# --- datasets ---------------------------------------------------------------------------


def test_resolve_names_and_disambiguates(tmp_path):
    a = write_dataset(tmp_path / "a" / "scores", [SCHEMA.empty_table()])
    b = write_dataset(tmp_path / "b" / "scores", [SCHEMA.empty_table()])
    c = write_dataset(tmp_path / "run-1", [SCHEMA.empty_table()])
    names = resolve_datasets([a, b, str(c)])
    assert list(names) == ["a/scores", "b/scores", "run-1"]
    assert names["run-1"] == c
    assert view_names(names) == {"a/scores": "a_scores", "b/scores": "b_scores", "run-1": "run_1"}
    assert view_names(["scores", "1x", "Scores"]) == {"scores": "scores_2", "1x": "d_1x", "Scores": "Scores_3"}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d, r"missing: no such directory"),
        (lambda d: (d.parent.mkdir(exist_ok=True), d.write_text(""))[-1] and d, r"missing: is a file"),
        (lambda d: d.mkdir() or d, r"missing: not a gradcamo score dataset \(it has no _gradcamo.json"),
    ],
)
def test_resolve_rejects_non_datasets(tmp_path, make, match):
    path = tmp_path / "missing"
    make(path)
    with pytest.raises(InputError, match=match):
        resolve_datasets([path])


def test_resolve_rejects_parts_without_manifest_and_repeats(tmp_path, empty_dataset):
    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(SCHEMA.empty_table(), bare / "part-0.parquet")
    with pytest.raises(InputError, match=r"bare: .*has part-\*.parquet files but has no _gradcamo.json"):
        resolve_datasets(bare)
    with pytest.raises(InputError, match=r"given twice"):
        resolve_datasets([empty_dataset, tmp_path / "." / "empty"])
    with pytest.raises(InputError, match=r"no score dataset given"):
        resolve_datasets([])
    (empty_dataset / "_gradcamo.json").write_text("{not json")
    with pytest.raises(InputError, match=r"_gradcamo.json: unreadable manifest"):
        resolve_datasets(empty_dataset)


def test_missing_dataset_is_an_input_error_in_query_and_summary(tmp_path):
    with pytest.raises(InputError, match=r"nowhere: no such directory"):
        run_query([tmp_path / "nowhere"], "SELECT 1")
    with pytest.raises(InputError, match=r"nowhere: no such directory"):
        summarize([tmp_path / "nowhere"])


# --- query ------------------------------------------------------------------------------


def test_query_returns_all_rows_and_columns(plate_dataset):
    path, table = plate_dataset
    result = run_query(path, "SELECT * FROM scores")
    assert result.column_names == ["dataset"] + SCHEMA.names
    assert result.num_rows == table.num_rows
    assert set(result.column("dataset").to_pylist()) == {"plate's [run]"}
    order = pc.sort_indices(result, [("Metadata_Image", "ascending"), ("Metadata_ObjectNumber", "ascending")])
    got = result.take(order)
    want = table.take(pc.sort_indices(table, [("Metadata_Image", "ascending"), ("Metadata_ObjectNumber", "ascending")]))
    np.testing.assert_array_equal(got.column("grad_camo").to_numpy(), want.column("grad_camo").to_numpy())
    assert got.column("Metadata_Plate").to_pylist() == want.column("Metadata_Plate").to_pylist()
    assert got.column("target_layer").to_pylist() == ["layer4"] * table.num_rows


def test_query_aggregate_matches_numpy(plate_dataset):
    path, table = plate_dataset
    result = run_query(
        [path],
        "SELECT Metadata_Plate, count(*) AS n, avg(grad_camo) FILTER (WHERE NOT isnan(grad_camo)) AS mean "
        "FROM scores GROUP BY ALL ORDER BY Metadata_Plate NULLS LAST",
    )
    plates = table.column("Metadata_Plate").to_pylist()
    score = table.column("grad_camo").to_numpy()
    assert result.column("Metadata_Plate").to_pylist() == ["P1", "P2", None]
    for row in result.to_pylist():
        rows = np.array([p == row["Metadata_Plate"] for p in plates])
        assert row["n"] == rows.sum()
        assert row["mean"] == pytest.approx(np.nanmean(score[rows]), rel=1e-12)


def test_empty_dataset_keeps_the_schema(empty_dataset, tmp_path):
    result = run_query(empty_dataset, "SELECT * FROM scores")
    assert result.num_rows == 0
    assert result.column_names == ["dataset"] + SCHEMA.names
    assert result.schema.field("grad_camo").type == pa.float64()
    # no part file at all: still a valid, empty dataset
    (empty_dataset / "part-0000.parquet").unlink()
    result = run_query(empty_dataset, "SELECT count(*) AS n, avg(grad_camo) AS m FROM scores")
    assert result.to_pylist() == [{"n": 0, "m": None}]
    assert summarize(empty_dataset).num_rows == 0


def test_several_datasets_have_a_dataset_column_and_own_views(plate_dataset, empty_dataset, tmp_path):
    path, table = plate_dataset
    rng = np.random.default_rng(11)
    other_table = random_rows(rng, 13, plate="P9", well="C03", image="P9.zarr/C03")
    other = write_dataset(tmp_path / "other", [other_table])
    paths = [path, other, empty_dataset]
    result = run_query(paths, "SELECT dataset, count(*) AS n FROM scores GROUP BY dataset ORDER BY dataset")
    assert result.to_pylist() == [{"dataset": "other", "n": 13}, {"dataset": "plate's [run]", "n": table.num_rows}]
    assert run_query(paths, "SELECT count(*) AS n FROM other").to_pylist() == [{"n": 13}]
    assert run_query(paths, "SELECT count(*) AS n FROM plate_s_run").to_pylist() == [{"n": table.num_rows}]
    assert run_query(paths, "SELECT count(*) AS n FROM empty").to_pylist() == [{"n": 0}]
    assert "dataset" not in run_query(paths, "SELECT * FROM other LIMIT 1").column_names
    con = connect(resolve_datasets(paths))
    try:
        views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    finally:
        con.close()
    assert views == {"scores", "other", "plate_s_run", "empty"}


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("SELEC * FROM scores", r"^SQL: Parser Error: syntax error"),
        ("SELECT nope FROM scores", r"^SQL: Binder Error: .*nope"),
        ("SELECT * FROM no_such_view", r"^SQL: Catalog Error: .*no_such_view"),
        ("   ", r"^SQL: empty query"),
    ],
)
def test_bad_sql_is_one_line_input_error(plate_dataset, sql, match):
    with pytest.raises(InputError, match=match) as info:
        run_query(plate_dataset[0], sql)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sql", ["CREATE TABLE t AS SELECT 1", "SET threads = 1", "SELECT 1; CREATE TABLE t (x INT)"])
def test_statement_without_result_gives_an_empty_table(plate_dataset, sql):
    result = run_query(plate_dataset[0], sql)
    assert result.num_columns == 0 and result.num_rows == 0


def test_statements_before_a_query_run_and_the_query_result_is_returned(plate_dataset):
    result = run_query(plate_dataset[0], "CREATE TABLE t AS SELECT 41 AS x; SELECT x + 1 AS y FROM t")
    assert result.to_pylist() == [{"y": 42}]


# --- summary ----------------------------------------------------------------------------


def test_summary_default_groups_match_numpy(plate_dataset):
    path, table = plate_dataset
    result = summarize(path)
    keys = ["dataset", "Metadata_Plate", "Metadata_Well", "target_name", "method"]
    assert result.column_names == keys + list(SUMMARY_COLUMNS)
    with_name = table.append_column("dataset", pa.array(["plate's [run]"] * table.num_rows))
    _check_summary(result, _expected_summary(with_name, keys), keys)
    assert pc.sum(result.column("cells")).as_py() == table.num_rows
    assert pc.sum(result.column("nan_scores")).as_py() == pc.sum(table.column("cam_empty")).as_py()
    # sorted by the keys, nulls last
    plates = result.column("Metadata_Plate").to_pylist()
    assert plates == sorted(plates, key=lambda p: (p is None, p or ""))


@pytest.mark.parametrize("by", [("Metadata_Plate",), "Metadata_Well,target_class", (), ["predicted_class", "edge_padded"]])
def test_summary_other_groupings_match_numpy(plate_dataset, by):
    path, table = plate_dataset
    keys = [k for item in ([by] if isinstance(by, str) else by) for k in item.split(",")]
    result = summarize(path, by=by)
    assert result.column_names[: len(keys)] == keys
    _check_summary(result, _expected_summary(table, keys), keys)


def test_summary_all_nan_group_gives_nulls(tmp_path):
    table = random_rows(np.random.default_rng(3), 6, plate="P", well="W", image="x.zarr")
    table = table.set_column(
        table.schema.get_field_index("grad_camo"), "grad_camo", pa.array([math.nan] * 6, pa.float64())
    )
    row = summarize(write_dataset(tmp_path / "nan", [table]), by=["Metadata_Well"]).to_pylist()[0]
    assert row["cells"] == 6 and row["nan_scores"] == 6
    assert row["mean_grad_camo"] is None and row["median_grad_camo"] is None and row["share_above_half"] is None


def _write_with_sink(directory, table):
    with ScoreDataset.open(directory, {"case": "nan"}) as dataset:
        dataset.write_part("0", table)
        dataset.finish({"rows": table.num_rows})
    return directory


@pytest.mark.parametrize("writer", ["sink", "pyarrow with float statistics"])
def test_nan_beside_a_score_is_skipped_by_every_aggregate_of_its_group(tmp_path, writer):
    """Issue 11: DuckDB 2.0.1 returned mean NaN for a group holding [0.5, NaN] when
    several filtered aggregates stood side by side (it read Parquet min/max statistics
    as "no NaN"). Pinned for part files as the scorer writes them and as a plain
    pyarrow writer does (with statistics)."""
    table = random_rows(np.random.default_rng(11), 3, plate="P", well="A01", image="x.zarr")
    table = table.set_column(table.schema.get_field_index("Metadata_Well"), "Metadata_Well", pa.array(["A01", "A01", "B01"]))
    table = table.set_column(table.schema.get_field_index("grad_camo"), "grad_camo", pa.array([0.5, math.nan, 0.7]))
    table = table.set_column(table.schema.get_field_index("edge_padded"), "edge_padded", pa.array([True, False, False]))
    directory = tmp_path / "nan"
    if writer == "sink":
        _write_with_sink(directory, table)
    else:
        write_dataset(directory, [table])
    rows = {row["Metadata_Well"]: row for row in summarize(directory, by=["Metadata_Well"]).to_pylist()}
    assert (rows["A01"]["cells"], rows["A01"]["nan_scores"]) == (2, 1)
    assert rows["A01"]["mean_grad_camo"] == 0.5 and rows["A01"]["median_grad_camo"] == 0.5
    assert rows["A01"]["share_above_half"] == 0.0 and rows["A01"]["share_edge_padded"] == 0.5
    assert (rows["B01"]["mean_grad_camo"], rows["B01"]["share_above_half"], rows["B01"]["nan_scores"]) == (0.7, 1.0, 0)


def test_nan_scores_are_found_by_a_where_clause_over_the_scorers_part_files(tmp_path):
    table = random_rows(np.random.default_rng(12), 4, plate="P", well="A01", image="x.zarr")
    table = table.set_column(table.schema.get_field_index("grad_camo"), "grad_camo", pa.array([0.2, math.nan, 0.9, math.nan]))
    directory = _write_with_sink(tmp_path / "nan", table)
    counted = run_query(directory, "SELECT count(*) AS n FROM scores WHERE isnan(grad_camo)").to_pylist()
    assert counted == [{"n": 2}]


def test_summary_several_datasets_groups_by_dataset(plate_dataset, tmp_path):
    path, table = plate_dataset
    other = write_dataset(tmp_path / "other", [random_rows(np.random.default_rng(5), 10, plate="P1", well="A01", image="o")])
    result = summarize([path, other], by=["dataset"])
    assert result.column("dataset").to_pylist() == ["other", "plate's [run]"]
    assert result.column("cells").to_pylist() == [10, table.num_rows]


@pytest.mark.parametrize(
    ("by", "match"),
    [
        (["Metadata_Plaet"], r"--by Metadata_Plaet: is not a column; expected some of dataset, Metadata_Plate, "),
        (["grad_camo"], r"--by grad_camo: is a measurement, not a grouping column"),
        (["target_name", "target_name"], r"--by: target_name given more than once"),
    ],
)
def test_summary_bad_by(plate_dataset, by, match):
    with pytest.raises(InputError, match=match):
        summarize(plate_dataset[0], by=by)


# --- output -----------------------------------------------------------------------------


def _sample():
    return pa.table(
        {
            "name": pa.array(["a", None, "c,\"q\""]),
            "n": pa.array([1, 2, None], pa.int64()),
            "score": pa.array([0.25, math.nan, None], pa.float64()),
            "flag": pa.array([True, False, None]),
            "layer": pa.array(["l4", "l4", "l3"]).dictionary_encode(),
        }
    )


def test_csv_round_trips(tmp_path, capsys):
    import pyarrow.csv as pa_csv

    table = _sample()
    out = tmp_path / "out.csv"
    write_table(table, "csv", out)
    write_table(table, "csv")
    assert capsys.readouterr().out.encode() == out.read_bytes()
    # nulls are empty fields and NaN is "nan" (which pyarrow reads as null by default)
    back = pa_csv.read_csv(out, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True, null_values=[""]))
    assert back.column_names == table.column_names
    assert back.column("name").to_pylist() == ["a", None, "c,\"q\""]
    assert back.column("n").to_pylist() == [1, 2, None]
    score = back.column("score").to_pylist()
    assert score[0] == 0.25 and math.isnan(score[1]) and score[2] is None
    assert back.column("flag").to_pylist() == [True, False, None]
    assert back.column("layer").to_pylist() == ["l4", "l4", "l3"]
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["name", "n", "score", "flag", "layer"] and len(rows) == 4


def test_json_is_a_list_of_records_with_nan_as_null(tmp_path, capsys):
    table = _sample()
    out = tmp_path / "out.json"
    write_table(table, "json", out)
    records = json.loads(out.read_text())
    assert records == [
        {"name": "a", "n": 1, "score": 0.25, "flag": True, "layer": "l4"},
        {"name": None, "n": 2, "score": None, "flag": False, "layer": "l4"},
        {"name": "c,\"q\"", "n": None, "score": None, "flag": None, "layer": "l3"},
    ]
    write_table(table, "json")
    assert json.loads(capsys.readouterr().out) == records
    write_table(table.slice(0, 0), "json")
    assert json.loads(capsys.readouterr().out) == []


def test_query_results_round_trip_through_every_format(plate_dataset, tmp_path):
    import pyarrow.csv as pa_csv

    path, table = plate_dataset
    result = run_query(path, "SELECT * FROM scores ORDER BY Metadata_Image, Metadata_ObjectNumber")
    write_table(result, "parquet", tmp_path / "r.parquet")
    back = pq.read_table(tmp_path / "r.parquet")
    assert back.schema.equals(result.schema)
    with_nan = ("grad_camo", "enrichment", "rank_accuracy")
    others = [n for n in result.column_names if n not in with_nan]
    assert back.select(others).equals(result.select(others))  # NaN != NaN: compare those apart
    for name in with_nan:
        np.testing.assert_array_equal(back.column(name).to_numpy(), result.column(name).to_numpy())
    write_table(result, "json", tmp_path / "r.json")
    records = json.loads((tmp_path / "r.json").read_text())
    assert len(records) == table.num_rows
    scores = result.column("grad_camo").to_pylist()
    assert [r["grad_camo"] for r in records] == [None if math.isnan(s) else s for s in scores]
    write_table(result, "csv", tmp_path / "r.csv")
    back = pa_csv.read_csv(tmp_path / "r.csv", convert_options=pa_csv.ConvertOptions(strings_can_be_null=True, null_values=[""]))
    np.testing.assert_array_equal(back.column("grad_camo").to_numpy(), result.column("grad_camo").to_numpy())
    assert back.column("Metadata_Plate").to_pylist() == result.column("Metadata_Plate").to_pylist()


def test_rich_table_shows_rows_and_caption(tmp_path, capsys):
    write_table(_sample(), "table")
    out = capsys.readouterr().out
    assert "score" in out and "NaN" in out and "0.25" in out and "3 rows" in out
    big = pa.table({"i": pa.array(range(250), pa.int64())})
    write_table(big, "table", tmp_path / "t.txt", max_rows=10)
    text = (tmp_path / "t.txt").read_text()
    assert "10 of 250 rows shown" in text and "\x1b[" not in text


def test_output_errors(tmp_path):
    with pytest.raises(InputError, match=r"--format parquet: needs an output file; pass -o"):
        write_table(_sample(), "parquet")
    with pytest.raises(InputError, match=r"--format 'xlsx': expected one of table, csv, json, parquet"):
        write_table(_sample(), "xlsx")
    with pytest.raises(InputError, match=r"-o .*nodir.*does not exist"):
        write_table(_sample(), "csv", tmp_path / "nodir" / "x.csv")
    with pytest.raises(InputError, match=r"-o .*: is a directory"):
        write_table(_sample(), "json", tmp_path)
    with pytest.raises(InputError, match=r"--format csv: column 'l' holds nested values"):
        write_table(pa.table({"l": [[1, 2]]}), "csv")


def test_damaged_part_file_is_an_input_error_naming_the_dataset(plate_dataset):
    path, _ = plate_dataset
    (path / "part-9999.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"plate's \[run\]: cannot read its part files: "):
        run_query(path, "SELECT 1")


def test_each_resolution_warns_once_per_problem_and_a_silent_one_not_at_all(tmp_path, caplog):
    """A command resolves its datasets once and warns then (missing chunks, incompleteness); the checks
    it makes afterwards pass ``warn=False``; nothing is remembered between calls."""
    directory = tmp_path / "scores"
    directory.mkdir()
    manifest = directory / "_gradcamo.json"
    failure = {"image": "p.zarr/A/1/0", "block": "whole image", "cause": "OSError: gone"}
    manifest.write_text(json.dumps({"counts": {"units": 2}, "failures": [failure],
                                    "missing_chunks": {"p.zarr/A/2/0": ["p.zarr/A/2/0/s0/c/0/0/0"]}}))
    with caplog.at_level("WARNING", logger="gradcamo.results.datasets"):
        resolve_datasets([directory], warn=False)
        assert caplog.records == []
        for _ in range(2):
            resolve_datasets([directory])
    messages = [record.getMessage() for record in caplog.records]
    assert sum("incomplete: 1 of 2 work units failed" in m for m in messages) == 2
    assert sum("1 missing image chunk read as zeros" in m for m in messages) == 2
    assert len(messages) == 4
