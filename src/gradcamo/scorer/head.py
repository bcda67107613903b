"""Append the Grad-CAMO arithmetic to a gradcamo graph, so only per-row numbers leave it.

The head computes, inside ONNX, what :mod:`gradcamo.cam` and :mod:`gradcamo.localisation`
compute in numpy: one ReLU'd CAM per method from the activations and gradients of the one
forward/backward pass, the convention's scaling and resize to the crop, the masked and
total sums and the voxel counts of the localisation metrics.

Rows are (sample, method) pairs, sample-major: row ``n * M + m`` is sample ``n`` under
``methods[m]``. Every output but ``logits`` has one entry per row.
"""

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradcamo import contract
from gradcamo.cam import (
    CONVENTIONS, GRADCAM_PLUSPLUS_EPS, MINMAX_EPS, XGRADCAM_EPS, check_choice, check_methods, resize_matrices,
)
from gradcamo.model_file import static_spatial_shape

MASK = "mask"
CAM_INSIDE = "cam_inside"
CAM_TOTAL = "cam_total"
MASK_VOXELS = "mask_voxels"
RANK_COUNTS = "rank_counts"
PEAK_VALUES = "peak_values"
FEATURES = "features"
"""Per sample (not per row): the target layer's activations averaged over space, ``[batch, C]``."""
HEAD_OUTPUTS = (contract.LOGITS, CAM_INSIDE, CAM_TOTAL)
METRIC_OUTPUTS = (MASK_VOXELS, RANK_COUNTS, PEAK_VALUES)
"""Inputs of :func:`gradcamo.localisation.localisation_metrics`: voxel counts (int64), peak values (float32)."""
_PREFIX = "gradcamo_head/"
CROP_CAM = "crop_cam"
"""Optional output (:func:`expose_crop_cam`): each row's CAM at crop resolution, ``[rows, 1, *crop]``."""


@dataclasses.dataclass(frozen=True)
class HeadOutputs:
    """The headed graph's outputs for a batch: what the score rows are built from.

    Rows are (sample, method) pairs, sample-major (``rows = samples * methods``).
    """

    logits: np.ndarray
    """(samples, classes) float32."""
    cam_inside: np.ndarray
    """(rows,) float32: the CAM summed over the cell's mask."""
    cam_total: np.ndarray
    """(rows,) float32: the CAM summed over the crop."""
    mask_voxels: np.ndarray
    """(rows,) int64; with ``rank_counts`` (rows, 4) int64 and ``peak_values`` (rows, 2) float32,
    the inputs of :func:`gradcamo.localisation.localisation_metrics`."""
    rank_counts: np.ndarray
    peak_values: np.ndarray
    crop_cam: np.ndarray | None = None
    """(rows, 1, *S) float32: each row's CAM at crop resolution, when fetched (:func:`expose_crop_cam`)."""
    features: np.ndarray | None = None
    """(samples, C) float32: the target layer's activations averaged over space, when fetched."""

    @staticmethod
    def names(*, crop_cam: bool = False, features: bool = False) -> list[str]:
        """The graph outputs to fetch, in the order :meth:`of` takes their values."""
        return [*HEAD_OUTPUTS, *METRIC_OUTPUTS, *([CROP_CAM] if crop_cam else []), *([FEATURES] if features else [])]

    @classmethod
    def of(cls, values: list[np.ndarray], *, crop_cam: bool = False, features: bool = False) -> "HeadOutputs":
        """The outputs from ``session.run(HeadOutputs.names(...), feed)``."""
        named = dict(zip(cls.names(crop_cam=crop_cam, features=features), values))
        return cls(named[contract.LOGITS], named[CAM_INSIDE], named[CAM_TOTAL], named[MASK_VOXELS],
                   named[RANK_COUNTS], named[PEAK_VALUES], named.get(CROP_CAM), named.get(FEATURES))

    @classmethod
    def concatenate(cls, parts: list["HeadOutputs"]) -> "HeadOutputs":
        """The outputs of consecutive batches as one."""
        joined: dict[str, Any] = {
            field.name: None if getattr(parts[0], field.name) is None
            else np.concatenate([getattr(part, field.name) for part in parts])
            for field in dataclasses.fields(cls)
        }
        return cls(**joined)


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


