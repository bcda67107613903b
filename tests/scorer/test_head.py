"""The in-graph Grad-CAMO head against the numpy arithmetic of gradcamo.cam and gradcamo.localisation."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import gradcamo
from gradcamo.cam import METHODS, crop_cam, gradcamo_score
from gradcamo.localisation import peak_values, rank_counts
from gradcamo.scorer.head import HEAD_OUTPUTS, MASK, METRIC_OUTPUTS, append_score_head
from gradcamo.scorer.head import CROP_CAM, expose_crop_cam
from tests.tiny_models import tiny_classifier


@pytest.fixture(scope="module", params=[(3, 17, 22), (3, 5, 9, 12)], ids=["2d", "3d"])
def exported(request, tmp_path_factory):
    shape = request.param
    path = tmp_path_factory.mktemp("head") / "model.onnx"
    gradcamo.export_model(tiny_classifier(len(shape) - 1, n_classes=4), "2", shape, path)
    return onnx.load(str(path)), shape


def _inputs(shape):
    generator = np.random.default_rng(5)
    image = generator.normal(0, 1, (7, *shape)).astype(np.float32)
    target = np.array([-1, 0, 1, 2, 3, -1, 2])
    mask = generator.random((7, *shape[1:])) < 0.4
    mask[0] = False
    mask[1] = True
    return image, target, mask


def _run(model, outputs, image, target, mask=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"image": image, "target": target}
    if mask is not None:
        feed[MASK] = mask.astype(np.float32)
    return session.run(outputs, feed)


@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_head_matches_numpy(exported, convention):
    """Every method's sums, one row per (sample, method), equal the numpy reference's."""
    model, shape = exported
    image, target, mask = _inputs(shape)
    logits, activations, gradients = _run(model, None, image, target)
    headed = append_score_head(model, crop_spatial=shape[1:], convention=convention, methods=METHODS)
    onnx.checker.check_model(headed)
    head_logits, inside, total = _run(headed, list(HEAD_OUTPUTS), image, target, mask)
    np.testing.assert_array_equal(head_logits, logits)
    assert inside.shape == total.shape == (len(image) * len(METHODS),)
    for m, method in enumerate(METHODS):
        cam = crop_cam(activations, gradients, shape[1:], convention=convention, method=method)
        ref_inside, ref_total, ref_score = gradcamo_score(cam, mask)
        scale = cam.max() * cam[0].size
        rows = slice(m, None, len(METHODS))
        np.testing.assert_allclose(inside[rows], ref_inside, rtol=0, atol=1e-5 * scale, err_msg=method)
        np.testing.assert_allclose(total[rows], ref_total, rtol=1e-5, atol=1e-6 * scale, err_msg=method)
        assert inside[rows][0] == 0.0 and inside[rows][1] == pytest.approx(total[rows][1], rel=1e-6)
        live = ref_total > 0
        np.testing.assert_allclose(inside[rows][live] / total[rows][live], ref_score[live], rtol=0, atol=1e-5)


@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_head_counts_equal_numpy_on_its_own_cam(exported, convention):
    """Rank and peak counts are exact: numpy on the head's crop CAM gives the same integers."""
    model, shape = exported
    image, target, mask = _inputs(shape)
    mask[2] = np.arange(mask[2].size).reshape(mask[2].shape) < 3  # a 3-voxel cell
    headed = expose_crop_cam(append_score_head(model, crop_spatial=shape[1:], convention=convention, methods=METHODS))
    voxels, ranks, peaks, cam = _run(headed, [*METRIC_OUTPUTS, CROP_CAM], image, target, mask)
    row_masks = np.repeat(mask, len(METHODS), axis=0)
    cam = cam[:, 0]
    np.testing.assert_array_equal(voxels, row_masks.reshape(len(row_masks), -1).sum(axis=1))
    np.testing.assert_array_equal(ranks, rank_counts(cam, row_masks))
    np.testing.assert_array_equal(peaks, peak_values(cam, row_masks))


def test_default_head_scores_gradcam_only(exported):
    model, shape = exported
    image, target, mask = _inputs(shape)
    one = _run(append_score_head(model, crop_spatial=shape[1:]), list(HEAD_OUTPUTS), image, target, mask)
    several = _run(append_score_head(model, crop_spatial=shape[1:], methods=("hirescam", "gradcam")),
                   list(HEAD_OUTPUTS), image, target, mask)
    assert one[1].shape == (len(image),)
    np.testing.assert_array_equal(several[1][1::2], one[1])


@pytest.mark.parametrize(
    ("options", "message"),
    [({"convention": "minmax"}, "convention: expected one of"), ({"methods": ("gradcam", "scorecam")}, "methods: expected"),
     ({"methods": ("gradcam", "gradcam")}, "methods: expected distinct"), ({"methods": ()}, "methods: expected distinct")],
)
def test_head_refuses_bad_options(exported, options, message):
    with pytest.raises(ValueError, match=message):
        append_score_head(exported[0], crop_spatial=exported[1][1:], **options)
