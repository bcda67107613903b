"""Export common CNN architectures and check their CAMs against the torch reference.

Every architecture is exported twice: at its last convolutional block (the usual Grad-CAM
layer) and at one earlier block. ``export_model`` validates itself (ORT vs torch autograd);
the test then checks ORT's CAMs on a fresh random input against the independent float64
reference of tests/reference.py. Weights are random (``weights=None``, nothing downloaded);
batch-norm statistics are calibrated on random inputs so activations are O(1).
"""

import pathlib
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from gradcamo import export_model
from gradcamo.models import EfficientNet3dSmall, adapt_first_conv
from gradcamo.scorer.cam import compute_cam, resize_cam

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from reference import torch_gradcam  # noqa: E402

N_CLASSES = 3
SHAPE_2D = (5, 64, 64)
SHAPE_3D = (5, 8, 32, 32)
CAM_RTOL = 1e-3
"""CAM error allowed, relative to the sample's largest |CAM| (float32 ORT vs float64 torch)."""


def _torchvision(name):
    return lambda: adapt_first_conv(getattr(torchvision.models, name)(weights=None, num_classes=N_CLASSES), 5)


def _video(name):
    return lambda: adapt_first_conv(getattr(torchvision.models.video, name)(weights=None, num_classes=N_CLASSES), 5)


# name -> (builder, input shape, (last conv block, earlier block), slow)
ARCHITECTURES = {
    "resnet18": (_torchvision("resnet18"), SHAPE_2D, ("layer4", "layer2"), False),
    "resnet50": (_torchvision("resnet50"), SHAPE_2D, ("layer4", "layer2"), True),
    "densenet121": (_torchvision("densenet121"), SHAPE_2D, ("features", "features.denseblock3"), True),
    "efficientnet_b0": (_torchvision("efficientnet_b0"), SHAPE_2D, ("features.8", "features.4"), True),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), SHAPE_2D, ("features.12", "features.6"), True),
    "convnext_tiny": (_torchvision("convnext_tiny"), SHAPE_2D, ("features.7", "features.3"), True),
    "vgg11_bn": (_torchvision("vgg11_bn"), SHAPE_2D, ("features.27", "features.13"), True),
    "regnet_y_400mf": (_torchvision("regnet_y_400mf"), SHAPE_2D, ("trunk_output.block4", "trunk_output.block2"), True),
    "r3d_18": (_video("r3d_18"), SHAPE_3D, ("layer4", "layer2"), True),
    "mc3_18": (_video("mc3_18"), SHAPE_3D, ("layer4", "layer2"), True),
    "r2plus1d_18": (_video("r2plus1d_18"), SHAPE_3D, ("layer4", "layer2"), True),
    "EfficientNet3dSmall": (
        lambda: EfficientNet3dSmall(in_channels=5, num_classes=N_CLASSES), SHAPE_3D, ("head", "blocks.2"), False,
    ),
}
REQUIRED = {
    "resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny",
    "vgg11_bn", "regnet_y_400mf", "r3d_18", "mc3_18", "r2plus1d_18", "EfficientNet3dSmall",
}
CASES = [
    pytest.param(name, layer, id=f"{name}-{layer}", marks=[pytest.mark.slow] if slow else [])
    for name, (_, _, layers, slow) in ARCHITECTURES.items()
    for layer in layers
]


def test_all_architectures_tested():
    """Coverage guard: every required architecture is exported at two layers."""
    missing = REQUIRED - set(ARCHITECTURES)
    assert not missing, f"architectures without an export test: {sorted(missing)}"
    tested = {}
    for param in CASES:
        tested.setdefault(param.values[0], set()).add(param.values[1])
    assert all(len(layers) == 2 for layers in tested.values()), tested
    assert set(tested) >= REQUIRED


def _signed_cam_scale(reference):
    alpha = reference.gradients.mean(axis=tuple(range(2, reference.gradients.ndim)))
    signed = np.einsum("nk,nk...->n...", alpha, reference.activations)
    return np.abs(signed).reshape(len(signed), -1).max(axis=1)


def _calibrate_batchnorm(model, input_shape):
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn((4, *input_shape), generator=generator))
    return model.eval()


def _build(name):
    builder, input_shape, _, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    return _calibrate_batchnorm(builder(), input_shape), input_shape


@pytest.mark.parametrize(("name", "layer"), CASES)
def test_exported_cam_matches_reference(name, layer, tmp_path):
    model, input_shape = _build(name)
    result = export_model(model, layer, input_shape, tmp_path / "model.onnx", validate=True)
    assert result.validation.cam_max_rel_error < CAM_RTOL

    image = np.random.default_rng(2).standard_normal((2, *input_shape)).astype(np.float32)
    target = np.array([-1, 1], dtype=np.int64)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits, activations, gradients = session.run(
        ["logits", "activations", "gradients"], {"image": image, "target": target}
    )
    del session
    reference = torch_gradcam(model, layer, image, target)

    np.testing.assert_array_equal(np.where(target < 0, logits.argmax(axis=1), target), reference.targets)
    assert activations.shape == reference.activations.shape
    cam = compute_cam(activations, gradients)
    crop = resize_cam(cam, input_shape[1:])
    scale = np.abs(reference.cam).reshape(len(cam), -1).max(axis=1)
    # an all-negative weighted sum gives an empty CAM: then measure against its pre-ReLU scale
    scale = np.where(scale > 0, scale, _signed_cam_scale(reference))
    for got, expected, what in ((cam, reference.cam, "layer"), (crop, reference.upsampled, "crop")):
        error = np.abs(got - expected).reshape(len(cam), -1).max(axis=1) / scale
        assert np.all(error < CAM_RTOL), f"{name} {layer}: {what} CAM relative error {error.max():.3g}"


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: torchvision.models.resnet18(weights=None), "conv1"),
        (lambda: torchvision.models.convnext_tiny(weights=None), "features.0.0"),
        (lambda: torchvision.models.video.r2plus1d_18(weights=None), "stem.0"),
    ],
)
def test_adapt_first_conv_keeps_hyperparameters(build, path):
    model = build()
    before = model.get_submodule(path)
    assert adapt_first_conv(model, 5) is model
    after = model.get_submodule(path)
    assert after is not before and type(after) is type(before)
    assert after.in_channels == 5
    for attribute in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(after, attribute) == getattr(before, attribute), attribute
    assert (after.bias is None) == (before.bias is None)


def test_adapt_first_conv_rejects_models_without_convolutions():
    with pytest.raises(ValueError, match="no Conv2d or Conv3d found"):
        adapt_first_conv(torch.nn.Sequential(torch.nn.Linear(3, 2)), 5)
