"""Layouts at the command line: flags, refusals (one line, exit 2, nothing written), `inspect` and `gradcamo layers`."""

import json
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from gradcamo import contract
from gradcamo.cam import compute_cam
from gradcamo.cli import main
from tests.reference import torch_gradcam

FACTORIES = textwrap.dedent(
    """
    import timm
    import torch
    import torchvision
    from torch import nn


    def vit():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                 embed_dim=48, num_heads=2, num_classes=3)


    def torchvision_vit():  # its head is zero-initialised, as vit_b_16's
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=3)


    class Tokens(nn.Module):
        '''Patchify to (N, 16, 8) tokens (4x4 grid of a 16x16 crop), a token MLP, mean over tokens, a head.'''

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.patch = nn.Conv2d(2, 8, 4, stride=4)
            self.mix = nn.Sequential(nn.Linear(8, 8), nn.GELU())
            self.block = nn.Identity()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            return self.head(self.block(self.mix(tokens) + tokens).mean(dim=1))


    def tokens():
        return Tokens()


    def square():
        '''A 16x16 crop to (N, 4, 4, 4) maps: channels-first or -last fit alike.'''
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 4, stride=4), nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3))
    """
)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(FACTORIES)
    return path


def _refused(capsys, argv, output, *expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not output.exists()


REFUSALS = {
    "undecidable layout": ("square", "1", "2,16,16", [], ["fits a 16x16 crop both as channels-first", "--target-layout nchw or nhwc"]),
    "tokens without a grid": ("tokens", "block", "2,16,16", [], ["declares no token grid", "--token-grid H,W and --prefix-tokens N"]),
    "token count off the model's grid": ("vit", "patch_embed", "3,32,32", [], ["outputs 16 tokens", "grid 4x4 with 1 prefix tokens makes 17", "--token-grid"]),
    "token count off the flags' grid": ("tokens", "block", "2,16,16", ["--token-grid", "3,3", "--prefix-tokens", "1"], ["outputs 16 tokens", "makes 10"]),
    "token flags on maps": ("square", "1", "2,16,16", ["--token-grid", "4,4"], ["apply to token outputs"]),
    "zero gradient (last block, class token only)": ("vit", "blocks.1", "3,32,32", [], ["the gradient of the logits with respect to 'blocks.1' is zero on every validation input", "choose an earlier layer; `gradcamo layers` lists candidates"]),
    "zero gradient (zero-initialised head)": ("torchvision_vit", "encoder.layers.encoder_layer_0.ln_1", "3,32,32", [], ["is zero on every validation input"]),
    "no such layer": ("vit", "blocks.7.norm1", "3,32,32", [], ["has no layer 'blocks.7.norm1'", "`gradcamo layers MODEL --input-shape ...`"]),
    "bad layout name": ("square", "1", "2,16,16", ["--target-layout", "chw"], ["--target-layout: expected one of nchw, nhwc, tokens"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_export_refuses_in_one_line(nets, tmp_path, capsys, case):
    factory, layer, shape, extra, expected = REFUSALS[case]
    output = tmp_path / "m.onnx"
    argv = ["export", f"{nets}:{factory}", "-l", layer, "-s", shape, "-o", str(output), *extra]
    _refused(capsys, argv, output, *expected)


def test_token_flags_export_and_match_the_reference(nets, tmp_path, capsys):
    output = tmp_path / "m.onnx"
    argv = ["export", f"{nets}:tokens", "-l", "block", "-s", "2,16,16", "-o", str(output),
            "--token-grid", "4,4", "--prefix-tokens", "0"]
    assert main(argv) == 0
    assert "target layer block read as tokens (grid 4x4 after 0 prefix tokens, from the flag)" in capsys.readouterr().out
    assert main(["inspect", str(output), "--json"]) == 0
    metadata = json.loads(capsys.readouterr().out)["metadata"]
    assert json.loads(metadata[contract.META_TARGET_LAYOUT]) == {
        "layout": "tokens", "decided_by": "flag", "token_grid": [4, 4], "prefix_tokens": 0}
    assert main(["inspect", str(output)]) == 0
    assert "target layout" in capsys.readouterr().out

    namespace = {}
    exec(FACTORIES, namespace)
    image = np.random.default_rng(0).standard_normal((3, 2, 16, 16)).astype(np.float32)
    targets = np.array([0, 2, -1])
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    _, activations, gradients = session.run(list(contract.OUTPUT_NAMES), {"image": image, "target": targets})
    reference = torch_gradcam(namespace["tokens"](), "block", image, targets,
                              reshape=lambda t: t.reshape(len(t), 4, 4, t.shape[-1]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(compute_cam(activations, gradients), reference.cam, atol=1e-5 * reference.cam.max())


def test_an_explicit_layout_overrides_the_shape(nets, tmp_path, capsys):
    output = tmp_path / "m.onnx"
    assert main(["export", f"{nets}:square", "-l", "1", "-s", "2,16,16", "-o", str(output),
                 "--target-layout", "nchw"]) == 0
    assert "read as nchw (from the flag)" in capsys.readouterr().out


def test_layers_lists_shapes_layouts_gradients_and_suggests_one(nets, capsys):
    assert main(["layers", f"{nets}:vit", "--input-shape", "3,32,32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in lines[1:-1]}
    assert lines[-1] == "suggested target layer: blocks.1.norm1"
    assert rows["blocks.1.norm1"].startswith("*")
    assert "(N, 17, 48)" in rows["blocks.1.norm1"] and "tokens (grid 4x4 after 1 prefix token" in rows["blocks.1.norm1"]
    assert rows["blocks.1.norm1"].endswith("non-zero") and rows["blocks.1"].endswith("zero")
    assert rows["blocks.1"].rstrip().endswith(" zero")
    assert "refused: 16 tokens != 1 + 4x4" in rows["patch_embed"]
    assert "nchw (from the layer type)" in rows["patch_embed.proj"]


def test_layers_says_when_no_layer_has_a_gradient(nets, capsys):
    assert main(["layers", f"{nets}:torchvision_vit", "--input-shape", "3,32,32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("no usable target layer")
    assert not any(line.startswith("*") for line in out)
