"""Append the Grad-CAMO arithmetic to a gradcamo graph, so only per-row numbers leave it.

The head computes, inside ONNX, what :mod:`gradcamo.cam` and :mod:`gradcamo.localisation`
compute in numpy: one ReLU'd CAM per method from the activations and gradients of the one
forward/backward pass, the convention's scaling and resize to the crop, the masked and
total sums and the voxel counts of the localisation metrics.

Rows are (sample, method) pairs, sample-major: row ``n * M + m`` is sample ``n`` under
``methods[m]``. Every output but ``logits`` has one entry per row.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradcamo import contract
from gradcamo.cam import (
    CONVENTIONS, GRADCAM_PLUSPLUS_EPS, MINMAX_EPS, XGRADCAM_EPS, check_choice, check_methods, resize_matrices,
)

MASK = "mask"
CAM_INSIDE = "cam_inside"
CAM_TOTAL = "cam_total"
MASK_VOXELS = "mask_voxels"
RANK_COUNTS = "rank_counts"
PEAK_COUNTS = "peak_counts"
HEAD_OUTPUTS = (contract.LOGITS, CAM_INSIDE, CAM_TOTAL)
METRIC_OUTPUTS = (MASK_VOXELS, RANK_COUNTS, PEAK_COUNTS)
"""Voxel counts for :func:`gradcamo.localisation.localisation_metrics` (int64)."""
_PREFIX = "gradcamo_head/"


class _Graph:
    """Nodes and constants of the head, every name under one prefix."""

    def __init__(self):
        self.nodes, self.constants = [], {}

    def constant(self, name, values, dtype=np.int64):
        """A named constant, made once however often it is asked for."""
        full_name = _PREFIX + "constants/" + name
        if name not in self.constants:
            self.constants[name] = numpy_helper.from_array(np.asarray(values, dtype=dtype), full_name)
        return full_name

    def op(self, op, inputs, output, *, final=False, **attributes):
        name = output if final else _PREFIX + output
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=_PREFIX + output, **attributes))
        return name


def _slug(method):
    return method.replace("+", "p")


def _weights(g, method, axes):
    """The tensor ``W`` of ``cam = ReLU(sum_k W_k A_k)`` (:func:`gradcamo.cam.cam_weights`)."""
    a, grad = contract.ACTIVATIONS, contract.GRADIENTS
    tag = _slug(method) + "/"
    if method == "gradcam":
        return g.op("ReduceMean", [grad, axes], tag + "weights", keepdims=1)
    if method == "hirescam":
        return grad
    if method == "layercam":
        return g.op("Relu", [grad], tag + "weights")
    sums = g.op("ReduceSum", [a, axes], tag + "activation_sums", keepdims=1)
    if method == "xgradcam":
        denominator = g.op("Add", [sums, g.constant(tag + "eps", XGRADCAM_EPS, np.float32)], tag + "denominator")
        ratio = g.op("Div", [g.op("Mul", [grad, a], tag + "ga"), denominator], tag + "ratio")
        return g.op("ReduceSum", [ratio, axes], tag + "weights", keepdims=1)
    squared = g.op("Mul", [grad, grad], tag + "g2")
    cubed = g.op("Mul", [squared, grad], tag + "g3")
    denominator = g.op("Add", [
        g.op("Add", [g.op("Add", [squared, squared], tag + "2g2"), g.op("Mul", [sums, cubed], tag + "sg3")], tag + "sum"),
        g.constant(tag + "eps", GRADCAM_PLUSPLUS_EPS, np.float32),
    ], tag + "denominator")
    zero = g.constant(tag + "zero", 0.0, np.float32)
    alpha = g.op("Where", [g.op("Equal", [grad, zero], tag + "g_is_0"), zero,
                           g.op("Div", [squared, denominator], tag + "alpha_all")], tag + "alpha")
    positive = g.op("Mul", [g.op("Relu", [grad], tag + "relu_g"), alpha], tag + "alpha_relu_g")
    return g.op("ReduceSum", [positive, axes], tag + "weights", keepdims=1)


def _layer_cams(g, methods, axes):
    """ReLU'd CAMs ``[batch, M, *layer]``, one channel per method."""
    channel = g.constant("channel_axis", [1])
    signed = [
        g.op("ReduceSum", [g.op("Mul", [_weights(g, method, axes), contract.ACTIVATIONS], _slug(method) + "/weighted"),
                           channel], _slug(method) + "/signed_cam", keepdims=1)
        for method in methods
    ]
    return g.op("Relu", [g.op("Concat", signed, "signed_cams", axis=1)], "cams")


