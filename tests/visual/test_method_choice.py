"""`cams --method` and `report --method` on a dataset scored with several CAM methods."""

import re

import numpy as np
import pytest

from gradcamo.cli import main
from gradcamo.results.query import run_query
from gradcamo.results.summary import summarize
from gradcamo.visual.stats import report_stats
from tests.visual.conftest import SCORED_METHODS
from tests.visual.test_cams import read_cams, run_cams


def test_cams_keep_the_rows_of_one_method_and_recompute_them_with_it(tmp_path, capsys, method_scores):
    cams = {}
    for method in ("hirescam", "layercam"):
        code, captured = run_cams(capsys, method_scores, tmp_path / method, "--method", method, "--limit", 100)
        assert code == 0, captured.err
        rows, _, mask, cam = read_cams(tmp_path / method)
        expected = run_query(method_scores.scores, f"SELECT count(*) AS n FROM scores WHERE method = '{method}'")
        assert set(rows["method"]) == {method} and len(rows) == expected.column("n")[0].as_py()
        share = (cam.astype(np.float64) * mask).sum(axis=(1, 2)) / cam.astype(np.float64).sum(axis=(1, 2))
        np.testing.assert_allclose(share, rows["grad_camo"], rtol=0, atol=1e-6)
        cams[method] = cam
    assert not np.allclose(cams["hirescam"], cams["layercam"])


def test_cams_without_method_keep_every_method(tmp_path, capsys, method_scores):
    code, captured = run_cams(capsys, method_scores, tmp_path / "all", "--where", "Metadata_ObjectNumber = 1")
    assert code == 0, captured.err
    assert sorted(read_cams(tmp_path / "all")[0]["method"]) == sorted(SCORED_METHODS)


@pytest.mark.parametrize("command", ["cams", "report"])
def test_a_method_not_scored_is_one_line(tmp_path, capsys, method_scores, command):
    output = tmp_path / ("out" if command == "cams" else "report.html")
    code = main([command, str(method_scores.scores), "-o", str(output), "--method", "gradcam++", "--gallery", "0"]
                if command == "report" else
                [command, str(method_scores.scores), "-o", str(output), "--method", "gradcam++"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --method: methods holds no 'gradcam++' rows (scored with gradcam, hirescam, layercam)")
    assert list(tmp_path.iterdir()) == []


def _numbers(page, table_class, key_attribute):
    """{(dataset, key): {field: value}} from the data attributes of one headline-style table."""
    table = re.search(rf'<table class="{table_class}">(.*?)</table>', page).group(1)
    rows = {}
    for attributes, cells in re.findall(r"<tr ([^>]*)>(.*?)</tr>", table):
        key = (re.search(r'data-dataset="([^"]*)"', attributes).group(1),
               re.search(rf'{key_attribute}="([^"]*)"', attributes).group(1))
        rows[key] = {field: value for field, value in re.findall(r'data-field="(\w+)" data-value="([^"]*)"', cells)}
    return rows


def test_report_shows_one_method_and_compares_all(tmp_path, method_scores):
    output = tmp_path / "report.html"
    assert main(["report", str(method_scores.scores), "-o", str(output), "--method", "hirescam", "--gallery", "2",
                 "-q"]) == 0
    page = output.read_text()
    assert '<b class="method">hirescam</b>' in page and "Galleries of hirescam CAMs" in page
    assert page.count("<img ") == 3 * 2

    headline = _numbers(page, "headline", "data-target")
    expected = summarize(method_scores.scores, by=["dataset"], method="hirescam").to_pylist()[0]
    shown = headline[("methods", "all")]
    assert int(shown["cells"]) == expected["cells"]
    assert float(shown["median_grad_camo"]) == expected["median_grad_camo"]
    assert float(shown["mean_rank_accuracy"]) == expected["mean_rank_accuracy"]

    per_method = _numbers(page, "methods", "data-method")
    assert sorted(per_method) == [("methods", m) for m in sorted(SCORED_METHODS)]
    for row in summarize(method_scores.scores, by=["dataset", "method"]).to_pylist():
        assert float(per_method[(row["dataset"], row["method"])]["median_grad_camo"]) == row["median_grad_camo"]
    assert per_method[("methods", "hirescam")]["median_grad_camo"] != per_method[("methods", "layercam")]["median_grad_camo"]


def test_report_method_defaults_to_gradcam_and_needs_a_shared_one(tmp_path, capsys, method_scores, datasets):
    stats = report_stats([method_scores.scores])
    assert stats.method == "gradcam"
    assert stats.headline[0]["cells"] == summarize(method_scores.scores, by=[], method="gradcam").to_pylist()[0]["cells"]
    assert report_stats([method_scores.scores, datasets[(2, "raw")].scores]).method == "gradcam"
    hirescam_only = tmp_path / "hirescam"
    main(["score", str(method_scores.store), "-m", str(method_scores.model), "-o", str(hirescam_only),
          "--method", "hirescam", "-q"])
    assert report_stats([hirescam_only]).method == "hirescam"
    capsys.readouterr()
    code = main(["report", str(hirescam_only), str(datasets[(2, "raw")].scores), "-o", str(tmp_path / "r.html"),
                 "--gallery", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--method: the datasets share no CAM method (hirescam: hirescam; 2d-raw: gradcam)" in err
