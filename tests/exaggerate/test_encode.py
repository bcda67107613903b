"""encode(): latent codes and reconstruction errors of every cell, checked against torch on crops cut
independently (tests.reference), keyed exactly like score's rows; resume; 3D; bad input."""

import copy
import json
import re

import duckdb
import numpy as np
import pytest
import torch
import zarr

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.exaggerate.autoencoder import export_autoencoder
from gradcamo.exaggerate.encode import encode
from gradcamo.results.datasets import connect, resolve_datasets
from gradcamo.scorer.pipeline import score
from tests.reference import reference_crops
from tests.tiny_models import CROP_2D, CROP_3D, TinyAutoencoder, tiny_autoencoder

MEAN, STD = [30.0, 20.0, 10.0], [40.0, 30.0, 20.0]
KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Image", "Metadata_ObjectNumber",
        "centroid_z", "centroid_y", "centroid_x", "object_voxels", "edge_padded"]
CODE_RTOL = 1e-5
"""float32 onnxruntime vs float64 torch on the same crop: ~1e-7 of the code's scale; a wrong crop,
normalisation or row order is off by order 1."""


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    """AE_DIRs of the tiny 2D and 3D autoencoders, and of a 2D one with a 32 x 32 crop ("big")."""
    root = tmp_path_factory.mktemp("ae")
    exported = {d: export_autoencoder(tiny_autoencoder(d), crop, root / f"ae{d}", mean=MEAN, std=STD)
                for d, crop in ((2, CROP_2D), (3, CROP_3D))}
    exported["big"] = export_autoencoder(TinyAutoencoder(2, (3, 32, 32)), (3, 32, 32), root / "big")
    return exported


def torch_latents(spatial_dims, image, labels):
    """{cell: (centroid, code, reconstruction mse, pad fraction)}: each crop cut by tests.reference, encoded
    and decoded by the torch model in float64 with the normalisation written out here."""
    crop = CROP_2D if spatial_dims == 2 else CROP_3D
    model = copy.deepcopy(tiny_autoencoder(spatial_dims)).double().eval()
    view = (1, -1) + (1,) * spatial_dims
    mean = torch.tensor(MEAN, dtype=torch.float64).reshape(view)
    std = torch.tensor(STD, dtype=torch.float64).reshape(view)
    rows = {}
    for cell, centroid, x, _, pad in reference_crops(image, labels, crop):
        x = torch.from_numpy(x.astype(np.float64))
        with torch.no_grad():
            code = model.encode((x - mean) / std)
            decoded = model.decode(code) * std + mean
        rows[int(cell)] = (centroid, code[0].numpy(), float(((decoded - x) ** 2).mean()), pad)
    return rows


def assert_latents_match(frame, expected, latent_size=4):
    assert len(frame) == len(expected)
    assert not frame.duplicated(["Metadata_Image", "Metadata_ObjectNumber"]).any()
    codes = frame[[f"z_{i}" for i in range(latent_size)]].to_numpy()
    scale = np.abs(np.stack([e[1] for e in expected.values()])).max()
    for row, code in zip(frame.itertuples(), codes):
        centroid, expected_code, mse, pad = expected[row.Metadata_ObjectNumber]
        np.testing.assert_allclose(code, expected_code, rtol=0, atol=CODE_RTOL * scale)
        assert row.reconstruction_mse == pytest.approx(mse, rel=CODE_RTOL)
        assert (row.centroid_y, row.centroid_x) == pytest.approx(tuple(centroid[-2:]), abs=1e-9)
        assert row.edge_padded == (pad > 0)


def read_latents(output):
    """Rows through the dataset views that `exaggerate`, `query` and `summary` use."""
    with connect(resolve_datasets(output)) as con:
        return con.sql("select * exclude (dataset) from scores order by all").df()


