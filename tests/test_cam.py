"""gradcamo.cam (numpy) against the torch reference and pytorch-grad-cam.

What is compared with pytorch_grad_cam.GradCAM (the library the Grad-CAMO paper used):

- at the layer's resolution, the library's ReLU'd weighted sum (``get_cam_image`` +
  ``np.maximum``) with our ``compute_cam(..., convention="raw")``: both the library's and
  the independent reference's activations/gradients are used, so hooks and maths are
  both checked;
- in 2D, the library's final output: it min-max scales each map, resizes it with
  ``cv2.resize`` (bilinear, half-pixel centres, like ``F.interpolate(align_corners=False)``)
  and then min-max scales the resized map once more (``aggregate_multi_layers``). We rebuild
  it as ``minmax(resize_cam(compute_cam(..., convention="pytorch-grad-cam")))``; the match
  is to float32 precision.
- in 3D the library resizes with ``scipy.ndimage.zoom`` (cubic spline, a different
  interpolation), so only the layer-resolution map is compared.
"""

import copy

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradcamo.models import EfficientNet3dSmall, TinyCNN2d
from gradcamo.cam import compute_cam, gradcamo_score, linear_resize_matrix, resize_cam
from tests.reference import torch_cam, torch_gradcam, torch_gradcamo, torch_resize

CONVENTIONS = ["raw", "pytorch-grad-cam"]


def _random_layer_outputs(seed, shape):
    rng = np.random.default_rng(seed)
    activations = rng.standard_normal(shape).astype(np.float32)
    gradients = rng.standard_normal(shape).astype(np.float32)
    return activations, gradients


def _minmax(maps):
    maps = maps - maps.min(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return maps / (1e-7 + maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True))


# --- numpy cam.py vs the torch reference ---------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("shape", [(3, 8, 5, 7), (2, 4, 3, 4, 5), (1, 1, 1, 1), (2, 6, 1, 2, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_compute_cam_matches_torch(convention, shape, seed):
    activations, gradients = _random_layer_outputs(seed, shape)
    expected = torch_cam(activations, gradients, convention=convention).numpy()
    np.testing.assert_allclose(compute_cam(activations, gradients, convention=convention), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize(
    ("layer_shape", "crop_shape"),
    [((4, 4), (32, 32)), ((3, 5), (17, 40)), ((2, 4, 4), (8, 32, 32)), ((1, 3, 2), (5, 9, 7))],
)
def test_resized_cam_matches_torch(convention, layer_shape, crop_shape):
    activations, gradients = _random_layer_outputs(3, (2, 6, *layer_shape))
    cam = compute_cam(activations, gradients, convention=convention)
    expected = torch_resize(torch_cam(activations, gradients, convention=convention), crop_shape).numpy()
    np.testing.assert_allclose(resize_cam(cam, crop_shape), expected, rtol=1e-12, atol=1e-12)


def test_score_matches_torch_reference_on_tiny_cnn():
    torch.manual_seed(0)
    model = TinyCNN2d(5, 3).eval()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 5, 32, 32)).astype(np.float32)
    mask = rng.random((3, 32, 32)) > 0.6
    target = np.array([-1, 0, 2])
    reference = torch_gradcam(model, "features.block3", image, target)
    inside, total, score = gradcamo_score(
        resize_cam(compute_cam(reference.activations, reference.gradients), (32, 32)), mask
    )
    expected = torch_gradcamo(model, model.features.block3, image, mask, target)
    for got, want in zip((inside, total, score), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_score_analytic_half_inside():
    cam = np.ones((1, 4, 4))
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2] = True
    inside, total, score = gradcamo_score(cam, mask)
    assert (inside[0], total[0], score[0]) == (8.0, 16.0, 0.5)


# --- cam.py vs pytorch_grad_cam.GradCAM ------------------------------------------------


