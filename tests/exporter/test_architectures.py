"""Export common CNN architectures and check their CAMs against the torch reference.

Every architecture is exported twice: at its last convolutional block (the usual Grad-CAM
layer) and at one earlier block. ``export_model`` validates itself (ORT vs torch autograd);
the test then checks ORT's CAMs on a fresh random input against the independent float64
reference of tests/reference.py. Weights are random (``weights=None``, nothing downloaded);
batch-norm statistics are calibrated on random inputs so activations are O(1).
"""


import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from gradcamo import export_model
from gradcamo.errors import ValidationError
from gradcamo.models import EfficientNet3dSmall, adapt_first_conv
from gradcamo.cam import compute_cam, resize_cam

from tests.reference import calibrate_batchnorm, signed_cam_scale, torch_gradcam

N_CLASSES = 3
SHAPE_2D = (5, 64, 64)
SHAPE_3D = (5, 8, 32, 32)
CAM_RTOL = 1e-3
"""CAM error allowed, relative to the sample's largest |CAM| (float32 ORT vs float64 torch)."""


def _torchvision(name):
    return lambda: adapt_first_conv(getattr(torchvision.models, name)(weights=None, num_classes=N_CLASSES), 5)


def _video(name):
    return lambda: adapt_first_conv(getattr(torchvision.models.video, name)(weights=None, num_classes=N_CLASSES), 5)


# name -> (builder, input shape, (last conv block, earlier block))
ARCHITECTURES = {
    "resnet18": (_torchvision("resnet18"), SHAPE_2D, ("layer4", "layer2")),
    "resnet50": (_torchvision("resnet50"), SHAPE_2D, ("layer4", "layer2")),
    "densenet121": (_torchvision("densenet121"), SHAPE_2D, ("features", "features.denseblock3")),
    "efficientnet_b0": (_torchvision("efficientnet_b0"), SHAPE_2D, ("features.8", "features.4")),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), SHAPE_2D, ("features.12", "features.6")),
    "convnext_tiny": (_torchvision("convnext_tiny"), SHAPE_2D, ("features.7", "features.3")),
    "vgg11_bn": (_torchvision("vgg11_bn"), SHAPE_2D, ("features.27", "features.13")),
    "regnet_y_400mf": (_torchvision("regnet_y_400mf"), SHAPE_2D, ("trunk_output.block4", "trunk_output.block2")),
    "r3d_18": (_video("r3d_18"), SHAPE_3D, ("layer4", "layer2")),
    "mc3_18": (_video("mc3_18"), SHAPE_3D, ("layer4", "layer2")),
    "r2plus1d_18": (_video("r2plus1d_18"), SHAPE_3D, ("layer4", "layer2")),
    "EfficientNet3dSmall": (
        lambda: EfficientNet3dSmall(in_channels=5, num_classes=N_CLASSES), SHAPE_3D, ("head", "blocks.2"),
    ),
}
REQUIRED = {
    "resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny",
    "vgg11_bn", "regnet_y_400mf", "r3d_18", "mc3_18", "r2plus1d_18", "EfficientNet3dSmall",
}
FAST = {("resnet18", "layer4"), ("resnet18", "layer2"), ("r3d_18", "layer4"),
        ("EfficientNet3dSmall", "head"), ("EfficientNet3dSmall", "blocks.2")}
"""Run by default; the others are ``slow`` (the whole file takes ~25 min on 2 CPU cores)."""
KINK_FLIPS = {("resnet50", "layer2"), ("regnet_y_400mf", "trunk_output.block2"), ("mc3_18", "layer2")}
KINK_FLIP_REASON = (
    "export_model's validation refuses a correct graph (CAM error 0.03-0.06 > 1e-3): the gradient "
    "is discontinuous where a pre-ReLU value in a later block is ~1e-7 from zero, and float32 "
    "rounding (op order differs between torch eager, onnxruntime and its Conv+BatchNorm fusion) "
    "puts such values on either side; torch float32 itself differs from float64 by 0.5-4% on "
    "resnet50 layer2 gradients. Remove the mark once the validator tolerates isolated kink flips."
)


def _marks(name, layer):
    marks = [] if (name, layer) in FAST else [pytest.mark.slow]
    if (name, layer) in KINK_FLIPS:
        marks.append(pytest.mark.xfail(raises=ValidationError, strict=True, reason=KINK_FLIP_REASON))
    return marks


CASES = [
    pytest.param(name, layer, id=f"{name}-{layer}", marks=_marks(name, layer))
    for name, (_, _, layers) in ARCHITECTURES.items()
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


def _build(name):
    builder, input_shape, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    return calibrate_batchnorm(builder(), input_shape, batches=1, batch_size=4), input_shape


def _run(path, image, target, *, optimise):
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits", "activations", "gradients"], {"image": image, "target": target})


@pytest.mark.parametrize(("name", "layer"), CASES)
def test_exported_cam_matches_reference(name, layer, tmp_path):
    """ORT's CAMs on a fresh input match the float64 reference.

    Without graph optimisations (the graph run op by op as exported) the max error must be
    < 1e-3 of max |CAM|. With onnxruntime's default optimisations (as the scorer runs it)
    float32 rounding may put a value ~1e-7 from a ReLU/max-pool kink on the other side, which
    changes the gradient locally; there the CAM is checked in the L1 sense (total error
    < 1e-3 of the CAM's mass). Inputs are seeded, so the outcome is deterministic.
    """
    model, input_shape = _build(name)
    result = export_model(model, layer, input_shape, tmp_path / "model.onnx", validate=True)
    assert result.validation.cam_max_rel_error < CAM_RTOL

    image = np.random.default_rng(2).standard_normal((2, *input_shape)).astype(np.float32)
    target = np.array([-1, 1], dtype=np.int64)
    reference = torch_gradcam(model, layer, image, target)
    scale = np.abs(reference.cam).reshape(len(image), -1).max(axis=1)
    # an all-negative weighted sum gives an empty CAM: then measure against its pre-ReLU scale
    scale = np.where(scale > 0, scale, signed_cam_scale(reference))

    for optimise in (False, True):
        logits, activations, gradients = _run(result.path, image, target, optimise=optimise)
        np.testing.assert_array_equal(np.where(target < 0, logits.argmax(axis=1), target), reference.targets)
        assert activations.shape == reference.activations.shape
        cam = compute_cam(activations, gradients)
        crop = resize_cam(cam, input_shape[1:])
        for got, expected, what in ((cam, reference.cam, "layer"), (crop, reference.upsampled, "crop")):
            error = np.abs(got - expected).reshape(len(image), -1)
            if optimise:
                mass = np.abs(expected).reshape(len(image), -1).sum(axis=1)
                relative = error.sum(axis=1) / np.where(mass > 0, mass, scale)
            else:
                relative = error.max(axis=1) / scale
            assert np.all(relative < CAM_RTOL), (
                f"{name} {layer} (optimised={optimise}): {what} CAM relative error {relative.max():.3g}"
            )


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: torchvision.models.resnet18(weights=None), "conv1"),
        (lambda: torchvision.models.convnext_tiny(weights=None), "features.0.0"),
        (lambda: torchvision.models.video.r2plus1d_18(weights=None), "stem.0"),
    ],
    ids=["resnet18", "convnext_tiny", "r2plus1d_18"],
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