def _minmax(g, cam, axes, tag):
    """pytorch-grad-cam's ``c = cam - min; c / (max(c) + 1e-7)`` per map."""
    shifted = g.op("Sub", [cam, g.op("ReduceMin", [cam, axes], tag + "min", keepdims=1)], tag + "shifted")
    top = g.op("ReduceMax", [shifted, axes], tag + "max", keepdims=1)
    eps = g.constant(tag + "eps", MINMAX_EPS, np.float32)
    return g.op("Div", [shifted, g.op("Add", [top, eps], tag + "range")], tag + "scaled")


def _linear_resize(g, cam, crop_spatial):
    shape = g.op("Shape", [cam], "cam_shape", start=0, end=2)
    sizes = g.op("Concat", [shape, g.constant("crop_spatial", list(crop_spatial))], "resize_sizes", axis=0)
    return g.op("Resize", [cam, "", "", sizes], "crop_cam", mode="linear", coordinate_transformation_mode="half_pixel")


def _spline_resize_3d(g, cam, layer_spatial, crop_spatial):
    """pytorch-grad-cam's 3D ``scipy.ndimage.zoom``: one constant matrix per axis."""
    (d, h, w), (big_d, big_h, big_w) = layer_spatial, crop_spatial
    depth, height, width = (m.astype(np.float32) for m in resize_matrices(layer_spatial, crop_spatial, "pytorch-grad-cam"))
    out = g.op("MatMul", [cam, g.constant("zoom_w", width.T, np.float32)], "zoom_w_out")
    out = g.op("MatMul", [g.constant("zoom_h", height, np.float32), out], "zoom_h_out")
    out = g.op("Reshape", [out, g.constant("zoom_planes", [0, 0, d, big_h * big_w])], "zoom_planes_out")
    out = g.op("MatMul", [g.constant("zoom_d", depth, np.float32), out], "zoom_d_out")
    return g.op("Reshape", [out, g.constant("zoom_shape", [0, 0, big_d, big_h, big_w])], "crop_cam")


def _crop_cams(g, cams, convention, layer_spatial, crop_spatial):
    """``[batch, M, *crop]`` maps in the convention (:func:`gradcamo.cam.resize_cam`)."""
    if convention == "raw":
        return _linear_resize(g, cams, crop_spatial)
    axes = g.constant("map_axes", list(range(2, 2 + len(crop_spatial))))
    cams = _minmax(g, cams, axes, "layer_minmax/")
    if len(crop_spatial) == 2:
        resized = _linear_resize(g, cams, crop_spatial)
    else:
        resized = _spline_resize_3d(g, cams, layer_spatial, crop_spatial)
    return _minmax(g, g.op("Relu", [resized], "crop_relu"), axes, "crop_minmax/")


