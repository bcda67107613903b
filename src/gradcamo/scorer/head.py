"""Append the Grad-CAMO arithmetic to a gradcamo graph, so only per-cell scalars leave it.

The head computes, inside ONNX, what :mod:`gradcamo.cam` computes in numpy:
channel weights (mean gradient), ReLU'd weighted sum, optional min-max scaling, linear
resize to the crop with half-pixel centres, and the mask-weighted and total sums.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradcamo import contract
from gradcamo.cam import CONVENTIONS, MINMAX_EPS

MASK = "mask"
CAM_INSIDE = "cam_inside"
CAM_TOTAL = "cam_total"
HEAD_OUTPUTS = (contract.LOGITS, CAM_INSIDE, CAM_TOTAL)
_PREFIX = "gradcamo_head/"


def _constant(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), _PREFIX + name)


def _node(op, inputs, output, **attributes):
    return helper.make_node(op, inputs, [_PREFIX + output], name=_PREFIX + output, **attributes)


def _head_nodes(spatial_dims, crop_spatial, convention):
    """Nodes and constants from (activations, gradients, mask) to (cam_inside, cam_total)."""
    p = _PREFIX
    layer_axes = list(range(2, 2 + spatial_dims))
    cam_axes = list(range(1, 2 + spatial_dims))
    constants = [
        _constant("layer_axes", layer_axes),
        _constant("channel_axis", [1]),
        _constant("cam_axes", cam_axes),
        _constant("crop_spatial", list(crop_spatial)),
    ]
    nodes = [
        _node("ReduceMean", [contract.GRADIENTS, p + "layer_axes"], "alpha", keepdims=1),
        _node("Mul", [p + "alpha", contract.ACTIVATIONS], "weighted"),
        _node("ReduceSum", [p + "weighted", p + "channel_axis"], "signed_cam", keepdims=1),
        _node("Relu", [p + "signed_cam"], "cam"),
    ]
    cam = p + "cam"
    if convention == "pytorch-grad-cam":
        constants.append(_constant("eps", MINMAX_EPS, np.float32))
        nodes += [
            _node("ReduceMin", [cam, p + "layer_axes"], "cam_min", keepdims=1),
            _node("Sub", [cam, p + "cam_min"], "cam_shifted"),
            _node("ReduceMax", [p + "cam_shifted", p + "layer_axes"], "cam_max", keepdims=1),
            _node("Add", [p + "cam_max", p + "eps"], "cam_range"),
            _node("Div", [p + "cam_shifted", p + "cam_range"], "cam_scaled"),
        ]
        cam = p + "cam_scaled"
    nodes += [
        helper.make_node("Shape", [cam], [p + "cam_shape"], name=p + "cam_shape", start=0, end=2),
        _node("Concat", [p + "cam_shape", p + "crop_spatial"], "resize_sizes", axis=0),
        _node(
            "Resize", [cam, "", "", p + "resize_sizes"], "crop_cam",
            mode="linear", coordinate_transformation_mode="half_pixel",
        ),
        _node("Unsqueeze", [MASK, p + "channel_axis"], "mask_channel"),
        _node("Mul", [p + "crop_cam", p + "mask_channel"], "masked_cam"),
        helper.make_node("ReduceSum", [p + "masked_cam", p + "cam_axes"], [CAM_INSIDE], name=p + CAM_INSIDE, keepdims=0),
        helper.make_node("ReduceSum", [p + "crop_cam", p + "cam_axes"], [CAM_TOTAL], name=p + CAM_TOTAL, keepdims=0),
    ]
    return nodes, constants


def append_score_head(model, *, crop_spatial, convention="raw"):
    """Return a copy of a gradcamo graph whose outputs are logits, cam_inside and cam_total.

    Parameters
    ----------
    model : onnx.ModelProto
        A graph following the gradcamo contract.
    crop_spatial : tuple of int
        Spatial crop shape ``(H, W)`` or ``(D, H, W)``.
    convention : {"raw", "pytorch-grad-cam"}

    Returns
    -------
    onnx.ModelProto
        New input ``mask`` float32 ``[batch, *crop_spatial]`` (1 on the cell, 0 elsewhere);
        outputs ``logits`` ``[batch, K]``, ``cam_inside`` and ``cam_total`` float32 ``[batch]``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    headed = onnx.ModelProto()
    headed.CopyFrom(model)
    graph = headed.graph
    nodes, constants = _head_nodes(len(crop_spatial), crop_spatial, convention)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    graph.input.append(
        helper.make_tensor_value_info(MASK, TensorProto.FLOAT, [contract.BATCH_AXIS, *crop_spatial])
    )
    logits = next(o for o in graph.output if o.name == contract.LOGITS)
    del graph.output[:]
    graph.output.extend([
        logits,
        helper.make_tensor_value_info(CAM_INSIDE, TensorProto.FLOAT, [contract.BATCH_AXIS]),
        helper.make_tensor_value_info(CAM_TOTAL, TensorProto.FLOAT, [contract.BATCH_AXIS]),
    ])
    return headed
