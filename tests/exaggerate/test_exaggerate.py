"""``gradcamo exaggerate`` end to end on a tiny autoencoder and classifier: every output against an independent
recomputation (sklearn LDA, decoder.onnx and torch decoding, torch Grad-CAMO), failures and bad input."""

import json
import resource
import shutil
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest
import torch
import zarr
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.preprocessing import StandardScaler

from gradcamo.cli import main
from gradcamo.exaggerate.autoencoder import export_autoencoder, open_decoder, read_autoencoder
from gradcamo.exaggerate.trends import monotonic
from tests.exaggerate.latents import HIGH, HIGH_WELLS, LOW, MEAN, STD, tiny_exaggeration_inputs, two_groups, write_latents
from tests.reference import torch_gradcamo
from tests.tiny_models import CROP_2D, CROP_3D, TinyAutoencoder, tiny_autoencoder, tiny_classifier

CELLS = 6
STEPS = np.arange(-2.0, 2.5, 1.0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_exaggeration_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def ae_dir(inputs):
    return inputs[0]


@pytest.fixture(scope="module")
def latents(inputs):
    return inputs[1:]


def _argv(latents, ae_dir, output, *extra):
    return ["exaggerate", str(latents), "-a", str(ae_dir), "--high", HIGH, "--low", LOW, "-o", str(output),
            "--cells", str(CELLS), "--steps", "-2:2:1", "--quiet", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, latents, ae_dir, model_2d):
    output = tmp_path_factory.mktemp("run") / "out"
    assert main(_argv(latents[0], ae_dir, output, "-m", str(model_2d))) == 0
    return output


def _rows(output):
    return duckdb.sql(f"select * from read_parquet('{output / 'trajectories.parquet'}') "
                      "order by cell_index, step_index").df()


def test_direction_is_sklearns_lda_axis_scaled_to_one_sd(run, latents):
    _, codes, wells = latents
    record = json.loads((run / "direction.json").read_text())
    is_high = np.isin(wells, HIGH_WELLS)
    x = StandardScaler().fit_transform(codes.astype(np.float64))
    axis = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, is_high).coef_[0]
    unit = axis / np.linalg.norm(axis)
    expected = codes.astype(np.float64).std(axis=0) * unit * (x @ unit).std()
    np.testing.assert_allclose(record["step_latent"], expected, rtol=1e-9)
    assert record["folds"]["scheme"] == "leave-one-well-out" and record["folds"]["folds"] == 4
    assert 0.5 < record["auroc"] <= 1.0 and record["cells"] == {"high": 20, "low": 20}
    assert record["steps"] == STEPS.tolist()


def test_decoded_images_equal_the_onnx_and_torch_decoders_of_the_shifted_codes(run, latents, ae_dir):
    rows = _rows(run)
    record = json.loads((run / "direction.json").read_text())
    firsts = rows[rows.step_index == 0]
    assert len(rows) == 2 * CELLS * len(STEPS) and list(firsts.group) == ["high"] * CELLS + ["low"] * CELLS
    codes = duckdb.sql(
        f"select * from read_parquet('{latents[0]}/part-*.parquet') order by Metadata_Image, Metadata_ObjectNumber"
    ).df()
    index = codes.set_index(["Metadata_Image", "Metadata_ObjectNumber"])
    chosen = index.loc[list(zip(firsts.Metadata_Image, firsts.Metadata_ObjectNumber)), [f"z_{k}" for k in range(4)]]
    shifted = chosen.to_numpy(np.float64)[:, None, :] + STEPS[None, :, None] * np.asarray(record["step_latent"])
    shifted = shifted.reshape(-1, 4).astype(np.float32)
    images = zarr.open_group(str(run / "images.zarr"), mode="r")
    decoded = images["decoded"][...]
    assert decoded.shape == (2 * CELLS, len(STEPS), *CROP_2D) and decoded.dtype == np.float32
    (onnx_decoded,) = open_decoder(read_autoencoder(ae_dir), device="cpu").run(["image"], {"z": shifted})
    np.testing.assert_allclose(decoded.reshape(onnx_decoded.shape), onnx_decoded, rtol=1e-6, atol=1e-4)
    with torch.no_grad():
        torch_decoded = tiny_autoencoder(2).decode(torch.from_numpy(shifted)).numpy() * STD[0] + MEAN[0]
    np.testing.assert_allclose(decoded.reshape(onnx_decoded.shape), torch_decoded, rtol=1e-5, atol=1e-3)
    zero = list(STEPS).index(0.0)
    np.testing.assert_allclose(images["difference"][...], decoded - decoded[:, zero:zero + 1])
    np.testing.assert_allclose(images["mean_difference"][...], (decoded - decoded[:, zero:zero + 1]).mean(axis=0),
                               rtol=1e-6, atol=1e-5)
    foreground = images["foreground"][...]
    np.testing.assert_array_equal(rows["area"].to_numpy(), foreground.reshape(len(rows), -1).sum(axis=1))


