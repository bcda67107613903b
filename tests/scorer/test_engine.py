"""The cell-stream engine: the smallest pass kind of docs/architecture.md, run as written there,
against numpy on the same crops; blocked and whole-image units, resume."""

import pathlib
import re

import numpy as np
import pytest

from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.crops import cut_cells, measure_objects
from gradcamo.scorer.engine import crop_columns
from gradcamo.scorer.sink import read_scores

ARCHITECTURE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
CROP = (2, 9, 11)


def _documented_pass():
    """The namespace of the first Python block of docs/architecture.md's "How a pass is added"."""
    text = ARCHITECTURE.read_text()
    section = text[text.index("## How a pass is added"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(ARCHITECTURE), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    image, labels = make_cells((40, 36), 7, n_channels=CROP[0], radius=4, seed=5)
    return write_image_store(tmp_path_factory.mktemp("s") / "cells.zarr", image, labels, chunks=(16, 16)), image, labels


def _expected_means(image, labels):
    cells = measure_objects(labels)
    crops, masks, pads = cut_cells(image, labels, cells.ids, cells.centroids, CROP[1:])
    inside = (crops * masks[:, None]).sum(axis=(1, 2, 3)) / (masks.sum(axis=(1, 2)) * CROP[0])
    return cells.ids, inside.astype(np.float32), pads > 0


@pytest.mark.parametrize("block_shape", [None, (16, 16)], ids=["whole image", "blocks with halos"])
def test_the_documented_smallest_pass_gives_each_cells_mean_inside_its_mask(tmp_path, store, block_shape):
    path, image, labels = store
    mean_inside = _documented_pass()["mean_inside"]
    if block_shape is not None:  # the documented driver plans whole images; the engine blocks them alike
        from gradcamo.scorer.pipeline import plan_run, run_units
        kind = _documented_pass()["MeanInside"](CROP)
        images, parameters = plan_run([path], CROP, block_shape=block_shape)
        summary = run_units(kind, images, tmp_path / "out", parameters, record={})
        assert summary.units == 9
    else:
        summary = mean_inside([path], tmp_path / "out", crop_shape=CROP)
    ids, expected, padded = _expected_means(image, labels)
    assert summary.cells == len(ids) > 5
    table = read_scores(tmp_path / "out").sort_by("Metadata_ObjectNumber")
    assert table.column("Metadata_ObjectNumber").to_pylist() == ids.tolist()
    np.testing.assert_allclose(table.column("mean_inside").to_numpy(), expected, rtol=1e-6)
    assert table.column("edge_padded").to_pylist() == padded.tolist()


def test_the_documented_pass_resumes_without_repeating_units(tmp_path, store):
    path, _, _ = store
    mean_inside = _documented_pass()["mean_inside"]
    first = mean_inside([path], tmp_path / "out", crop_shape=CROP)
    again = mean_inside([path], tmp_path / "out", crop_shape=CROP)
    assert (first.units_resumed, again.units_resumed, again.cells) == (0, 1, 0)
    assert read_scores(tmp_path / "out").num_rows == first.cells


def test_crop_columns_are_those_the_schema_declares():
    import pyarrow as pa

    pads = np.array([0.0, 0.25])
    schema = pa.schema([("edge_padded", pa.bool_()), ("missing_chunks", pa.bool_())])
    columns = crop_columns(schema, pads, missing_chunks=True)
    assert sorted(columns) == ["edge_padded", "missing_chunks"]
    assert columns["edge_padded"].tolist() == [False, True] and columns["missing_chunks"].tolist() == [True, True]
