"""Exported graphs run by onnxruntime vs the independent torch reference (tests/reference.py).

Small seeded 2D and 3D models are exported with a baked-in mean/std; a batch mixing
explicit targets and -1 (predicted class) must give the reference's logits, activations,
gradients, CAMs and Grad-CAMO scores, and the same numbers as running the samples one by one.
"""


import numpy as np
import onnxruntime as ort
import pytest
import torch

from gradcamo import export_model
from gradcamo.models import EfficientNet3dSmall, TinyCNN2d
from gradcamo.cam import compute_cam, gradcamo_score, resize_cam

from tests.reference import calibrate_batchnorm, signed_cam_scale, torch_gradcam, torch_gradcamo

RTOL = 1e-4
"""Errors are measured relative to the largest |value| of the sample (float32 graph vs float64 reference)."""

CASES = {
    "tiny2d-block3": (TinyCNN2d, "features.block3", (5, 32, 32)),
    "tiny2d-block1": (TinyCNN2d, "features.block1", (5, 32, 32)),
    "effnet3d-head": (EfficientNet3dSmall, "head", (5, 8, 32, 32)),
}
N_CLASSES = 3
TARGETS = np.array([-1, 0, 2, -1, 1], dtype=np.int64)


class Exported:
    """An exported model, its ORT session and what it was exported from."""

    def __init__(self, model, layer, input_shape, mean, std, result):
        self.model, self.layer, self.input_shape, self.result = model, layer, input_shape, result
        self.mean, self.std = mean, std
        self.session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])

    def run(self, image, target):
        return self.session.run(["logits", "activations", "gradients"], {"image": image, "target": target})

    def make_image(self, seed, n):
        """Raw intensities whose normalised values are ~N(0, 1)."""
        rng = np.random.default_rng(seed)
        view = (1, -1) + (1,) * (len(self.input_shape) - 1)
        image = rng.standard_normal((n, *self.input_shape)) * np.reshape(self.std, view) + np.reshape(self.mean, view)
        return image.astype(np.float32)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    factory, layer, input_shape = CASES[request.param]
    torch.manual_seed(0)
    model = factory(in_channels=input_shape[0], num_classes=N_CLASSES).eval()
    calibrate_batchnorm(model, input_shape, batches=2, batch_size=8)
    n_channels = input_shape[0]
    mean = [float(v) for v in np.linspace(10.0, 50.0, n_channels)]
    std = [float(v) for v in np.linspace(2.0, 6.0, n_channels)]
    path = tmp_path_factory.mktemp("numerics") / f"{request.param}.onnx"
    result = export_model(model, layer, input_shape, path, mean=mean, std=std)
    return Exported(model, layer, input_shape, mean, std, result)


def _assert_close_per_sample(got, expected, rtol, what, scale=None):
    if scale is None:
        scale = np.abs(expected).reshape(len(expected), -1).max(axis=1)
    error = np.abs(got.astype(np.float64) - expected).reshape(len(expected), -1).max(axis=1)
    assert np.all(scale > 0), f"{what}: reference is all zero for some sample"
    relative = error / scale
    assert np.all(relative < rtol), f"{what}: max relative error {relative.max():.3g} >= {rtol:g}"


def test_export_validated(exported):
    assert exported.result.validation is not None
    assert exported.result.validation.cam_max_rel_error < RTOL


def test_outputs_match_reference(exported):
    image = exported.make_image(seed=10, n=len(TARGETS))
    logits, activations, gradients = exported.run(image, TARGETS)
    reference = torch_gradcam(
        exported.model, exported.layer, image, TARGETS, mean=exported.mean, std=exported.std
    )
    np.testing.assert_array_equal(np.where(TARGETS < 0, logits.argmax(axis=1), TARGETS), reference.targets)
    assert activations.shape == reference.activations.shape
    _assert_close_per_sample(logits, reference.logits, RTOL, "logits")
    _assert_close_per_sample(activations, reference.activations, RTOL, "activations")
    _assert_close_per_sample(gradients, reference.gradients, RTOL, "gradients")


@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_cams_and_scores_match_reference(exported, convention):
    image = exported.make_image(seed=11, n=len(TARGETS))
    _, activations, gradients = exported.run(image, TARGETS)
    reference = torch_gradcam(
        exported.model, exported.layer, image, TARGETS, mean=exported.mean, std=exported.std,
        convention=convention,
    )
    cam = compute_cam(activations, gradients, convention=convention)
    assert np.all(reference.cam.reshape(len(cam), -1).max(axis=1) > 0), "degenerate test: empty CAM"
    # raw: relative to the pre-ReLU scale; min-max scaled maps are already O(1)
    scale = signed_cam_scale(reference) if convention == "raw" else np.ones(len(cam))
    _assert_close_per_sample(cam, reference.cam, RTOL, "layer CAM", scale)
    crop = resize_cam(cam, exported.input_shape[1:], convention=convention)
    _assert_close_per_sample(crop, reference.upsampled, RTOL, "crop CAM", scale)

    mask = np.random.default_rng(12).random((len(TARGETS), *exported.input_shape[1:])) > 0.5
    inside, total, score = gradcamo_score(crop, mask)
    ref_inside, ref_total, ref_score = torch_gradcamo(
        exported.model, exported.layer, image, mask, TARGETS, mean=exported.mean, std=exported.std,
        convention=convention,
    )
    np.testing.assert_allclose(total, ref_total, rtol=RTOL)
    np.testing.assert_allclose(inside, ref_inside, rtol=RTOL, atol=RTOL * ref_total.max())
    np.testing.assert_allclose(score, ref_score, atol=RTOL)


def test_mixed_batch_equals_one_by_one(exported):
    image = exported.make_image(seed=13, n=len(TARGETS))
    batched = exported.run(image, TARGETS)
    single = [exported.run(image[i : i + 1], TARGETS[i : i + 1]) for i in range(len(TARGETS))]
    for name, got, parts in zip(("logits", "activations", "gradients"), batched, zip(*single)):
        expected = np.concatenate(parts).astype(np.float64)
        _assert_close_per_sample(got, expected, 1e-5, f"{name} batched vs one-by-one")


def test_each_sample_uses_its_own_target(exported):
    """Same image, different targets: the gradients differ and each matches its own pass."""
    image = np.repeat(exported.make_image(seed=14, n=1), N_CLASSES, axis=0)
    target = np.arange(N_CLASSES, dtype=np.int64)
    _, _, gradients = exported.run(image, target)
    for cls in range(N_CLASSES):
        _, _, alone = exported.run(image[:1], np.array([cls], dtype=np.int64))
        _assert_close_per_sample(gradients[cls : cls + 1], alone.astype(np.float64), 1e-5, f"class {cls}")
    assert not np.allclose(gradients[0], gradients[1])


def test_predicted_target_equals_explicit_argmax(exported):
    image = exported.make_image(seed=15, n=4)
    logits, _, gradients = exported.run(image, np.full(4, -1, dtype=np.int64))
    _, _, explicit = exported.run(image, logits.argmax(axis=1).astype(np.int64))
    np.testing.assert_array_equal(gradients, explicit)