def _resize(g, cams, convention, layer_spatial, crop_spatial):
    """``[batch, M, *layer]`` -> ``[batch, M, *crop]`` by one MatMul per axis (:func:`gradcamo.cam.resize_matrices`).

    Linear (half-pixel centres) or, for pytorch-grad-cam in 3D, scipy's cubic spline: both
    are linear maps, separable by axis; MatMul runs on every core where ``Resize`` may not.
    """
    matrices = [m.astype(np.float32) for m in resize_matrices(layer_spatial, crop_spatial, convention)]
    out = g.op("MatMul", [cams, g.constant("resize_x", matrices[-1].T, np.float32)], "resized_x")
    out = g.op("MatMul", [g.constant("resize_y", matrices[-2], np.float32), out], "resized_y")
    if len(crop_spatial) == 2:
        return out
    depth, (big_d, big_h, big_w) = layer_spatial[0], crop_spatial
    out = g.op("Reshape", [out, g.constant("resize_planes", [0, 0, depth, big_h * big_w])], "resize_planes")
    out = g.op("MatMul", [g.constant("resize_z", matrices[0], np.float32), out], "resized_z")
    return g.op("Reshape", [out, g.constant("crop_shape", [0, 0, big_d, big_h, big_w])], "resized")


def _crop_cams(g, cams, convention, layer_spatial, crop_spatial):
    """``[batch, M, *crop]`` maps in the convention (:func:`gradcamo.cam.resize_cam`)."""
    if convention == "raw":
        return _resize(g, cams, convention, layer_spatial, crop_spatial)
    axes = g.constant("map_axes", list(range(2, 2 + len(crop_spatial))))
    resized = _resize(g, _minmax(g, cams, axes, "layer_minmax/"), convention, layer_spatial, crop_spatial)
    return _minmax(g, g.op("Relu", [resized], "crop_relu"), axes, "crop_minmax/")


def _top_k(g, flat, k):
    """Each map's k largest values (k = its mask's size), by one unsorted TopK for the whole batch.

    TopK takes one k for all maps; each map is padded with ``k_max - k`` values above all
    others and ``k`` below, so the k_max largest of a padded map are the pads above and the
    map's own k largest: their minimum is the map's k-th largest value. Returns the values
    ``[batch, M, k_max]``.
    """
    high = g.constant("high", np.finfo(np.float32).max, np.float32)
    low = g.constant("low", -np.finfo(np.float32).max, np.float32)
    one = g.constant("one", 1.0, np.float32)
    k_max = g.op("Max", [g.op("ReduceMax", [k], "k_max_any", keepdims=0), one], "k_max")
    slots = g.op("Range", [g.constant("zero", 0.0, np.float32), k_max, one], "pad_slots")
    pads_above = g.op("Sub", [k_max, k], "pads_above")
    pad = g.op("Where", [g.op("Less", [slots, pads_above], "pad_is_high"), high, low], "pad")
    pad_shape = g.op("Concat", [g.op("Shape", [flat], "maps_shape", start=0, end=2), g.op("Shape", [pad], "pad_length", start=2)],
                     "pad_shape", axis=0)
    padded = g.op("Concat", [flat, g.op("Expand", [pad, pad_shape], "pad_maps")], "padded_cam", axis=2)
    k_top = g.op("Reshape", [g.op("Cast", [k_max], "k_top_scalar", to=TensorProto.INT64), g.constant("one_d", [1])],
                 "k_top")
    g.nodes.append(helper.make_node("TopK", [padded, k_top], [_PREFIX + "top", _PREFIX + "top_indices"],
                                    name=_PREFIX + "top", axis=2, largest=1, sorted=0))
    return _PREFIX + "top"