def test_probabilities_and_grad_camo_equal_torch_on_the_decoded_images(run):
    rows = _rows(run)
    images = zarr.open_group(str(run / "images.zarr"), mode="r")
    decoded = images["decoded"][...].reshape(-1, *CROP_2D).astype(np.float64)
    masks = images["foreground"][...].reshape(-1, *CROP_2D[1:])
    model = tiny_classifier(2).double().eval()
    with torch.no_grad():
        logits = model((torch.from_numpy(decoded) - MEAN[0]) / STD[0])
    probabilities = torch.softmax(logits, dim=1).numpy()
    for k, name in enumerate("abc"):
        np.testing.assert_allclose(rows[f"prob_{name}"], probabilities[:, k], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(rows["predicted_class"], probabilities.argmax(axis=1))
    _, _, expected = torch_gradcamo(tiny_classifier(2), "2", decoded, masks, np.full(len(decoded), -1),
                                    mean=MEAN, std=STD)
    np.testing.assert_allclose(rows["grad_camo"], expected, rtol=1e-4, atol=1e-5)


def test_the_report_table_is_the_monotonic_share_of_the_parquet(run):
    rows = _rows(run)
    html = (run / "report.html").read_text()
    for name in ("prob_a", "solidity", "intensity_rim_c0"):
        values = rows[name].to_numpy()
        finite = values[np.isfinite(values)]
        up, down = monotonic(values.reshape(2 * CELLS, len(STEPS)), 0.01 * (finite.max() - finite.min()))
        row = html.split(f"<tr data-property='{name}'>")[1].split("</tr>")[0]
        assert f'data-field="all_increasing" data-value="{float(up.mean())!r}"' in row
        assert f'data-field="all_decreasing" data-value="{float(down.mean())!r}"' in row
        high = np.asarray(rows.group[::len(STEPS)] == "high")
        assert f'data-field="high_increasing" data-value="{float(up[high].mean())!r}"' in row


def test_feature_direction_moves_one_feature_by_its_sd(tmp_path, latents, ae_dir):
    assert main(_argv(latents[0], ae_dir, tmp_path / "out", "--direction", "feature:1")) == 0
    record = json.loads((tmp_path / "out" / "direction.json").read_text())
    expected = np.zeros(4)
    expected[1] = latents[1][:, 1].astype(np.float64).std()
    np.testing.assert_allclose(record["step_latent"], expected)
    assert "prob_a" not in _rows(tmp_path / "out").columns


def _one_line_error(capsys, argv, output, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*"))


@pytest.mark.parametrize("extra, match", [
    (["--high", "Metadata_Well = 'Z99'"], "--high: \"Metadata_Well = 'Z99'\" selects no cells"),
    (["--low", "Metadata_Wel = 'B01'"], "--low: \"Metadata_Wel = 'B01'\" is not an SQL condition"),
    (["--low", "Metadata_Well <> 'B01'"], "cells satisfy both --high"),
    (["--direction", "feature:4"], "--direction: feature 4 is out of range; the latent codes have 4 features"),
    (["--steps", "1:3:1"], "--steps: '1:3:1' does not include 0"),
    (["--cells", "0"], "--cells: expected a whole number >= 1"),
])
def test_bad_options(tmp_path, capsys, latents, ae_dir, extra, match):
    output = tmp_path / "out"
    _one_line_error(capsys, _argv(latents[0], ae_dir, output) + extra, output, match)


def test_a_classifier_of_another_crop_shape_is_refused(tmp_path, capsys, latents, ae_dir, model_3d):
    output = tmp_path / "out"
    _one_line_error(capsys, _argv(latents[0], ae_dir, output, "-m", str(model_3d)), output,
                    "--model " + str(model_3d) + ": its crop shape 3,4,12,12 differs from the autoencoder's 3,16,16")


def test_latents_of_another_latent_size_are_refused(tmp_path, capsys, latents, ae_dir):
    other = tmp_path / "ae5"
    export_autoencoder(TinyAutoencoder(2, CROP_2D, latent_size=5), CROP_2D, other, quiet=True)
    output = tmp_path / "out"
    _one_line_error(capsys, _argv(latents[0], other, output), output,
                    f"--autoencoder {other}: its latent size 5 differs from the 4 of the codes")


def test_an_existing_output_needs_overwrite(tmp_path, capsys, latents, ae_dir, run):
    output = tmp_path / "out"
    assert main(_argv(latents[0], ae_dir, output)) == 0
    assert main(_argv(latents[0], ae_dir, output)) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(_argv(latents[0], ae_dir, output, "--overwrite", "--seed", "1")) == 0


def test_a_run_that_fails_while_writing_leaves_no_output(tmp_path, latents, ae_dir):
    """Files over 20 kB are refused (RLIMIT_FSIZE, as a full disk): the report cannot be written."""
    output = tmp_path / "out"

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run([sys.executable, "-m", "gradcamo", *_argv(latents[0], ae_dir, output)],
                            preexec_fn=limited, capture_output=True, text=True)
    assert result.returncode == 2 and "File too large" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert main(_argv(latents[0], ae_dir, output)) == 0
    assert sorted(p.name for p in output.iterdir()) == ["direction.json", "images.zarr", "report.html",
                                                        "trajectories.parquet"]


def test_3d_cells_are_measured_on_their_projection_and_scored_with_the_mask_on_every_plane(tmp_path, model_3d):
    ae_dir = export_autoencoder(tiny_autoencoder(3), CROP_3D, tmp_path / "ae3", mean=MEAN, std=STD,
                                quiet=True).directory
    codes, wells = two_groups(4, cells_per_well=3)
    latents = write_latents(tmp_path / "latents3", codes, wells, autoencoder=ae_dir)
    output = tmp_path / "out"
    assert main(_argv(latents, ae_dir, output, "-m", str(model_3d))) == 0
    images = zarr.open_group(str(output / "images.zarr"), mode="r")
    decoded, foreground = images["decoded"][...], images["foreground"][...]
    assert decoded.shape == (2 * CELLS, len(STEPS), *CROP_3D) and foreground.shape == (2 * CELLS, len(STEPS), 12, 12)
    flat = decoded.reshape(-1, *CROP_3D).astype(np.float64)
    masks = np.repeat(foreground.reshape(-1, 1, 12, 12), CROP_3D[1], axis=1)
    _, _, expected = torch_gradcamo(tiny_classifier(3), "2", flat, masks, np.full(len(flat), -1), mean=MEAN, std=STD)
    rows = _rows(output)
    np.testing.assert_allclose(rows["grad_camo"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(rows["area"], foreground.reshape(len(rows), -1).sum(axis=1))


def test_a_dataset_encode_did_not_write_is_refused(tmp_path, capsys, latents, ae_dir):
    copy = tmp_path / "scores"
    shutil.copytree(latents[0], copy)
    manifest = json.loads((copy / "_gradcamo.json").read_text())
    (copy / "_gradcamo.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "kind"}))
    output = tmp_path / "out"
    _one_line_error(capsys, _argv(copy, ae_dir, output), output, f"LATENTS {copy}: not a latents dataset")


def test_a_missing_latents_directory_is_refused(tmp_path, capsys, ae_dir):
    output = tmp_path / "out"
    _one_line_error(capsys, _argv(tmp_path / "nope", ae_dir, output), output,
                    f"LATENTS {tmp_path / 'nope'}: no such directory; expected a latents dataset")


def test_a_model_that_is_no_gradcamo_model_is_refused(tmp_path, capsys, latents, ae_dir):
    output = tmp_path / "out"
    decoder = read_autoencoder(ae_dir).decoder_path
    _one_line_error(capsys, _argv(latents[0], ae_dir, output, "-m", str(decoder)), output, "not a gradcamo model")


def test_a_run_killed_while_writing_leaves_no_output(tmp_path, latents, ae_dir):
    """SIGKILL once the staging directory exists: OUT never appears half written."""
    output = tmp_path / "out"
    argv = [sys.executable, "-m", "gradcamo", *_argv(latents[0], ae_dir, output)]
    argv[argv.index("-2:2:1")] = "-12:12:0.25"  # 97 steps of 40 cells: writing takes long enough to be caught
    argv[argv.index("--cells") + 1] = "20"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staging = []
    while not staging and process.poll() is None and time.monotonic() < deadline:
        staging = list(tmp_path.glob(".out.tmp-*"))
    process.kill()
    process.wait()
    assert staging, "the run ended before it was caught writing"
    assert not output.exists()