def _kth_largest(g, flat, k):
    """[batch, M, 1]: the k-th largest value of each map (+max float where k = 0).

    TopK takes one k for all maps; each map is padded with ``k_max - k`` values above and
    ``k`` values below all others, so the k_max-th largest of the padded map is its own
    k-th largest: the minimum of an unsorted TopK, no sort needed.
    """
    high = g.constant("high", np.finfo(np.float32).max, np.float32)
    low = g.constant("low", -np.finfo(np.float32).max, np.float32)
    one = g.constant("one", 1.0, np.float32)
    k_max = g.op("Max", [g.op("ReduceMax", [k], "k_max_any", keepdims=0), one], "k_max")
    slots = g.op("Range", [g.constant("zero", 0.0, np.float32), k_max, one], "pad_slots")
    pad = g.op("Where", [g.op("Less", [slots, g.op("Sub", [k_max, k], "pad_high")], "pad_is_high"), high, low], "pad")
    pad_shape = g.op("Concat", [g.op("Shape", [flat], "maps_shape", start=0, end=2), g.op("Shape", [pad], "pad_length", start=2)],
                     "pad_shape", axis=0)
    padded = g.op("Concat", [flat, g.op("Expand", [pad, pad_shape], "pad_maps")], "padded_cam", axis=2)
    k_top = g.op("Reshape", [g.op("Cast", [k_max], "k_top_scalar", to=TensorProto.INT64), g.constant("one_d", [1])],
                 "k_top")
    g.nodes.append(helper.make_node("TopK", [padded, k_top], [_PREFIX + "top", _PREFIX + "top_indices"],
                                    name=_PREFIX + "top", axis=2, largest=1, sorted=0))
    return g.op("ReduceMin", [_PREFIX + "top", g.constant("voxel_axis", [2])], "threshold", keepdims=1)


def _metric_nodes(g, crops, n_methods):
    """Mask voxels, rank and peak counts (:mod:`gradcamo.localisation`) of each row.

    The three voxel selections of every map (above the threshold, at it, at the peak) are
    counted inside the mask and in all by one batched MatMul with the columns ``[mask, 1]``
    (float32 sums of 0 and 1 are exact below 2**24 voxels).
    """
    flat = g.op("Reshape", [crops, g.constant("flatten_maps", [0, 0, -1])], "flat_cam")
    mask_column = g.op("Reshape", [MASK, g.constant("column_shape", [0, -1, 1])], "mask_column")
    k = g.op("ReduceSum", [g.op("Reshape", [MASK, g.constant("flatten_masks", [0, 1, -1])], "mask_row"),
                           g.constant("voxel_axis", [2])], "k", keepdims=1)  # [batch, 1, 1]
    threshold = _kth_largest(g, flat, k)
    peak = g.op("ReduceMax", [flat, g.constant("voxel_axis", [2])], "peak", keepdims=1)
    selected = [g.op("Greater", [flat, threshold], "above"), g.op("Equal", [flat, threshold], "tied"),
                g.op("Equal", [flat, peak], "at_peak")]
    selected = g.op("Cast", [g.op("Concat", selected, "selected", axis=1)], "selected_float", to=TensorProto.FLOAT)
    ones = g.op("Expand", [g.constant("ones", [[[1.0]]], np.float32), g.op("Shape", [mask_column], "mask_column_shape")],
                "ones_column")
    counts = g.op("MatMul", [selected, g.op("Concat", [mask_column, ones], "count_columns", axis=2)], "counts")
    # [batch, 3M, 2] -> rows [batch * M, 6]: above, tied, peak; each inside, total
    counts = g.op("Reshape", [counts, g.constant("counts_split", [0, 3, n_methods, 2])], "counts_split")
    counts = g.op("Transpose", [counts], "counts_by_method", perm=[0, 2, 1, 3])
    counts = g.op("Cast", [g.op("Reshape", [counts, g.constant("counts_rows", [-1, 6])], "counts_rows")],
                  "counts_int", to=TensorProto.INT64)
    for output, start, stop in ((RANK_COUNTS, 0, 4), (PEAK_COUNTS, 4, 6)):
        g.op("Slice", [counts, g.constant(output + "_start", [start]), g.constant(output + "_stop", [stop]),
                       g.constant("count_axis", [1])], output, final=True)
    per_row = g.op("Expand", [k, g.constant("per_method", [1, n_methods, 1])], "k_maps")
    g.op("Cast", [g.op("Reshape", [per_row, g.constant("flat_rows", [-1])], "k_rows")], MASK_VOXELS, final=True,
         to=TensorProto.INT64)