def test_a_plate_matches_torch_keys_match_score_and_a_run_resumes(tmp_path, autoencoders, model_2d, capsys):
    fields = {("B", 3): [make_cells((40, 40), 5, n_channels=3, radius=5, seed=s) for s in (1, 2)],
              ("A", 1): [make_cells((40, 40), 4, n_channels=3, radius=5, seed=3)]}
    store = write_plate(tmp_path / "plate.zarr", fields, name="P1", chunks=(20, 20))
    output = tmp_path / "latents"
    first = encode([store], autoencoders[2].directory, output, batch_size=3, workers=1, threads=1)
    frame = read_latents(output)
    assert first.cells == len(frame) == sum(len(np.unique(lab)) - 1 for pairs in fields.values() for _, lab in pairs)
    assert frame.edge_padded.any() and frame.centroid_z.isna().all() and (frame.Metadata_Plate == "P1").all()
    for (row, column), pairs in fields.items():
        for site, (image, labels) in enumerate(pairs):
            chosen = frame[(frame.Metadata_Well == f"{row}{column:02d}") & (frame.Metadata_Site == site)]
            assert_latents_match(chosen, torch_latents(2, image, labels))
    manifest = json.loads((output / "_gradcamo.json").read_text())
    assert (manifest["kind"], manifest["autoencoder"], manifest["latent_size"]) == (
        "latents", str(autoencoders[2].directory), 4)

    score([store], model_2d, tmp_path / "scores", workers=1, threads=1)
    scores = duckdb.sql(f"select {', '.join(KEYS)} from read_parquet('{tmp_path}/scores/*.parquet') order by all").df()
    assert scores.equals(frame[KEYS].sort_values(KEYS, ignore_index=True))

    parts = sorted(output.glob("part-*.parquet"))
    parts[1].unlink()
    argv = ["encode", str(store), "-a", str(autoencoders[2].directory), "-o", str(output), "--workers", "1"]
    assert main(argv) == 0
    assert f"({len(parts) - 1} of {len(parts)} work units resumed" in capsys.readouterr().out
    assert read_latents(output).equals(frame)
    assert main(argv) == 0 and capsys.readouterr().out.startswith("nothing to do")


def test_a_blocked_3d_image(tmp_path, autoencoders):
    image, labels = make_cells((6, 30, 28), 5, n_channels=3, radius=5, seed=8)
    store = write_image_store(tmp_path / "vol.zarr", image, labels, chunks=(3, 10, 10))
    encode([store], autoencoders[3].directory, tmp_path / "latents", block_shape=(3, 10, 10), workers=1, threads=1)
    frame = read_latents(tmp_path / "latents")
    expected = torch_latents(3, image, labels)
    assert_latents_match(frame, expected)
    for row in frame.itertuples():
        assert row.centroid_z == pytest.approx(expected[row.Metadata_ObjectNumber][0][0], abs=1e-9)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return write_image_store(tmp_path_factory.mktemp("small") / "cells.zarr",
                             *make_cells((24, 24), 2, n_channels=3, radius=4, seed=2))


BAD_INPUT = [
    ("AE_DIR missing", lambda ae, t: ["-a", str(t / "absent")],
     r"--autoencoder .*absent: not an autoencoder directory \(no such directory\)"),
    ("not an AE_DIR", lambda ae, t: ["-a", str(t)], r"--autoencoder .*: not an autoencoder directory \(no autoencoder.json\)"),
    ("channels out of range", lambda ae, t: ["-a", str(ae[2].directory), "--channels", "0,1,5"],
     r"--channels: \[5\] out of range for cells.zarr with 3 channels"),
    ("too few channels", lambda ae, t: ["-a", str(ae[2].directory), "--channels", "0,1"],
     r"cells.zarr: .*the model takes 3; pick them with --channels"),
    ("3D autoencoder, 2D image", lambda ae, t: ["-a", str(ae[3].directory)],
     r"cells.zarr: the model is 3D but the image has no z axis"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_no_output(case, autoencoders, small_store, tmp_path, capsys):
    _, options, pattern = case
    workspace = tmp_path / "w"
    workspace.mkdir()
    code = main(["encode", str(small_store), "-o", str(tmp_path / "latents"), *options(autoencoders, workspace)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert re.search(pattern, error), error
    assert not (tmp_path / "latents").exists()


def test_an_image_smaller_than_the_crop_is_encoded_zero_padded(autoencoders, small_store, tmp_path):
    """The crop rule pads an image smaller than the crop like any edge cell (32 x 32 crops of a 24 x 24 image)."""
    encode([small_store], autoencoders["big"].directory, tmp_path / "latents", workers=1, threads=1)
    frame = read_latents(tmp_path / "latents")
    labels = zarr.open_group(str(small_store), mode="r")["labels/cells/s0"][...]
    assert len(frame) == len(np.unique(labels)) - 1 and frame.edge_padded.all()
