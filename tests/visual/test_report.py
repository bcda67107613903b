"""`gradcamo report` without a browser: one self-contained file, plate layouts, options and bad input."""

import json
import re
import shutil

import pytest

from gradcamo.cli import main
from gradcamo.scorer.sink import read_scores
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


def test_report_and_cams_warn_once_per_problem_and_again_in_the_next_command(tmp_path, capsys, datasets):
    """A command resolves each dataset once and warns then (``report`` opens a dataset for every figure and
    gallery); nothing is remembered across commands, so the next one in the same process warns again."""
    scored = datasets[(2, "raw")]
    copy = shutil.copytree(scored.scores, tmp_path / "scores")
    manifest = json.loads((copy / "_gradcamo.json").read_text())
    image = read_scores(copy).column("Metadata_Image")[0].as_py()
    manifest["failures"] = [{"image": "elsewhere.zarr", "block": "whole image", "cause": "OSError: gone"}]
    manifest["missing_chunks"] = {image: [f"{image}/s0/c/0/9/9"]}  # cams then reads that image in zeros mode
    (copy / "_gradcamo.json").write_text(json.dumps(manifest))
    commands = [["report", str(copy), "-o", str(tmp_path / "report.html"), "--gallery", "2", "-m", str(scored.model)],
                ["cams", str(copy), "-o", str(tmp_path / "cams"), "--limit", "2", "-m", str(scored.model)],
                ["report", str(copy), "-o", str(tmp_path / "again.html"), "--gallery", "2", "-m", str(scored.model)]]
    for argv in commands:
        assert main(argv) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert err.count("incomplete: 1 of 1 work unit failed") == 1, (argv[0], err)
        assert err.count("1 missing image chunk read as zeros") == 1, (argv[0], err)
