"""The in-graph Grad-CAMO head against the numpy arithmetic of gradcamo.cam."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import gradcamo
from gradcamo.cam import compute_cam, gradcamo_score, resize_cam
from gradcamo.scorer.head import HEAD_OUTPUTS, MASK, append_score_head
from tests.tiny_models import tiny_classifier


@pytest.fixture(scope="module", params=[(3, 17, 22), (3, 5, 9, 12)], ids=["2d", "3d"])
def exported(request, tmp_path_factory):
    shape = request.param
    path = tmp_path_factory.mktemp("head") / "model.onnx"
    gradcamo.export_model(tiny_classifier(len(shape) - 1, n_classes=4), "2", shape, path)
    return onnx.load(str(path)), shape


@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_head_matches_numpy(exported, convention):
    model, shape = exported
    generator = np.random.default_rng(5)
    image = generator.normal(0, 1, (7, *shape)).astype(np.float32)
    target = np.array([-1, 0, 1, 2, 3, -1, 2])
    mask = generator.random((7, *shape[1:])) < 0.4
    mask[0] = False
    mask[1] = True
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    headed_model = append_score_head(model, crop_spatial=shape[1:], convention=convention)
    onnx.checker.check_model(headed_model)
    headed = ort.InferenceSession(headed_model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, activations, gradients = plain.run(None, {"image": image, "target": target})
    head_logits, inside, total = headed.run(
        list(HEAD_OUTPUTS), {"image": image, "target": target, MASK: mask.astype(np.float32)}
    )
    cam = resize_cam(compute_cam(activations, gradients, convention=convention), shape[1:])
    ref_inside, ref_total, ref_score = gradcamo_score(cam, mask)
    np.testing.assert_array_equal(head_logits, logits)
    scale = ref_total.max()
    np.testing.assert_allclose(inside, ref_inside, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5, atol=1e-6 * scale)
    assert inside[0] == 0.0 and inside[1] == pytest.approx(total[1], rel=1e-6)
    live = ref_total > 0
    np.testing.assert_allclose(inside[live] / total[live], ref_score[live], rtol=0, atol=1e-5)


def test_head_refuses_unknown_convention(exported):
    with pytest.raises(ValueError, match="convention: expected one of"):
        append_score_head(exported[0], crop_spatial=exported[1][1:], convention="minmax")