def _library_gradcam(model, layer_name, image, targets):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model).eval()  # GradCAM calls model.eval() on what it is given
    layer = model.get_submodule(layer_name)
    cam = GradCAM(model=model, target_layers=[layer])
    try:
        targets = [ClassifierOutputTarget(int(t)) for t in targets]
        output = cam(input_tensor=torch.from_numpy(image), targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        layer_cam = np.maximum(
            cam.get_cam_image(torch.from_numpy(image), layer, targets, activations, gradients), 0
        )
    finally:
        cam.activations_and_grads.release()
    return output, activations, gradients, layer_cam


@pytest.mark.parametrize("layer_name", ["features.block3", "features.block2"])
def test_gradcam_matches_pytorch_grad_cam_2d(layer_name):
    torch.manual_seed(1)
    model = TinyCNN2d(5, 3).eval()
    image = np.random.default_rng(1).standard_normal((4, 5, 32, 32)).astype(np.float32)
    targets = np.array([0, 1, 2, 1])
    output, activations, gradients, layer_cam = _library_gradcam(model, layer_name, image, targets)

    # layer resolution, raw convention: the library's maths on its own hooks
    scale = np.abs(layer_cam).max()
    np.testing.assert_allclose(compute_cam(activations, gradients), layer_cam, atol=1e-6 * scale)
    # the independent reference's hooks give the same map
    reference = torch_gradcam(model, layer_name, image, targets)
    np.testing.assert_allclose(reference.cam, layer_cam, atol=1e-5 * scale)
    # crop resolution: minmax(resize(pytorch-grad-cam convention)), see the module docstring
    ours = _minmax(resize_cam(compute_cam(activations, gradients, convention="pytorch-grad-cam"), (32, 32)))
    assert output.shape == ours.shape == (4, 32, 32)
    np.testing.assert_allclose(output, ours, atol=1e-5)


def test_gradcam_matches_pytorch_grad_cam_3d_layer_resolution():
    torch.manual_seed(2)
    model = EfficientNet3dSmall(5, 3).eval()
    image = np.random.default_rng(2).standard_normal((2, 5, 8, 32, 32)).astype(np.float32)
    targets = np.array([2, 0])
    _, activations, gradients, layer_cam = _library_gradcam(model, "head", image, targets)
    scale = np.abs(layer_cam).max()
    assert scale > 0
    np.testing.assert_allclose(compute_cam(activations, gradients), layer_cam, atol=1e-6 * scale)
    reference = torch_gradcam(model, "head", image, targets)
    np.testing.assert_allclose(reference.cam, layer_cam, atol=1e-5 * scale)


# --- properties ---------------------------------------------------------------------------

_SPATIAL = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
)


@st.composite
def _cam_and_mask(draw):
    spatial = draw(_SPATIAL)
    shape = (draw(st.integers(1, 3)), *spatial)
    # Zero or a normal magnitude: subnormal CAM values lose precision (or underflow to 0)
    # when scaled, which says nothing about the score and everything about float64.
    values = st.one_of(st.just(0.0), st.floats(1e-6, 1e3))
    cam = draw(hnp.arrays(np.float64, shape, elements=values))
    mask = draw(hnp.arrays(np.bool_, shape))
    return cam, mask


@settings(max_examples=200, deadline=None)
@given(_cam_and_mask())
def test_score_in_unit_interval_and_nan_iff_empty(cam_mask):
    cam, mask = cam_mask
    inside, total, score = gradcamo_score(cam, mask)
    empty = ~cam.reshape(len(cam), -1).any(axis=1)
    np.testing.assert_array_equal(np.isnan(score), empty)
    assert np.all((score[~empty] >= 0.0) & (score[~empty] <= 1.0 + 1e-12))
    assert np.all(inside <= total * (1 + 1e-12))


@settings(max_examples=100, deadline=None)
@given(_cam_and_mask())
def test_full_mask_scores_one_and_empty_mask_zero(cam_mask):
    cam, _ = cam_mask
    assume(cam.reshape(len(cam), -1).any(axis=1).all())
    np.testing.assert_allclose(gradcamo_score(cam, np.ones(cam.shape, dtype=bool))[2], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gradcamo_score(cam, np.zeros(cam.shape, dtype=bool))[2], 0.0)


@settings(max_examples=100, deadline=None)
@given(_cam_and_mask(), st.floats(1e-3, 1e3))
def test_score_invariant_to_positive_scale(cam_mask, factor):
    cam, mask = cam_mask
    np.testing.assert_allclose(
        gradcamo_score(cam * factor, mask)[2], gradcamo_score(cam, mask)[2], rtol=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(_SPATIAL, _SPATIAL, st.floats(-1e3, 1e3, allow_nan=False))
def test_resize_of_constant_is_constant(layer_shape, crop_shape, value):
    assume(len(layer_shape) == len(crop_shape))
    resized = resize_cam(np.full((2, *layer_shape), value), crop_shape)
    assert resized.shape == (2, *crop_shape)
    np.testing.assert_allclose(resized, value, rtol=1e-12, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(_SPATIAL, st.data())
def test_resize_matches_interpolate(layer_shape, data):
    crop_shape = tuple(data.draw(st.integers(1, 12)) for _ in layer_shape)
    cam = data.draw(hnp.arrays(np.float64, (2, *layer_shape), elements=st.floats(-10, 10)))
    np.testing.assert_allclose(resize_cam(cam, crop_shape), torch_resize(cam, crop_shape).numpy(), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(1, 40))
def test_resize_matrix_rows_are_convex_weights(n_in, n_out):
    weights = linear_resize_matrix(n_in, n_out)
    assert weights.shape == (n_out, n_in)
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, st.sampled_from([(2, 3, 4, 4), (1, 2, 2, 3, 3)]), elements=st.floats(-5, 5, width=32)),
    st.sampled_from(CONVENTIONS),
)
def test_compute_cam_matches_torch_property(activations, convention):
    gradients = np.flip(activations, axis=-1).copy()
    expected = torch_cam(activations, gradients, convention=convention).numpy()
    got = compute_cam(activations, gradients, convention=convention)
    assert np.all(got >= 0)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
