"""decide_layout's rules on shapes and models alone (no export), and the conversion it returns."""

import pytest
import timm
import torch
from torch import nn

from gradcamo.exporter.layout import UndecidedLayout, decide_layout


@pytest.mark.parametrize(("shape", "crop", "layout"), [
    ((2, 512, 2, 2), (64, 64), "nchw"),
    ((2, 8, 8, 96), (32, 32), "nhwc"),
    ((2, 2, 2, 768), (64, 64), "nhwc"),
    ((2, 64, 12, 10), (48, 40), "nchw"),  # non-square crop, stride 4
    ((2, 12, 10, 16), (48, 40), "nhwc"),
    ((2, 64, 2, 8, 8), (8, 32, 32), "nchw"),  # 3D
    ((2, 2, 8, 8, 64), (8, 32, 32), "nhwc"),
    ((2, 24, 4, 8, 8), (8, 32, 32), "nchw"),  # depth stride 2, H and W stride 4
])
def test_the_shape_decides_when_one_reading_fits_the_crop(shape, crop, layout):
    decided = decide_layout(shape, crop)
    assert (decided.layout, decided.decided_by) == (layout, "shape")


@pytest.mark.parametrize(("shape", "crop"), [((2, 4, 4, 4), (16, 16)), ((2, 3, 50, 7), (32, 32)),
                                             ((2, 8, 8, 8, 8), (8, 32, 32))])
def test_the_shape_never_guesses(shape, crop):
    with pytest.raises(UndecidedLayout, match="give --target-layout nchw or nhwc"):
        decide_layout(shape, crop)


def test_the_layer_type_decides_before_the_shape():
    assert decide_layout((2, 4, 4, 4), (16, 16), layer=nn.Conv2d(3, 4, 4, stride=4)).layout == "nchw"
    assert decide_layout((2, 4, 4, 4), (16, 16), layer=nn.LayerNorm(4)).layout == "nhwc"
    assert decide_layout((2, 4, 4, 4), (16, 16), layer=nn.Identity(), layout="nhwc").decided_by == "flag"
    with pytest.raises(UndecidedLayout, match="give --target-layout nchw or nhwc"):  # normalises C, H and W
        decide_layout((2, 4, 4, 4), (16, 16), layer=nn.LayerNorm([4, 4, 4]))


class ConvertedGraph(nn.Module):
    """What an ONNX classifier converted to torch declares: each node module's tensor name and axes."""

    def __init__(self, axes):
        super().__init__()
        self.node = nn.Identity()
        self.graph_tensors = {"node": ("/block/Relu_output_0", axes)}


@pytest.mark.parametrize(("axes", "flag", "outcome"), [
    ("NHWC", None, "nhwc"), ("NCHW", None, "nchw"), ("NHWC", "nhwc", "nhwc"),
    (None, None, "give --target-layout nchw or nhwc"),  # the graph does not decide: the shape, then the flag
    (None, "nhwc", "nhwc"),
    ("NHWC", "nchw", r"--target-layout nchw: the ONNX graph defines '/block/Relu_output_0' as \(N,H,W,C\), "
                     "i.e. nhwc; drop --target-layout or give nhwc"),
    ("NWHC", None, r"'/block/Relu_output_0' has axes \(N,W,H,C\) in the ONNX graph: its spatial axes are not in"),
])
def test_an_onnx_graph_declares_its_tensors_axes(axes, flag, outcome):
    model = nn.Sequential(ConvertedGraph(axes))  # inside a wrapper, as under the --references head
    if outcome in ("nchw", "nhwc"):
        decided = decide_layout((2, 4, 4, 4), (16, 16), model=model, layer_name="0.node", layout=flag)
        assert (decided.layout, decided.decided_by) == (outcome, "ONNX graph" if axes else "flag")
    else:
        with pytest.raises(UndecidedLayout, match=outcome):
            decide_layout((2, 4, 4, 4), (16, 16), model=model, layer_name="0.node", layout=flag)


def test_a_dynamic_size_timm_vit_declares_the_grid_of_the_crop():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              embed_dim=16, num_heads=2, num_classes=3, dynamic_img_size=True, reg_tokens=1)
    decided = decide_layout((2, 2 + 6 * 5, 16), (48, 40), model=model, layer_name="blocks.0.norm1")
    assert (decided.token_grid, decided.prefix_tokens, decided.decided_by) == ((6, 5), 2, "model")


def test_a_wrapped_model_declares_through_its_inner_module():
    inner = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              embed_dim=16, num_heads=2, num_classes=3)
    decided = decide_layout((2, 17, 16), (32, 32), model=nn.Sequential(inner), layer_name="0.blocks.0.norm1")
    assert (decided.token_grid, decided.prefix_tokens, decided.decided_by) == ((4, 4), 1, "model (0)")


def test_the_conversion_is_the_reshape_transform():
    tokens = torch.randn(2, 3 + 4 * 5, 7)
    decided = decide_layout(tokens.shape, (16, 20), layout="tokens", token_grid=(4, 5), prefix_tokens=3)
    expected = tokens[:, 3:, :].reshape(2, 4, 5, 7).transpose(2, 3).transpose(1, 2)
    assert torch.equal(decided.to_channels_first(tokens), expected)
    maps = torch.randn(2, 4, 5, 7)
    assert torch.equal(decide_layout(maps.shape, (16, 20), layout="nhwc").to_channels_first(maps),
                       maps.permute(0, 3, 1, 2))