def _metric_nodes(g, crops, masked, n_methods):
    """Mask voxels, rank counts and peak values (:mod:`gradcamo.localisation`) of each row.

    With t each map's K-th largest value (TopK), voxels above t and voxels equal to t are
    counted over the whole map: every voxel greater than t is one of the top K, so no indices
    are needed (a gather of the top K's mask bits cost more than the comparisons). Float32
    sums of 0 and 1 are exact below 2**24 voxels.
    """
    voxel_axis = g.constant("voxel_axis", [2])
    flat = g.op("Reshape", [crops, g.constant("flatten_maps", [0, 0, -1])], "flat_cam")
    flat_mask = g.op("Reshape", [MASK, g.constant("flatten_masks", [0, 1, -1])], "flat_mask")  # [batch, 1, V]
    k = g.op("ReduceSum", [flat_mask, voxel_axis], "k", keepdims=1)  # [batch, 1, 1]
    threshold = g.op("ReduceMin", [_top_k(g, flat, k), voxel_axis], "threshold", keepdims=1)
    above = g.op("Cast", [g.op("Greater", [flat, threshold], "above")], "above_float", to=TensorProto.FLOAT)
    tied = g.op("Cast", [g.op("Equal", [flat, threshold], "tied")], "tied_float", to=TensorProto.FLOAT)
    counts = [
        g.op("ReduceSum", [g.op("Mul", [above, flat_mask], "above_masked"), voxel_axis], "above_inside", keepdims=1),
        g.op("ReduceSum", [above, voxel_axis], "above_total", keepdims=1),
        g.op("ReduceSum", [g.op("Mul", [tied, flat_mask], "tied_masked"), voxel_axis], "tied_inside", keepdims=1),
        g.op("ReduceSum", [tied, voxel_axis], "tied_total", keepdims=1),
    ]
    rows = g.op("Reshape", [g.op("Concat", counts, "rank_maps", axis=2), g.constant("rank_rows", [-1, 4])], "rank_rows")
    g.op("Cast", [rows], RANK_COUNTS, final=True, to=TensorProto.INT64)
    # CAMs are >= 0, so a product with the mask (or its complement) keeps the maximum inside (outside)
    outside = g.op("Sub", [g.constant("one_mask", 1.0, np.float32), flat_mask], "outside_mask")
    peaks = [
        g.op("ReduceMax", [g.op("Reshape", [masked, g.constant("flatten_maps", [0, 0, -1])], "flat_masked"), voxel_axis],
             "peak_inside", keepdims=1),
        g.op("ReduceMax", [g.op("Mul", [flat, outside], "outside_cam"), voxel_axis], "peak_outside", keepdims=1),
    ]
    g.op("Reshape", [g.op("Concat", peaks, "peak_maps", axis=2), g.constant("peak_rows", [-1, 2])], PEAK_VALUES,
         final=True)
    per_row = g.op("Expand", [k, g.constant("per_method", [1, n_methods, 1])], "k_maps")
    g.op("Cast", [g.op("Reshape", [per_row, g.constant("flat_rows", [-1])], "k_rows")], MASK_VOXELS, final=True,
         to=TensorProto.INT64)


def _head_nodes(layer_spatial, crop_spatial, convention, methods):
    """Nodes and constants from (activations, gradients, mask) to the head's outputs."""
    g = _Graph()
    spatial_dims = len(crop_spatial)
    layer_axes = g.constant("layer_axes", list(range(2, 2 + spatial_dims)))
    g.op("ReduceMean", [contract.ACTIVATIONS, layer_axes], FEATURES, final=True, keepdims=0)
    crops = _crop_cams(g, _layer_cams(g, methods, layer_axes), convention, layer_spatial, crop_spatial)
    map_axes = g.constant("crop_axes", list(range(2, 2 + spatial_dims)))
    flat_rows = g.constant("flat_rows", [-1])
    mask = g.op("Unsqueeze", [MASK, g.constant("mask_channel_axis", [1])], "mask_channel")
    masked = g.op("Mul", [crops, mask], "masked_cam")
    inside = g.op("ReduceSum", [masked, map_axes], "inside_maps", keepdims=0)
    g.op("Reshape", [inside, flat_rows], CAM_INSIDE, final=True)
    # the sum over the rows' maps [rows, 1, *crop]: gradcamo.visual exposes this input as the CAM
    rows = g.op("Reshape", [crops, g.constant("row_shape", [-1, 1, *crop_spatial])], "row_cam")
    g.op("ReduceSum", [rows, g.constant("row_axes", list(range(1, 2 + spatial_dims)))], CAM_TOTAL, final=True,
         keepdims=0)
    _metric_nodes(g, crops, masked, len(methods))
    return g.nodes, list(g.constants.values())


