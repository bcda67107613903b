"""The ``pytorch-grad-cam`` convention against pytorch-grad-cam's own classes, every method, 2D and 3D.

For each case a tiny CNN is run through the library's class (``GradCAM``, ``HiResCAM``,
``GradCAMPlusPlus``, ``XGradCAM``, ``LayerCAM``) and its final output, the crop-resolution
map after its min-max, resize (``cv2.resize`` in 2D, ``scipy.ndimage.zoom`` in 3D), ReLU and
second min-max, is compared with

- ``gradcamo.cam.crop_cam(..., convention="pytorch-grad-cam")`` on the library's own
  activations and gradients (the arithmetic alone), and
- the scorer's ONNX head on the exported model (graph, arithmetic and resize together),

map by map and in Grad-CAMO to 1e-5. The layer-resolution ReLU'd map (``get_cam_image``) is
also compared with ``compute_cam(..., convention="raw")``, and the independent torch
reference's hooks (tests/reference.py) with the library's. The 2D cases upsample by an even
factor (2), an odd one (3) and a non-integer one; the 3D case by (2, 2, 2) and (5/3, 9/5, 2).
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import gradcamo
from gradcamo.cam import METHODS, compute_cam, crop_cam, gradcamo_score
from gradcamo.models import EfficientNet3dSmall, TinyCNN2d
from gradcamo.scorer.head import HEAD_OUTPUTS, MASK, append_score_head
from tests.reference import torch_gradcam

LIBRARY = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM,
           "layercam": LayerCAM}
# (crop shape, stride of the target conv): layer maps 8x8, 5x5, 9x11, 2x6x6 and 3x5x6
CASES = {
    "2d-even": ((3, 16, 16), 2), "2d-odd": ((3, 15, 15), 3), "2d-fraction": ((3, 17, 22), 2),
    "3d-even": ((3, 4, 12, 12), 2), "3d-fraction": ((3, 5, 9, 12), 2),
}


def _model(spatial_dims, stride):
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
    torch.manual_seed(20 + stride)
    return nn.Sequential(
        conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 8, 3, stride=stride, padding=1 if stride == 2 else 0), nn.ReLU(),
        pool(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    shape, stride = CASES[request.param]
    model = _model(len(shape) - 1, stride)
    path = tmp_path_factory.mktemp("pgc") / "model.onnx"
    gradcamo.export_model(model, "2", shape, path)
    generator = np.random.default_rng(len(shape) + stride)
    image = generator.normal(0, 1, (4, *shape)).astype(np.float32)
    mask = generator.random((4, *shape[1:])) < 0.3
    return model, onnx.load(str(path)), image, mask, np.array([0, 1, 2, 3])


def _library(method, model, image, targets, layer_name="2", reshape_transform=None):
    """The library's output, its hooks' activations and gradients, and its ReLU'd layer map."""
    model = copy.deepcopy(model)  # the library calls model.eval() on what it is given
    layer = model.get_submodule(layer_name)
    cam = LIBRARY[method](model=model, target_layers=[layer], reshape_transform=reshape_transform)
    try:
        targets = [ClassifierOutputTarget(int(t)) for t in targets]
        output = cam(input_tensor=torch.from_numpy(image), targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        layer_cam = np.maximum(cam.get_cam_image(torch.from_numpy(image), layer, targets, activations, gradients,
                                                 eigen_smooth=False), 0)
    finally:
        cam.activations_and_grads.release()
    return output, activations, gradients, layer_cam


def _head_scores(model, image, mask, targets):
    headed = append_score_head(model, crop_spatial=image.shape[2:], convention="pytorch-grad-cam", methods=METHODS)
    session = ort.InferenceSession(headed.SerializeToString(), providers=["CPUExecutionProvider"])
    _, inside, total = session.run(list(HEAD_OUTPUTS), {"image": image, "target": targets,
                                                        MASK: mask.astype(np.float32)})
    return (inside / total).reshape(len(image), len(METHODS))


def test_pytorch_grad_cam_convention_reproduces_the_library(case):
    model, exported, image, mask, targets = case
    head = _head_scores(exported, image, mask, targets)
    for m, method in enumerate(METHODS):
        output, activations, gradients, layer_cam = _library(method, model, image, targets)
        assert output.shape == image.shape[:1] + image.shape[2:]
        scale = layer_cam.max()
        assert scale > 0
        np.testing.assert_allclose(compute_cam(activations, gradients, method=method), layer_cam, atol=1e-5 * scale,
                                   err_msg=method)
        ours = crop_cam(activations, gradients, image.shape[2:], convention="pytorch-grad-cam", method=method)
        np.testing.assert_allclose(ours, output, atol=1e-5, err_msg=method)
        expected = gradcamo_score(output, mask)[2]
        np.testing.assert_allclose(gradcamo_score(ours, mask)[2], expected, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(head[:, m], expected, atol=1e-5, err_msg=method)


@pytest.mark.parametrize(
    ("model", "layer", "shape"),
    [(TinyCNN2d, "features.block3", (5, 32, 32)), (TinyCNN2d, "features.block2", (5, 32, 32)),
     (EfficientNet3dSmall, "head", (5, 8, 32, 32))], ids=["2d", "2d-early", "3d"],
)
def test_reference_hooks_capture_what_the_library_captures(model, layer, shape):
    """The independent torch reference (tests/reference.py) and the library see one Grad-CAM."""
    torch.manual_seed(1)
    model = model(5, 3).eval()
    image = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    targets = np.array([0, 1, 2])
    _, activations, gradients, layer_cam = _library("gradcam", model, image, targets, layer)
    scale = layer_cam.max()
    assert scale > 0
    np.testing.assert_allclose(compute_cam(activations, gradients), layer_cam, atol=1e-6 * scale)
    np.testing.assert_allclose(torch_gradcam(model, layer, image, targets).cam, layer_cam, atol=1e-5 * scale)
