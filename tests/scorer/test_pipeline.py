"""score() end to end on synthetic OME-Zarr, checked against a naive per-cell implementation.

The reference cuts each crop from the zero-padded whole image, runs the plain contract
graph (no head) one cell at a time and applies the numpy Grad-CAMO arithmetic; the
pipeline reads blocks with halos, batches, uses the in-graph head and runs on Dask.
"""

import json

import duckdb
import numpy as np
import pytest
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.scorer.pipeline import score
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D, CROP_3D


def read_rows(output):
    return duckdb.sql(f"select * from read_parquet('{output}/*.parquet') order by all").df()


@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_single_2d_image_with_edge_and_straddling_cells(tmp_path, model_2d, convention):
    image, labels = make_cells((50, 44), 9, n_channels=3, radius=5, seed=4)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    summary = score([store], model_2d, tmp_path / "scores", target="all", convention=convention,
                    batch_size=5, block_shape=(16, 16), workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    n_cells = len(np.unique(labels)) - 1
    assert summary.cells == n_cells and summary.rows == 3 * n_cells
    assert frame.edge_padded.any() and not frame.edge_padded.all()
    assert set(frame.Metadata_Image) == {"cells.zarr"} and frame.Metadata_Plate.isna().all()
    assert (frame.Metadata_Site == 0).all() and frame.centroid_z.isna().all()
    assert set(frame.target_name) == {"a", "b", "c"}
    assert (frame.convention == convention).all()
    assert_matches(frame, reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2], convention))


def test_3d_image(tmp_path, model_3d):
    image, labels = make_cells((6, 30, 28), 5, n_channels=3, radius=5, seed=8)
    store = write_image_store(tmp_path / "vol.zarr", image, labels, chunks=(3, 10, 10), ngff_version="0.4")
    score([store], model_3d, tmp_path / "scores", block_shape=(3, 10, 10), workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    assert frame.centroid_z.notna().all()
    assert_matches(frame, reference_rows(model_3d, image, labels, CROP_3D, [-1]))


def test_the_manifest_records_the_model_and_absolute_inputs(tmp_path, model_2d, monkeypatch):
    image, labels = make_cells((32, 32), 2, n_channels=3, radius=5, seed=3)
    write_image_store(tmp_path / "cells.zarr", image, labels)
    monkeypatch.chdir(tmp_path)
    score(["cells.zarr"], model_2d, "scores", workers=1, threads=1)
    manifest = json.loads((tmp_path / "scores" / "_gradcamo.json").read_text())
    assert manifest["model"] == str(model_2d.resolve())
    assert manifest["parameters"]["inputs"] == [str(tmp_path / "cells.zarr")]


def test_plate_keys_and_resume(tmp_path, model_2d):
    fields = {("B", 3): [make_cells((40, 40), 5, n_channels=3, radius=5, seed=s) for s in (1, 2)],
              ("A", 1): [make_cells((40, 40), 4, n_channels=3, radius=5, seed=3)]}
    store = write_plate(tmp_path / "plate.zarr", fields, name="P1", chunks=(20, 20))
    output = tmp_path / "scores"
    first = score([store], model_2d, output, target="b", workers=2, threads=1)
    frame = read_rows(output)
    expected_cells = sum(len(np.unique(lab)) - 1 for pairs in fields.values() for _, lab in pairs)
    assert first.cells == expected_cells == len(frame)
    assert set(zip(frame.Metadata_Well, frame.Metadata_Site)) == {("B03", 0), ("B03", 1), ("A01", 0)}
    assert (frame.Metadata_Plate == "P1").all() and (frame.target_class == 1).all()
    site = frame[(frame.Metadata_Well == "B03") & (frame.Metadata_Site == 1)]
    image, labels = fields[("B", 3)][1]
    assert_matches(site, reference_rows(model_2d, image, labels, CROP_2D, [1]))

    parts = sorted(output.glob("part-*.parquet"))
    parts[0].unlink()
    second = score([store], model_2d, output, target="b", workers=1)
    assert second.units_resumed == len(parts) - 1
    again = read_rows(output)
    assert len(again) == len(frame)
    assert again.equals(frame)
