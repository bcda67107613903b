"""Latent Shift: the exported graph against torch autograd, and ``exaggerate --direction gradient:FILE``'s per-cell
steps against the same formula on torch gradients."""

import json
import textwrap

import duckdb
import numpy as np
import pytest
import torch
import zarr

from gradcamo.cli import main
from gradcamo.exaggerate.autoencoder import open_decoder, read_autoencoder
from tests.exaggerate.latents import HIGH, LOW, MEAN, STD, run_tiny_exaggeration
from tests.tiny_models import CROP_2D, tiny_autoencoder, tiny_classifier

CLASSIFIER_MEAN, CLASSIFIER_STD = [100.0] * 3, [300.0] * 3
"""As tests.tiny_models.export_tiny exports the tiny classifier."""
FACTORIES = """
    from tests.tiny_models import CROP_2D, TinyAutoencoder, tiny_autoencoder, tiny_classifier

    def autoencoder():
        return tiny_autoencoder(2)

    def classifier():
        return tiny_classifier(2)

    def wide():
        return TinyAutoencoder(2, CROP_2D, latent_size=5)
"""


def _torch_shift(codes, targets):
    """Logits and d logit[target] / d z by eager autograd, the normalisations written out here."""
    autoencoder, classifier = tiny_autoencoder(2).eval(), tiny_classifier(2).eval()
    z = torch.from_numpy(np.asarray(codes, dtype=np.float32)).requires_grad_(True)
    image = autoencoder.decode(z) * STD[0] + MEAN[0]
    logits = classifier((image - CLASSIFIER_MEAN[0]) / CLASSIFIER_STD[0])
    chosen = torch.where(torch.as_tensor(targets) < 0, logits.argmax(1), torch.as_tensor(targets))
    (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), z)
    return logits.detach().numpy().astype(np.float64), gradient.numpy().astype(np.float64)


def _export(tmp_path, autoencoder="autoencoder", name="shift.onnx"):
    factories = tmp_path / "factories.py"
    factories.write_text(textwrap.dedent(FACTORIES))
    output = tmp_path / name
    argv = ["export-latent-shift", f"{factories}:{autoencoder}", f"{factories}:classifier", "--input-shape",
            ",".join(map(str, CROP_2D)), "-o", str(output), "--autoencoder-mean", "100,100,100", "--autoencoder-std",
            "300,300,300", "--mean", "100,100,100", "--std", "300,300,300", "--classes", "a,b,c", "--quiet"]
    return main(argv), output


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    code, output = _export(tmp_path_factory.mktemp("shift"))
    assert code == 0
    return output


def test_the_graph_equals_torch_autograd(graph):
    from gradcamo.scorer.session import create_session

    codes = np.random.default_rng(3).normal(scale=2.0, size=(7, 4)).astype(np.float32)
    targets = np.array([-1, 0, 1, 2, -1, 2, 0])
    logits, gradients = create_session(str(graph), device="cpu").run(
        ["logits", "latent_gradient"], {"z": codes, "target": targets})
    expected_logits, expected_gradients = _torch_shift(codes, targets)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5 * np.abs(expected_logits).max())
    np.testing.assert_allclose(gradients, expected_gradients, rtol=1e-4, atol=1e-5 * np.abs(expected_gradients).max())


@pytest.fixture(scope="module")
def shifted(tmp_path_factory, graph):
    return run_tiny_exaggeration(tmp_path_factory.mktemp("shifted"), "--cells", "5", "--steps", "-1:2:1",
                                 "--direction", f"gradient:{graph}")[:4]


