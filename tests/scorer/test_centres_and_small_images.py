"""score with crops centred on a second label image (--center-labels), images smaller than the
crop, and --features, each checked against the independent references of tests/reference.py."""

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_labels

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.pipeline import score
from tests.reference import assert_matches, pooled_activations, reference_crops, reference_rows, torch_gradcam
from tests.tiny_models import CROP_2D, CROP_3D, tiny_classifier


def read_rows(output):
    return duckdb.sql(f"select * from read_parquet('{output}/*.parquet') order by all").df()


def nuclei_of(labels, *, missing=()):
    """A nucleus per cell, off its centre: the cell's voxels left of its centroid (x), none for ``missing``."""
    nuclei = np.zeros_like(labels)
    x = np.indices(labels.shape)[-1]
    for cell in np.unique(labels)[1:]:
        if cell in missing:
            continue
        inside = labels == cell
        nuclei[inside & (x < x[inside].mean() - 1)] = cell
    return nuclei


def with_nuclei(path, nuclei):
    group = zarr.open_group(str(path), mode="a")
    axes = ["z", "y", "x"][-nuclei.ndim:]
    write_labels(nuclei, group, name="nuclei", axes=axes, fmt=format_from_version("0.5"), scale_factors=[],
                 scaler=None, storage_options={"chunks": group["labels/cells/s0"].chunks})
    return path


@pytest.mark.parametrize("block_shape", [None, (16, 16)])
def test_crops_centred_on_nuclei_keep_the_cell_mask(tmp_path, model_2d, block_shape):
    image, labels = make_cells((50, 44), 8, n_channels=3, radius=6, seed=4)
    missing = (int(np.unique(labels)[2]),)
    nuclei = nuclei_of(labels, missing=missing)
    store = with_nuclei(write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16)), nuclei)
    summary = score([store], model_2d, tmp_path / "scores", labels="cells", centre_labels="nuclei", target="all",
                    block_shape=block_shape, batch_size=4, workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    expected = reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2], centre_labels=nuclei)
    assert_matches(frame, expected)
    assert missing[0] not in set(frame.Metadata_ObjectNumber)
    assert summary.cells_without_centre == 1 and summary.cells == len(np.unique(labels)) - 2
    manifest = json.loads((tmp_path / "scores" / "_gradcamo.json").read_text())
    assert manifest["counts"]["cells_without_centre"] == 1
    assert manifest["parameters"]["center_labels"] == "nuclei"
    # the centre moved, so the scores differ from crops centred on the cells
    assert expected != reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2])
    cell = frame.iloc[0]  # centroid columns stay the cell's
    assert cell.centroid_x == pytest.approx(np.argwhere(labels == cell.Metadata_ObjectNumber)[:, 1].mean())


def test_the_last_line_counts_cells_without_a_centre(tmp_path, capsys, model_2d):
    image, labels = make_cells((40, 36), 5, n_channels=3, radius=5, seed=21)
    store = with_nuclei(write_image_store(tmp_path / "cells.zarr", image, labels), nuclei_of(labels, missing=(1, 2)))
    code = main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "scores"), "--labels", "cells",
                 "--center-labels", "nuclei", "--workers", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"for {len(np.unique(labels)) - 3} cells of 1 image to {tmp_path / 'scores'} (" in out
    assert out.rstrip().endswith("; 2 cells without a nuclei object skipped")


