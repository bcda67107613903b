"""The reports in a real browser (headless Debian Chromium): they load cleanly and show the numbers of
summary (``report``) and of trajectories.parquet (``exaggerate``)."""

import duckdb
import numpy as np
import pytest

from gradcamo.cli import main
from gradcamo.results.datasets import resolve_datasets
from gradcamo.results.summary import summarize
from gradcamo.visual.report import HEADLINE_FIELDS, format_value
from tests.exaggerate.latents import run_tiny_exaggeration
from tests.visual.browser import missing_browser, open_page
from tests.visual.conftest import PLATES

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))
GALLERY = 2
WELLS = {"P1": 96, "P2": 384}


@pytest.fixture(scope="module")
def report(tmp_path_factory, plate_scores, datasets):
    volume = datasets[(3, "raw")]
    output = tmp_path_factory.mktemp("report") / "report.html"
    args = ["report", str(plate_scores.scores), str(volume.scores), "-o", str(output), "--gallery", str(GALLERY),
            "-m", str(plate_scores.model), "-m", str(volume.model), "--quiet"]
    assert main(args) == 0
    return output, [plate_scores.scores, volume.scores]


@pytest.fixture(scope="module")
def page(report):
    with open_page(report[0]) as driver:
        yield driver


def test_loads_without_console_errors_and_every_image_decodes(page):
    errors = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    images = page.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 2 * 3 * GALLERY  # two datasets, three galleries
    assert all(complete and width > 0 for complete, width in images)


def test_plate_map_has_one_cell_per_well(page):
    plates = page.execute_script(
        "return [...document.querySelectorAll('figure.plate')].map(f => "
        "[f.dataset.plate, f.querySelectorAll('rect.well').length])"
    )
    assert sorted(map(tuple, plates)) == sorted((name, WELLS[name]) for name in PLATES)


def test_headline_shows_the_numbers_of_summary(page, report):
    paths = report[1]
    names = list(resolve_datasets(paths))
    expected = {(r["dataset"], "all"): r for r in summarize(paths, by=["dataset"]).to_pylist()}
    expected |= {(r["dataset"], r["target_name"]): r for r in summarize(paths, by=["dataset", "target_name"]).to_pylist()}
    shown = page.execute_script(
        "return [...document.querySelectorAll('table.headline tr[data-dataset]')].map(r => [r.dataset.dataset, "
        "r.dataset.target, [...r.querySelectorAll('td[data-field]')].map(c => [c.dataset.field, c.dataset.value, "
        "c.textContent])])"
    )
    assert {(d, t) for d, t, _ in shown} == set(expected) and {d for d, _, _ in shown} == set(names)
    patterns = {field: pattern for field, _, pattern in HEADLINE_FIELDS}
    for dataset, target, cells in shown:
        row = expected[(dataset, target)]
        for field, value, text in cells:
            assert text == format_value(row[field], patterns[field])
            assert (value == "" and row[field] is None) or float(value) == pytest.approx(row[field], rel=1e-12)


def test_well_hover_text_shows_the_well_summary(page, report):
    rows = summarize([report[1][0]], by=["Metadata_Plate", "Metadata_Well"]).to_pylist()
    titles = page.execute_script(
        "return [...document.querySelectorAll('figure.plate')].map(f => [f.dataset.plate, "
        "[...f.querySelectorAll('rect.well title')].map(t => t.textContent)])"
    )
    hovers = {(plate, text.split(":")[0]): text for plate, texts in titles for text in texts}
    for row in rows:
        text = hovers[(row["Metadata_Plate"], row["Metadata_Well"])]
        assert f"median {row['median_grad_camo']:.3f}, {row['cells']} cell{'s' * (row['cells'] != 1)}" in text


def test_screenshot(page, tmp_path):
    path = tmp_path / "report.png"
    assert page.save_screenshot(str(path)) and path.stat().st_size > 10_000


EXAGGERATE_CELLS = 3


@pytest.fixture(scope="module")
def exaggeration(tmp_path_factory, model_2d):
    """An ``exaggerate`` output of the tiny autoencoder and classifier (3 cells per group, 5 steps)."""
    return run_tiny_exaggeration(tmp_path_factory.mktemp("exaggerate"), "--cells", str(EXAGGERATE_CELLS), "--steps",
                                 "-2:2:1", "-m", str(model_2d))[0]


@pytest.fixture(scope="module")
def exaggeration_page(exaggeration):
    with open_page(exaggeration / "report.html") as driver:
        yield driver


def test_exaggeration_report_loads_and_every_image_decodes(exaggeration_page):
    assert [e for e in exaggeration_page.get_log("browser") if e["level"] == "SEVERE"] == []
    images = exaggeration_page.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 1 + 2 * EXAGGERATE_CELLS  # the mean differences, one strip per cell
    assert all(complete and width > 0 and height > 0 for complete, width, height in images)
    figures = exaggeration_page.execute_script("return document.querySelectorAll('figure[data-property] svg').length")
    assert figures == exaggeration_page.execute_script("return document.querySelectorAll('table.monotonic tr[data-property]').length")


def test_exaggeration_monotonic_table_shows_the_shares_of_the_trajectories(exaggeration_page, exaggeration):
    frame = duckdb.sql(f"select * from read_parquet('{exaggeration / 'trajectories.parquet'}') "
                       "order by cell_index, step").df()
    n_steps = frame.step.nunique()
    groups = frame.group.to_numpy()[::n_steps]
    shown = exaggeration_page.execute_script(
        "return [...document.querySelectorAll('table.monotonic tr[data-property]')].map(r => [r.dataset.property, "
        "[...r.querySelectorAll('td[data-field]')].map(c => [c.dataset.field, c.dataset.value, c.textContent])])"
    )
    assert {name for name, _ in shown} >= {"prob_a", "prob_b", "prob_c", "grad_camo", "area", "protrusion",
                                            "intensity_rim_c2"}
    for name, cells in shown:
        values = frame[name].to_numpy().reshape(-1, n_steps)
        tolerance = 0.01 * (np.nanmax(values) - np.nanmin(values))
        steps = np.diff(values, axis=1)
        change = values[:, -1] - values[:, 0]
        finite = np.isfinite(values).all(axis=1)
        expected = {"tolerance": tolerance}
        for group, chosen in (("all", groups == groups), ("high", groups == "high"), ("low", groups == "low")):
            up = finite & (steps >= -tolerance).all(axis=1) & (change > tolerance)
            down = finite & (steps <= tolerance).all(axis=1) & (change < -tolerance)
            expected[f"{group}_increasing"], expected[f"{group}_decreasing"] = up[chosen].mean(), down[chosen].mean()
        assert {field for field, _, _ in cells} == set(expected)
        for field, value, text in cells:
            assert float(value) == pytest.approx(expected[field], rel=1e-12, abs=1e-15), (name, field)
            if field != "tolerance":
                assert text == f"{expected[field]:.0%}"
