"""score(methods=...): one row per cell, target and method, each method checked against the per-cell reference."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from gradcamo.cam import METHODS
from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.sink import read_scores
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D, CROP_3D

CASES = {2: ((40, 36), CROP_2D, "raw", "all", [0, 1, 2]), 3: ((6, 26, 24), CROP_3D, "pytorch-grad-cam", "predicted", [-1])}
KEYS = ["Metadata_ObjectNumber", "target_class", "method"]


@pytest.mark.parametrize("dims", [2, 3])
def test_every_method_scores_every_cell_and_target(tmp_path, model_2d, model_3d, dims):
    shape, crop, convention, target, targets = CASES[dims]
    model = model_2d if dims == 2 else model_3d
    image, labels = make_cells(shape, 5, n_channels=3, radius=4, seed=dims)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=shape)
    run = {"target": target, "convention": convention, "workers": 1, "threads": 1, "batch_size": 4}
    score([store], model, tmp_path / "one", **run)
    summary = score([store], model, tmp_path / "every", methods=",".join(reversed(METHODS)), **run)
    one, every = read_scores(tmp_path / "one"), read_scores(tmp_path / "every")
    assert summary.rows == every.num_rows == len(METHODS) * one.num_rows == len(METHODS) * len(targets) * summary.cells
    assert every.schema.field("method").type == pa.dictionary(pa.int32(), pa.string())
    assert set(one.column("method").to_pylist()) == {"gradcam"}
    frame = every.to_pandas()
    assert not frame.duplicated(KEYS).any()

    # the gradcam rows of a run with every method are the rows of a gradcam-only run
    gradcam = every.filter(pa.compute.equal(every.column("method").cast(pa.string()), "gradcam")).sort_by(
        [(k, "ascending") for k in KEYS[:2]])
    one = one.sort_by([(k, "ascending") for k in KEYS[:2]])
    assert gradcam.drop_columns(["method"]).equals(one.drop_columns(["method"]))

    for method in METHODS:
        rows = frame[frame.method == method]
        assert_matches(rows, reference_rows(model, image, labels, crop, targets, convention, method=method))
    crop_voxels = np.prod(crop[1:])
    voxels = frame.mask_fraction * crop_voxels
    np.testing.assert_array_equal(voxels, np.round(voxels))
    assert (voxels <= frame.object_voxels).all() and (voxels > 0).all()
    if dims == 2:  # cells of radius 4 lie whole in a 16x16 crop
        np.testing.assert_array_equal(voxels, frame.object_voxels)
    np.testing.assert_allclose(frame.enrichment, frame.grad_camo / frame.mask_fraction, rtol=1e-12)
    live = ~frame.cam_empty
    assert frame.rank_accuracy[live].between(0, 1).all() and frame.rank_accuracy[~live].isna().all()
    assert frame.pointing_hit[~live].isna().all()


def test_cli_method_option(tmp_path, model_2d, capsys):
    image, labels = make_cells((30, 30), 3, n_channels=3, radius=4, seed=5)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(30, 30))
    base = ["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--workers", "1"]
    assert main([*base, "--method", "layercam,gradcam"]) == 0
    methods = read_scores(tmp_path / "s").column("method").to_pylist()
    assert sorted(set(methods)) == ["gradcam", "layercam"] and len(methods) == 2 * len(np.unique(labels)[1:])
    assert main([*base, "--method", "gradcam,scorecam", "--overwrite"]) == 2
    assert "--method: expected one of" in capsys.readouterr().err


def test_cams_recompute_every_methods_rows(tmp_path, model_3d, capsys):
    """`gradcamo cams` recomputes each row with its own method (it refuses a CAM whose share differs)."""
    image, labels = make_cells((6, 26, 24), 4, n_channels=3, radius=4, seed=6)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(6, 26, 24))
    score([store], model_3d, tmp_path / "s", methods=METHODS, convention="pytorch-grad-cam", workers=1)
    assert main(["cams", str(tmp_path / "s"), "-o", str(tmp_path / "cams"), "-m", str(model_3d)]) == 0, \
        capsys.readouterr().err
    rows = pq.read_table(tmp_path / "cams" / "cams.parquet").to_pandas()
    cam = zarr.open_group(str(tmp_path / "cams" / "cams.zarr"), mode="r")["cam"][:]
    mask = zarr.open_group(str(tmp_path / "cams" / "cams.zarr"), mode="r")["mask"][:]
    assert sorted(set(rows.method)) == sorted(METHODS)
    share = (cam * mask).sum(axis=(1, 2, 3)) / cam.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(share, rows.grad_camo, atol=1e-6)