def test_an_unknown_centre_label_image_is_refused(tmp_path, model_2d):
    image, labels = make_cells((40, 36), 3, n_channels=3, radius=5, seed=2)
    store = write_image_store(tmp_path / "cells.zarr", image, labels)
    with pytest.raises(Exception, match=r"cells.zarr: no label image 'Nuclei'; there are \['cells'\]"):
        score([store], model_2d, tmp_path / "scores", centre_labels="Nuclei", workers=1, threads=1)
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("spatial_shape, model, crop, block_shape", [
    ((10, 13), "model_2d", CROP_2D, None),
    ((2, 30, 28), "model_3d", CROP_3D, None),
    ((3, 30, 28), "model_3d", CROP_3D, (2, 10, 10)),
], ids=["2d-smaller-than-crop", "3d-two-planes", "3d-three-planes-blocked"])
def test_images_smaller_than_the_crop_are_zero_padded(tmp_path, request, spatial_shape, model, crop, block_shape):
    model = request.getfixturevalue(model)
    image, labels = make_cells(spatial_shape, 4, n_channels=3, radius=4, seed=6)
    chunks = tuple(min(n, 10) for n in spatial_shape)
    store = write_image_store(tmp_path / "small.zarr", image, labels, chunks=chunks)
    score([store], model, tmp_path / "scores", block_shape=block_shape, workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    assert len(frame) == len(np.unique(labels)) - 1 > 0
    assert frame.edge_padded.all() and (frame.pad_fraction > 0).all()
    assert_matches(frame, reference_rows(model, image, labels, crop, [-1]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_features_are_the_mean_of_the_target_layer_activations(tmp_path, request, spatial_dims):
    model = request.getfixturevalue(f"model_{spatial_dims}d")
    crop = CROP_2D if spatial_dims == 2 else CROP_3D
    shape = (40, 36) if spatial_dims == 2 else (6, 28, 26)
    image, labels = make_cells(shape, 5, n_channels=3, radius=5, seed=9)
    store = write_image_store(tmp_path / "cells.zarr", image, labels)
    score([store], model, tmp_path / "plain", target="all", workers=1, threads=1)
    score([store], model, tmp_path / "scores", target="all", features=True, batch_size=4, workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    names = [f"feature_{k}" for k in range(6)]  # the tiny models' target layer has 6 channels
    assert [c for c in frame.columns if c.startswith("feature_")] == names
    schema = pq.read_schema(next((tmp_path / "scores").glob("part-*.parquet")))
    assert all(schema.field(name).type == pa.float32() for name in names)
    assert_matches(frame, reference_rows(model, image, labels, crop, [0, 1, 2]))  # the scores do not change
    plain = read_rows(tmp_path / "plain")
    assert plain.drop(columns=["model_sha256"]).equals(frame.drop(columns=names + ["model_sha256"]))

    cells, crops = zip(*[(cell, x[0]) for cell, _, x, _, _ in reference_crops(image, labels, crop)])
    reference = torch_gradcam(tiny_classifier(spatial_dims), "2", np.stack(crops), [-1] * len(crops),
                              mean=[100.0] * 3, std=[300.0] * 3)
    for cell, expected in zip(cells, pooled_activations(reference)):
        rows = frame[frame.Metadata_ObjectNumber == cell][names].to_numpy()
        assert len(rows) == 3  # one per target, the same features
        np.testing.assert_allclose(rows, np.repeat(expected[None], 3, axis=0), rtol=1e-4, atol=1e-5)


def test_cams_recompute_nucleus_centred_crops(tmp_path, model_2d):
    """`cams` cuts its crops where the scorer did: a crop at the cell's centroid would score differently and
    be refused as changed inputs."""
    from gradcamo.scorer.session import SessionCache
    from gradcamo.visual.recompute import iter_cams
    from gradcamo.visual.source import open_source

    image, labels = make_cells((40, 36), 5, n_channels=3, radius=5, seed=21)
    nuclei = nuclei_of(labels)
    store = with_nuclei(write_image_store(tmp_path / "cells.zarr", image, labels), nuclei)
    score([store], model_2d, tmp_path / "scores", labels="cells", centre_labels="nuclei", workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    rows = {column: frame[column].tolist() for column in frame.columns}
    with SessionCache() as sessions:
        batches = list(iter_cams(open_source(tmp_path / "scores"), rows, sessions))
    crops = {int(cell): x[0] for cell, _, x, _, _ in reference_crops(image, labels, CROP_2D, nuclei)}
    for batch in batches:
        for row, crop in zip(batch.rows, batch.image):
            np.testing.assert_array_equal(crop, crops[rows["Metadata_ObjectNumber"][row]])
    assert sum(len(b.rows) for b in batches) == len(frame)
