"""gradcamo.cam (numpy) against the independent torch reference (tests/reference.py) and scipy.

pytorch-grad-cam's own classes are compared in tests/test_pytorch_grad_cam.py.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradcamo.errors import InputError
from gradcamo.models import EfficientNet3dSmall, TinyCNN2d
from scipy import ndimage

from gradcamo.cam import (
    METHODS, check_methods, compute_cam, crop_cam, gradcamo_score, linear_resize_matrix, resize_cam, spline_resize_matrix,
)
from tests.reference import torch_cam, torch_gradcam, torch_gradcamo, torch_method_cam, torch_resize

CONVENTIONS = ["raw", "pytorch-grad-cam"]


def _random_layer_outputs(seed, shape):
    rng = np.random.default_rng(seed)
    activations = rng.standard_normal(shape).astype(np.float32)
    gradients = rng.standard_normal(shape).astype(np.float32)
    return activations, gradients


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


# --- the CAM family vs the torch reference (raw convention) --------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3, 8, 5, 7), (2, 4, 3, 4, 5)], ids=["2d", "3d"])
def test_methods_match_torch_formulas(method, shape):
    activations, gradients = _random_layer_outputs(4, shape)
    gradients[0, 0, 0] = 0.0  # gradcam++: alpha is 0 where g is 0
    expected = torch_method_cam(activations, gradients, method).numpy()
    np.testing.assert_allclose(compute_cam(activations, gradients, method=method), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("model", "layer", "shape"),
    [(TinyCNN2d, "features.block3", (5, 32, 32)), (EfficientNet3dSmall, "head", (5, 8, 32, 32))], ids=["2d", "3d"],
)
def test_method_scores_match_torch_reference_on_cnns(method, model, layer, shape):
    """Hooks, autograd, formula, resize and score of the reference against ours, on its activations."""
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, *shape)).astype(np.float32)
    mask = rng.random((2, *shape[1:])) > 0.6
    reference = torch_gradcam(model(5, 3).eval(), layer, image, np.array([0, 2]))
    expected = torch_resize(torch_method_cam(reference.activations, reference.gradients, method), shape[1:]).numpy()
    assert expected.max() > 0
    ours = crop_cam(reference.activations, reference.gradients, shape[1:], method=method)
    np.testing.assert_allclose(gradcamo_score(ours, mask)[2], gradcamo_score(expected, mask)[2], rtol=1e-10)


def test_check_methods_splits_and_refuses():
    assert check_methods("gradcam, hirescam") == ("gradcam", "hirescam")
    assert check_methods(["layercam"]) == ("layercam",)
    for bad, message in [("gradcam,gradcam", "distinct"), ("", "expected one of"), ((), "distinct"),
                         ("gradcam,eigencam", "expected one of")]:
        with pytest.raises(InputError, match=f"methods: .*{message}"):
            check_methods(bad)


def test_compute_cam_refuses_unknown_method():
    activations, gradients = _random_layer_outputs(0, (1, 2, 3, 3))
    with pytest.raises(ValueError, match="method: expected one of"):
        compute_cam(activations, gradients, method="scorecam")


# --- the pytorch-grad-cam resize vs scipy ----------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)), st.data())
def test_spline_matrices_are_scipy_zoom(layer_shape, data):
    crop_shape = tuple(data.draw(st.integers(1, 4 * n)) for n in layer_shape)
    cam = np.random.default_rng(sum(crop_shape)).random(layer_shape)
    factors = [t / i for i, t in zip(layer_shape, crop_shape)]
    zoomed = ndimage.zoom(cam, factors)
    if zoomed.shape != crop_shape:  # zoom rounds the output shape from the factors
        with pytest.raises(ValueError, match="scipy.ndimage.zoom of"):
            resize_cam(cam[None], crop_shape, convention="pytorch-grad-cam")
        return
    resized = cam
    for axis, n_out in enumerate(crop_shape):
        weights = spline_resize_matrix(layer_shape[axis], n_out)
        resized = np.moveaxis(np.tensordot(weights, np.moveaxis(resized, axis, 0), axes=1), 0, axis)
    np.testing.assert_allclose(resized, zoomed, atol=1e-12)


def test_pytorch_grad_cam_resize_scales_after_the_resize():
    """ReLU and min-max after the resize: the map spans [0, 1) again whatever the interpolation did."""
    cam = np.zeros((1, 2, 3, 3))
    cam[0, 1, 1, 1] = 2.0
    resized = resize_cam(cam, (4, 12, 12), convention="pytorch-grad-cam")
    assert resized.min() == 0.0 and resized.max() == pytest.approx(1.0, abs=1e-6)
    assert ndimage.zoom(cam[0], (2, 4, 4)).min() < 0  # the spline overshoots, the ReLU removes it


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
