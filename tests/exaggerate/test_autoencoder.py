"""export-autoencoder: ONNX encoder/decoder vs torch (2D, 3D), the AE_DIR description, and bad input
(exit 2, one line, nothing written)."""

import hashlib
import json
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch

import gradcamo
from gradcamo.cli import main
from gradcamo.errors import InputError
from gradcamo.exaggerate.autoencoder import export_autoencoder, open_decoder, open_encoder, read_autoencoder
from tests.tiny_models import CROP_2D, CROP_3D, tiny_autoencoder

MEAN, STD = [100.0, 50.0, 0.0], [300.0, 20.0, 1.0]
RTOL = 1e-5
"""Same float32 ops in another order: ~1e-7 of the output's scale here; a missing or wrong
normalisation would be off by order 1."""


def _torch_reference(model, crops):
    """Encode and decode raw crops with the normalisation written out here, independently of gradcamo."""
    view = (1, -1) + (1,) * (crops.ndim - 2)
    mean, std = torch.tensor(MEAN).reshape(view), torch.tensor(STD).reshape(view)
    with torch.no_grad():
        codes = model.encode((torch.from_numpy(crops) - mean) / std)
        return codes.numpy(), (model.decode(codes) * std + mean).numpy()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_onnx_encoder_and_decoder_match_torch(spatial_dims, tmp_path):
    crop = CROP_2D if spatial_dims == 2 else CROP_3D
    model = tiny_autoencoder(spatial_dims)
    info = export_autoencoder(model, crop, tmp_path / "ae", mean=MEAN, std=STD)
    crops = np.random.default_rng(5).uniform(0, 400, (5, *crop)).astype(np.float32)
    codes, decoded = _torch_reference(model, crops)
    encoder, decoder = open_encoder(info, device="cpu"), open_decoder(info, device="cpu")
    for batch in (slice(0, 1), slice(0, 5)):  # the batch axis is dynamic
        (onnx_codes,) = encoder.run(["z"], {"image": crops[batch]})
        np.testing.assert_allclose(onnx_codes, codes[batch], rtol=0, atol=RTOL * np.abs(codes).max())
        (onnx_decoded,) = decoder.run(["image"], {"z": onnx_codes})
        assert onnx_decoded.shape == crops[batch].shape
        np.testing.assert_allclose(onnx_decoded, decoded[batch], rtol=0, atol=RTOL * np.abs(decoded).max())
    assert info.latent_size == 4 and info.input_shape == crop and info.spatial_dims == spatial_dims


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An AE_DIR of the tiny 2D autoencoder, normalised by std only; do not modify it."""
    directory = tmp_path_factory.mktemp("exported") / "ae"
    export_autoencoder(tiny_autoencoder(2), CROP_2D, directory, std=[2.0, 2.0, 2.0])
    return directory


def test_the_directory_describes_itself(exported, tmp_path):
    (tmp_path / "ae").symlink_to(exported)
    info = read_autoencoder(tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == ["autoencoder.json", "decoder.onnx", "encoder.onnx"]
    described = json.loads((tmp_path / "ae" / "autoencoder.json").read_text())
    assert {k: described[k] for k in ("format", "version", "latent_size", "input_shape", "mean", "std")} == {
        "format": "gradcamo-autoencoder", "version": 1, "latent_size": 4, "input_shape": [3, 16, 16],
        "mean": None, "std": [2.0, 2.0, 2.0],
    }
    for name in ("encoder", "decoder"):
        expected = hashlib.sha256((tmp_path / "ae" / f"{name}.onnx").read_bytes()).hexdigest()
        assert described[f"{name}_sha256"] == expected == getattr(info, f"{name}_sha256")
    assert described["gradcamo_version"] == gradcamo.__version__
    assert described["source"] == "tests.tiny_models.TinyAutoencoder"
    assert described["validation"]["encoder_max_rel_error"] <= described["validation"]["rtol"] == 1e-4
    assert info.directory == exported and info.encoder_path == exported / "encoder.onnx"


FACTORIES = textwrap.dedent(
    """
    import torch
    from tests.tiny_models import CROP_2D, TinyAutoencoder, tiny_classifier

    def ae():
        return TinyAutoencoder(2, CROP_2D)

    def classifier():
        return tiny_classifier(2)

    class Cropping(TinyAutoencoder):
        def decode(self, z):
            return super().decode(z)[..., 1:]

    def cropping():
        return Cropping(2, CROP_2D)

    class Sampling(TinyAutoencoder):  # a VAE that samples in decode: no graph can match torch
        def decode(self, z):
            return super().decode(z + torch.randn_like(z))

    def sampling():
        return Sampling(2, CROP_2D)
    """
)


@pytest.fixture()
def factories(tmp_path):
    (tmp_path / "nets.py").write_text(FACTORIES)
    return tmp_path / "nets.py"


def test_the_command_writes_a_directory_with_the_weights(factories, tmp_path, capsys):
    torch.manual_seed(3)
    trained = tiny_autoencoder(2).state_dict()
    trained = {k: torch.randn_like(v) for k, v in trained.items()}
    torch.save(trained, tmp_path / "w.pt")
    argv = ["export-autoencoder", f"{factories}:ae", "-s", "3,16,16", "-o", str(tmp_path / "ae"),
            "-w", str(tmp_path / "w.pt"), "--mean", "1,2,3", "--std", "4,5,6"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'ae'} (latent size 4, crop 3,16,16)")
    model = tiny_autoencoder(2)
    model.load_state_dict(trained)
    crops = np.random.default_rng(1).normal(2, 5, (3, *CROP_2D)).astype(np.float32)
    with torch.no_grad():
        view = (1, 3, 1, 1)
        expected = model.encode((torch.from_numpy(crops) - torch.tensor([1.0, 2, 3]).reshape(view))
                                / torch.tensor([4.0, 5, 6]).reshape(view)).numpy()
    (codes,) = open_encoder(read_autoencoder(tmp_path / "ae"), device="cpu").run(["z"], {"image": crops})
    np.testing.assert_allclose(codes, expected, rtol=0, atol=RTOL * np.abs(expected).max())


EXPORT_ERRORS = [
    ("not an autoencoder", ["{f}:classifier"],
     r"MODEL: .*nets.py:classifier \(Sequential\) is not an autoencoder: it has no encode or decode method"),
    ("wrong channels", ["{f}:ae", "-s", "2,16,16"], r"--input-shape: the model's encode rejects input \(2, 16, 16\): "),
    ("wrong size", ["{f}:ae", "-s", "3,12,12"], r"--input-shape: the model's encode rejects input \(3, 12, 12\): "),
    ("wrong rank", ["{f}:ae", "-s", "3,16"], r"--input-shape: expected C,H,W \(2D\) or C,D,H,W \(3D\) .* got \(3, 16\)"),
    ("decode changes the shape", ["{f}:cropping"],
     r"MODEL: decode returns shape \(2, 3, 16, 15\) for a batch of 2, not the input shape \(2, 3, 16, 16\)"),
    ("graphs disagree with torch", ["{f}:sampling"],
     r"the exported autoencoder disagrees with torch: decoder relative error .* > 0.0001"),
    ("mean length", ["{f}:ae", "--mean", "1,2"], r"--mean: expected 3 values \(one per channel\), got 2"),
    ("std negative", ["{f}:ae", "--std", "1,-2,1"], r"--std: every value must be > 0, got \[1.0, -2.0, 1.0\]"),
    ("output is a file", ["{f}:ae", "-o", "{t}/nets.py"], r"-o .*nets.py: exists and is not a directory"),
    ("missing factory", ["{f}:nope"], r"MODEL: .* has no callable 'nope'"),
]


@pytest.mark.parametrize("case", EXPORT_ERRORS, ids=[c[0] for c in EXPORT_ERRORS])
def test_export_autoencoder_bad_input(case, factories, tmp_path, capsys):
    _, overrides, pattern = case
    spec, *rest = [arg.format(f=factories, t=tmp_path) for arg in overrides]
    options = {"-s": "3,16,16", "-o": str(tmp_path / "ae"), **dict(zip(rest[::2], rest[1::2]))}
    before = sorted(tmp_path.iterdir())
    code = main(["export-autoencoder", spec, *[item for pair in options.items() for item in pair]])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and re.search(pattern, error), error
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no staging directory left


def _tampered(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "ae")
    (tmp_path / "ae" / "encoder.onnx").write_bytes(b"\x08")
    return tmp_path / "ae"


READ_ERRORS = [
    ("missing", lambda ae, t: t / "absent", r"absent: not an autoencoder directory \(no such directory\)"),
    ("no description", lambda ae, t: t, r"not an autoencoder directory \(no autoencoder.json\)"),
    ("replaced graph", _tampered, r"encoder.onnx differs from the graph autoencoder.json records"),
]


@pytest.mark.parametrize("case", READ_ERRORS, ids=[c[0] for c in READ_ERRORS])
def test_read_autoencoder_refuses_what_is_not_one(case, exported, tmp_path):
    _, make, pattern = case
    with pytest.raises(InputError, match=pattern) as raised:
        read_autoencoder(make(exported, tmp_path))
    assert raised.value.argument == "ae_dir"
