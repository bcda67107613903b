"""score() end to end on synthetic OME-Zarr, checked against a naive per-cell implementation.

The reference cuts each crop from the zero-padded whole image, runs the plain contract
graph (no head) one cell at a time and applies the numpy Grad-CAMO arithmetic; the
pipeline reads blocks with halos, batches, uses the in-graph head and runs on Dask.
"""

import duckdb
import numpy as np
import onnxruntime as ort
import pytest
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.cam import compute_cam, gradcamo_score, resize_cam
from gradcamo.scorer.pipeline import score
from tests.scorer.tiny_models import CROP_2D, CROP_3D

def reference_rows(model_path, image, labels, crop_shape, targets, convention="raw"):
    """{(object, target): (grad_camo, cam_inside, cam_total, predicted, pad)} cell by cell."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    crop = np.asarray(crop_shape[1:])
    pad = [(0, 0)] + [(int(c), int(c)) for c in crop]
    padded_image = np.pad(image.astype(np.float32), pad)
    padded_labels = np.pad(labels, pad[1:])
    rows = {}
    for cell in np.unique(labels)[1:]:
        centroid = np.argwhere(labels == cell).mean(axis=0)
        start = np.floor(centroid + 0.5).astype(int) - crop // 2 + crop
        window = tuple(slice(s, s + c) for s, c in zip(start, crop))
        x = padded_image[(slice(None),) + window][None]
        mask = padded_labels[window] == cell
        outside = np.pad(np.ones(labels.shape, bool), pad[1:])[window]
        for target in targets:
            logits, activations, gradients = session.run(None, {"image": x, "target": np.array([target])})
            cam = resize_cam(compute_cam(activations, gradients, convention=convention), tuple(crop))
            inside, total, value = gradcamo_score(cam, mask[None])
            predicted = int(logits.argmax())
            key = (int(cell), predicted if target < 0 else target)
            rows[key] = (value[0], inside[0], total[0], predicted, 1 - outside.mean())
    return rows


def read_rows(output):
    return duckdb.sql(f"select * from read_parquet('{output}/*.parquet') order by all").df()


def assert_matches(frame, expected):
    assert len(frame) == len(expected)
    assert not frame.duplicated(["Metadata_Image", "Metadata_ObjectNumber", "target_class"]).any()
    for row in frame.itertuples():
        value, inside, total, predicted, pad = expected[(row.Metadata_ObjectNumber, row.target_class)]
        assert row.predicted_class == predicted
        assert row.cam_total == pytest.approx(total, rel=1e-5)
        assert row.cam_inside == pytest.approx(inside, rel=1e-5, abs=1e-6 * total)
        assert row.grad_camo == pytest.approx(value, abs=1e-5)
        assert row.pad_fraction == pytest.approx(pad, abs=1e-6)
        assert row.edge_padded == (pad > 0)


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