def _layer_spatial(graph, spatial_dims):
    """The target layer's spatial shape, as the graph's ``activations`` output declares it."""
    output = next(o for o in graph.output if o.name == contract.ACTIVATIONS)
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    return static_spatial_shape(dims, spatial_dims, contract.ACTIVATIONS)


def _layer_channels(graph):
    """The target layer's channel count as the graph declares it (a name where it is not static)."""
    dim = next(o for o in graph.output if o.name == contract.ACTIVATIONS).type.tensor_type.shape.dim[1]
    return dim.dim_value if dim.HasField("dim_value") else "channels"


def append_score_head(model, *, crop_spatial, convention="raw", methods=("gradcam",)) -> onnx.ModelProto:
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
        int64 ``[rows, 4]`` and ``peak_values`` float32 ``[rows, 2]``
        (:mod:`gradcamo.localisation`); then per sample ``features`` float32 ``[batch, C]``,
        the target layer's activations averaged over space.

    Raises
    ------
    InputError
        Unknown convention or method, a repeated method.
    ContractError
        The graph's activations have no static spatial shape.
    """
    check_choice("convention", convention, CONVENTIONS)
    methods = check_methods(methods)
    headed = onnx.ModelProto()
    headed.CopyFrom(model)
    graph = headed.graph
    layer_spatial = _layer_spatial(graph, len(crop_spatial))
    nodes, constants = _head_nodes(layer_spatial, crop_spatial, convention, methods)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    graph.input.append(
        helper.make_tensor_value_info(MASK, TensorProto.FLOAT, [contract.BATCH_AXIS, *crop_spatial])
    )
    logits = next(o for o in graph.output if o.name == contract.LOGITS)
    channels = _layer_channels(graph)
    rows = "rows"
    del graph.output[:]
    graph.output.extend([
        logits,
        helper.make_tensor_value_info(CAM_INSIDE, TensorProto.FLOAT, [rows]),
        helper.make_tensor_value_info(CAM_TOTAL, TensorProto.FLOAT, [rows]),
        helper.make_tensor_value_info(MASK_VOXELS, TensorProto.INT64, [rows]),
        helper.make_tensor_value_info(RANK_COUNTS, TensorProto.INT64, [rows, 4]),
        helper.make_tensor_value_info(PEAK_VALUES, TensorProto.FLOAT, [rows, 2]),
        helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [contract.BATCH_AXIS, channels]),
    ])
    return headed


def expose_crop_cam(model) -> onnx.ModelProto:
    """The scorer's headed graph with its crop-resolution CAM as the extra output ``crop_cam``.

    Parameters
    ----------
    model : onnx.ModelProto
        A graph returned by :func:`gradcamo.scorer.head.append_score_head`.

    Returns
    -------
    onnx.ModelProto
        A copy with the extra output ``crop_cam`` ``[rows, 1, *crop_spatial]``: the input of
        the sum that gives ``cam_total`` (``gradcamo cams`` shows it; ``--deletion-steps`` ranks by it).
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    total = next(node for node in exposed.graph.node if CAM_TOTAL in node.output)
    exposed.graph.node.append(helper.make_node("Identity", [total.input[0]], [CROP_CAM], name=CROP_CAM))
    exposed.graph.output.append(helper.make_empty_tensor_value_info(CROP_CAM))
    return exposed