def test_each_cell_moves_one_sd_along_its_own_gradient_of_the_class_that_tells_high(shifted):
    output, ae_dir, latents, codes = shifted
    rows = duckdb.sql(f"select * from read_parquet('{output / 'trajectories.parquet'}') where step_index = 0 "
                      "order by cell_index").df()
    table = duckdb.sql(f"select * from read_parquet('{latents}/part-*.parquet') "
                       "order by Metadata_Image, Metadata_ObjectNumber").df()
    index = table.set_index(["Metadata_Image", "Metadata_ObjectNumber"])
    chosen = index.loc[list(zip(rows.Metadata_Image, rows.Metadata_ObjectNumber)), [f"z_{k}" for k in range(4)]]
    chosen = chosen.to_numpy(np.float64)
    logits, _ = _torch_shift(chosen, np.full(len(chosen), -1))
    probabilities = torch.softmax(torch.from_numpy(logits), 1).numpy()
    high = (rows.group == "high").to_numpy()
    target = int(np.argmax(probabilities[high].mean(0) - probabilities[~high].mean(0)))
    _, gradients = _torch_shift(chosen, np.full(len(chosen), target))
    all_codes = table[[f"z_{k}" for k in range(4)]].to_numpy(np.float64)
    mean, std = all_codes.mean(0), all_codes.std(0)
    units = gradients * std / np.linalg.norm(gradients * std, axis=1, keepdims=True)
    expected = std * units * (((all_codes - mean) / std) @ units.T).std(0)[:, None]
    images = zarr.open_group(str(output / "images.zarr"), mode="r")
    np.testing.assert_allclose(images["step_latent"][...], expected, rtol=1e-4, atol=1e-6)
    record = json.loads((output / "direction.json").read_text())
    assert record["method"] == "gradient" and record["target_class"] == "abc"[target]
    steps = np.arange(-1.0, 2.5, 1.0)
    moved = (chosen[:, None, :] + steps[None, :, None] * images["step_latent"][...][:, None, :]).reshape(-1, 4)
    (decoded,) = open_decoder(read_autoencoder(ae_dir), device="cpu").run(["image"], {"z": moved.astype(np.float32)})
    np.testing.assert_allclose(images["decoded"][...].reshape(decoded.shape), decoded, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file"),
    ("decoder", "not a Latent Shift graph"),
    ("wide", "is made for codes of 5 features and crops 3,16,16; the autoencoder has 4"),
])
def test_a_graph_that_does_not_fit_is_refused(tmp_path, capsys, shifted, case, match):
    _, ae_dir, latents, _ = shifted
    if case == "wide":
        assert _export(tmp_path, "wide", "wide.onnx")[0] == 0
    graph = {"missing": tmp_path / "nope.onnx", "decoder": read_autoencoder(ae_dir).decoder_path,
             "wide": tmp_path / "wide.onnx"}[case]
    output = tmp_path / "out"
    code = main(["exaggerate", str(latents), "-a", str(ae_dir), "--high", HIGH, "--low", LOW, "-o", str(output),
                 "--direction", f"gradient:{graph}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --direction: ") and err.count("\n") == 1 and match in err, err
    assert not output.exists()


def test_a_classifier_given_as_the_autoencoder_is_refused(tmp_path, capsys):
    code, output = _export(tmp_path, "classifier")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not an autoencoder: it has no encode or decode method" in err, err
    assert not output.exists()


@pytest.mark.parametrize("option, values", [
    ("--autoencoder-std", "300,0,300"), ("--autoencoder-std", "300,300,-1"), ("--std", "0,300,300"),
])
def test_every_std_must_be_positive(tmp_path, capsys, option, values):
    """Each std divides: zero or negative is refused by the option's role, whatever its name."""
    factories = tmp_path / "factories.py"
    factories.write_text(textwrap.dedent(FACTORIES))
    stds = {"--autoencoder-std": "300,300,300", "--std": "300,300,300", option: values}
    argv = ["export-latent-shift", f"{factories}:autoencoder", f"{factories}:classifier", "--input-shape",
            ",".join(map(str, CROP_2D)), "-o", str(tmp_path / "shift.onnx"), "--autoencoder-mean", "100,100,100",
            "--mean", "100,100,100", *(item for pair in stds.items() for item in pair), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: every value must be > 0") and err.count("\n") == 1
    assert not (tmp_path / "shift.onnx").exists()
