"""Transformers and timm CNNs: token and channels-last target layers, read with no flag, score as the references do.

Each model (random weights, no download) is exported with no layout flag; the exporter
decides the layout from the model (timm's ``patch_embed``/``num_prefix_tokens``,
torchvision's ``VisionTransformer``), the layer type or the shape. Then, on seeded crops and
masks:

- ``--convention pytorch-grad-cam``: the scorer's head on the exported graph gives the
  Grad-CAMO of pytorch-grad-cam's ``GradCAM`` run with its documented ``reshape_transform``
  (the library's tutorial functions, prefix tokens dropped), within 1e-5;
- raw convention: the ORT layer-resolution CAMs and the head's Grad-CAMO equal the
  independent float64 torch reference of tests/reference.py given the same reshape.

The measured worst differences are printed (``pytest -s``).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from torch import nn

from gradcamo import contract, export_model
from gradcamo.cam import compute_cam, gradcamo_score
from gradcamo.scorer.head import CAM_INSIDE, CAM_TOTAL, MASK, append_score_head
from tests.reference import calibrate_batchnorm, torch_gradcam, torch_gradcamo
from tests.test_pytorch_grad_cam import _library

N_CLASSES = 3
SHAPE = (3, 32, 32)


def vit_reshape_transform(tensor, height, width, prefix):
    """pytorch-grad-cam's ViT ``reshape_transform`` (its tutorial), with ``prefix`` tokens dropped instead of 1."""
    result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape_transform(tensor, height, width):
    """pytorch-grad-cam's Swin ``reshape_transform`` (its tutorial)."""
    result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
    return result.transpose(2, 3).transpose(1, 2)


def _timm_vit():
    torch.manual_seed(0)  # one class token and two register tokens: 3 prefix tokens
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=48, num_heads=2, reg_tokens=2, num_classes=N_CLASSES)


def _timm_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                             depths=(1, 1, 1), embed_dim=24, num_heads=(1, 1, 1), num_classes=N_CLASSES)


def _torchvision_vit():
    """torchvision's ``VisionTransformer`` (vit_b_16's class), tiny; its zero-initialised head randomised."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=N_CLASSES)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _vit_b_16():
    """torchvision's vit_b_16 itself (12 blocks, 64 px crops), its zero-initialised head randomised."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=N_CLASSES)
    nn.init.normal_(model.heads.head.weight, std=0.05)
    return model


def _calibrated(name, shape):
    def build():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=N_CLASSES)
        calibrate_batchnorm(model, shape, batches=2, batch_size=4)
        return model
    return build


# name -> (builder, target layer, crop shape, expected layout, pytorch-grad-cam reshape_transform)
CASES = {
    "timm-vit": (_timm_vit, "blocks.1.norm1", SHAPE, "tokens", lambda t: vit_reshape_transform(t, 4, 4, 3)),
    "timm-swin": (_timm_swin, "layers.1", SHAPE, "nhwc", lambda t: swin_reshape_transform(t, 4, 4)),
    "torchvision-vit": (_torchvision_vit, "encoder.layers.encoder_layer_1.ln_1", SHAPE, "tokens",
                        lambda t: vit_reshape_transform(t, 4, 4, 1)),
    "torchvision-vit_b_16": (_vit_b_16, "encoder.layers.encoder_layer_11.ln_1", (3, 64, 64), "tokens",
                             lambda t: vit_reshape_transform(t, 4, 4, 1)),
    "timm-convnext": (_calibrated("convnext_atto", (3, 64, 64)), "stages.2", (3, 64, 64), "nchw", None),
    "timm-efficientnet": (_calibrated("efficientnet_b0", (3, 64, 64)), "blocks.5", (3, 64, 64), "nchw", None),
}
SLOW = {"torchvision-vit_b_16", "timm-convnext", "timm-efficientnet"}


@pytest.fixture(scope="module", params=[pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in CASES])
def exported(request, tmp_path_factory):
    builder, layer, shape, layout, reshape = CASES[request.param]
    model = builder().eval()
    path = tmp_path_factory.mktemp("layouts") / "model.onnx"
    result = export_model(model, layer, shape, path)
    assert result.layout.layout == layout
    generator = np.random.default_rng(3)
    image = generator.standard_normal((4, *shape)).astype(np.float32)
    mask = generator.random((4, *shape[1:])) < 0.3
    return request.param, model, layer, reshape, onnx.load(str(path)), image, mask, np.array([0, 1, 2, -1])


def _head_scores(model_proto, image, mask, targets, convention):
    headed = append_score_head(model_proto, crop_spatial=image.shape[2:], convention=convention)
    session = ort.InferenceSession(headed.SerializeToString(), providers=["CPUExecutionProvider"])
    inside, total = session.run([CAM_INSIDE, CAM_TOTAL], {contract.IMAGE: image, contract.TARGET: targets,
                                                          MASK: mask.astype(np.float32)})
    return inside / total


def test_pytorch_grad_cam_convention_equals_the_library_with_its_reshape_transform(exported):
    name, model, layer, reshape, proto, image, mask, targets = exported
    predicted = model(torch.from_numpy(image)).argmax(1).numpy()
    explicit = np.where(targets < 0, predicted, targets)
    output = _library("gradcam", model, image, explicit, layer, reshape_transform=reshape)[0]
    expected = gradcamo_score(output, mask)[2]
    ours = _head_scores(proto, image, mask, targets, "pytorch-grad-cam")
    print(f"{name}: pytorch-grad-cam Grad-CAMO max |diff| {np.nanmax(np.abs(ours - expected)):.1e}")
    assert np.isfinite(expected).sum() >= 3  # NaN (an empty map) must be NaN in both
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_raw_convention_equals_the_torch_reference(exported):
    name, model, layer, reshape, proto, image, mask, targets = exported
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    _, activations, gradients = session.run(list(contract.OUTPUT_NAMES), {contract.IMAGE: image,
                                                                          contract.TARGET: targets})
    reference = torch_gradcam(model, layer, image, targets, reshape=reshape)
    cam_error = np.max(np.abs(compute_cam(activations, gradients) - reference.cam)) / np.max(reference.cam)
    expected = torch_gradcamo(model, layer, image, mask, targets, reshape=reshape)[2]
    ours = _head_scores(proto, image, mask, targets, "raw")
    print(f"{name}: raw CAM max rel error {cam_error:.1e}, Grad-CAMO max |diff| {np.nanmax(np.abs(ours - expected)):.1e}")
    assert cam_error < 1e-4
    assert np.isfinite(expected).sum() >= 3
    np.testing.assert_allclose(ours, expected, atol=1e-5)
