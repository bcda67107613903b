"""`gradcamo report` without a browser: one self-contained file, plate layouts, options and bad input."""

import re

import pytest

from gradcamo.cli import main
from gradcamo.visual.plates import parse_well, plate_shape, row_name
from gradcamo.visual.stats import report_stats


def test_plate_formats():
    assert [row_name(i) for i in (0, 15, 25, 26, 31)] == ["A", "P", "Z", "AA", "AF"]
    assert parse_well("B03") == (1, 2) and parse_well("AF48") == (31, 47) and parse_well("x") is None
    assert plate_shape([parse_well("H12")]) == (8, 12)
    assert plate_shape([parse_well("A13")]) == (16, 24)
    assert plate_shape([parse_well("Q01")]) == (32, 48)
    assert plate_shape([parse_well("AF49")]) == (32, 49)


def test_report_is_one_offline_file(tmp_path, capsys, datasets):
    scored = [datasets[(2, "raw")], datasets[(2, "pytorch-grad-cam")]]
    output = tmp_path / "report.html"
    args = ["report", *(str(s.scores) for s in scored), "-o", str(output), "--gallery", "3", "-m", str(scored[0].model)]
    assert main(args) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    page = output.read_text()
    assert re.findall(r'(?:src|href)="(?!data:)', page) == [] and "<script" not in page and "<link" not in page
    assert page.count("<img ") == 2 * 3 * 3
    assert "2d-raw" in page and "2d-pytorch-grad-cam" in page and "pytorch-grad-cam" in page
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_without_galleries_no_model_is_needed(tmp_path, datasets):
    output = tmp_path / "report.html"
    assert main(["report", str(datasets[(3, "raw")].scores), "-o", str(output), "--gallery", "0", "--quiet"]) == 0
    assert "<img " not in output.read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gallery", "-1"], "--gallery: expected a whole number >= 0"),
        (["-o", "/nonexistent/dir/report.html"], "does not exist"),
        (["-m", "/nonexistent/m.onnx"], "/nonexistent/m.onnx"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, datasets, args, message):
    output = ["-o", str(tmp_path / "report.html")] if "-o" not in args else []
    assert main(["report", str(datasets[(2, "raw")].scores), *output, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_histogram_and_density_count_every_scored_row(datasets):
    paths = [datasets[(2, "raw")].scores, datasets[(3, "pytorch-grad-cam")].scores]
    stats = report_stats(paths)
    for row in stats.headline:
        scored = row["cells"] - row["nan_scores"]
        assert sum(int(c.sum()) for c in stats.histograms[row["dataset"]].values()) == scored
        assert int(stats.density[row["dataset"]].sum()) == scored
    for row in stats.per_target:
        assert int(stats.histograms[row["dataset"]][row["target_name"]].sum()) == row["cells"] - row["nan_scores"]