def _head_nodes(layer_spatial, crop_spatial, convention, methods):
    """Nodes and constants from (activations, gradients, mask) to the head's outputs."""
    g = _Graph()
    spatial_dims = len(crop_spatial)
    layer_axes = g.constant("layer_axes", list(range(2, 2 + spatial_dims)))
    crops = _crop_cams(g, _layer_cams(g, methods, layer_axes), convention, layer_spatial, crop_spatial)
    map_axes = g.constant("crop_axes", list(range(2, 2 + spatial_dims)))
    flat_rows = g.constant("flat_rows", [-1])
    mask = g.op("Unsqueeze", [MASK, g.constant("mask_channel_axis", [1])], "mask_channel")
    inside = g.op("ReduceSum", [g.op("Mul", [crops, mask], "masked_cam"), map_axes], "inside_maps", keepdims=0)
    g.op("Reshape", [inside, flat_rows], CAM_INSIDE, final=True)
    # the sum over the rows' maps [rows, 1, *crop]: gradcamo.visual exposes this input as the CAM
    rows = g.op("Reshape", [crops, g.constant("row_shape", [-1, 1, *crop_spatial])], "row_cam")
    g.op("ReduceSum", [rows, g.constant("row_axes", list(range(1, 2 + spatial_dims)))], CAM_TOTAL, final=True,
         keepdims=0)
    _metric_nodes(g, crops, len(methods))
    return g.nodes, list(g.constants.values())


def _layer_spatial(graph, spatial_dims):
    output = next(o for o in graph.output if o.name == contract.ACTIVATIONS)
    dims = output.type.tensor_type.shape.dim[2:]
    if len(dims) != spatial_dims or not all(d.HasField("dim_value") for d in dims):
        raise ValueError(f"{contract.ACTIVATIONS}: expected {spatial_dims} static spatial sizes in the graph's output")
    return tuple(d.dim_value for d in dims)


def append_score_head(model, *, crop_spatial, convention="raw", methods=("gradcam",)):
    """Return a copy of a gradcamo graph whose outputs are logits and per-row sums and counts.

    Parameters
    ----------
    model : onnx.ModelProto
        A graph following the gradcamo contract.
    crop_spatial : tuple of int
        Spatial crop shape ``(H, W)`` or ``(D, H, W)``.
    convention : {"raw", "pytorch-grad-cam"}
    methods : sequence of str, or str
        CAM methods (:func:`gradcamo.cam.check_methods`), each giving one row per sample.

    Returns
    -------
    onnx.ModelProto
        New input ``mask`` float32 ``[batch, *crop_spatial]`` (1 on the cell, 0 elsewhere);
        outputs ``logits`` ``[batch, K]``, then per row (``batch * len(methods)``):
        ``cam_inside`` and ``cam_total`` float32, ``mask_voxels`` int64, ``rank_counts``
        int64 ``[rows, 4]`` and ``peak_counts`` int64 ``[rows, 2]``
        (:mod:`gradcamo.localisation`).

    Raises
    ------
    InputError
        Unknown convention or method, a repeated method.
    ValueError
        pytorch-grad-cam in 3D: activations without static spatial sizes.
    """
    check_choice("convention", convention, CONVENTIONS)
    methods = check_methods(methods)
    headed = onnx.ModelProto()
    headed.CopyFrom(model)
    graph = headed.graph
    layer_spatial = _layer_spatial(graph, len(crop_spatial)) if convention != "raw" and len(crop_spatial) == 3 else None
    nodes, constants = _head_nodes(layer_spatial, crop_spatial, convention, methods)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    graph.input.append(
        helper.make_tensor_value_info(MASK, TensorProto.FLOAT, [contract.BATCH_AXIS, *crop_spatial])
    )
    logits = next(o for o in graph.output if o.name == contract.LOGITS)
    rows = "rows"
    del graph.output[:]
    graph.output.extend([
        logits,
        helper.make_tensor_value_info(CAM_INSIDE, TensorProto.FLOAT, [rows]),
        helper.make_tensor_value_info(CAM_TOTAL, TensorProto.FLOAT, [rows]),
        helper.make_tensor_value_info(MASK_VOXELS, TensorProto.INT64, [rows]),
        helper.make_tensor_value_info(RANK_COUNTS, TensorProto.INT64, [rows, 4]),
        helper.make_tensor_value_info(PEAK_COUNTS, TensorProto.INT64, [rows, 2]),
    ])
    return headed
