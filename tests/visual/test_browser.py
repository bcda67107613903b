"""The report in a real browser (headless Debian Chromium): it loads cleanly and shows summary's numbers."""

import pytest

from gradcamo.cli import main
from gradcamo.results.datasets import resolve_datasets
from gradcamo.results.summary import summarize
from gradcamo.visual.report import HEADLINE_FIELDS, format_value
from tests.visual.browser import missing_browser, open_browser
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
    with open_browser() as driver:
        driver.get(f"file://{report[0]}")
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
        assert f"median {row['median_grad_camo']:.3f}, {row['cells']} cells" in text


def test_screenshot(page, tmp_path):
    path = tmp_path / "report.png"
    assert page.save_screenshot(str(path)) and path.stat().st_size > 10_000
