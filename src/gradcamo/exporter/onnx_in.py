"""A forward-only ONNX classifier from any framework as a torch model to export.

The graph is converted with onnx2torch (each ONNX node becomes a sub-module), the
target tensor's producing node is the layer to hook, and the conversion is checked
before export: logits against the original file run in onnxruntime, and the gradient
of the logits with respect to the target tensor against finite differences.

Each tensor's axes are read from the graph, never guessed: ONNX defines Conv, pooling
and normalisation ops as channels-first, the graph input is as ``input_layout`` says,
Transpose permutes the axes and element-wise ops keep them. The converted model
declares them (:attr:`OnnxClassifier.graph_tensors`), and
:func:`~gradcamo.exporter.layout.decide_layout` reads a channels-last tensor as ``nhwc``
(converted in the exported graph) and one the graph does not decide from the flags or
its shape, as for a torch layer.
"""

import difflib
import logging
import pathlib

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn

from gradcamo.errors import ExportError, InputError, ValidationError, describe
from gradcamo.exporter.wrap import GradCamWrapper

LOGGER = logging.getLogger(__name__)

INPUT_LAYOUTS = ("nchw", "nhwc")
CHANNELS_FIRST_OPS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
}
LAYOUT_KEEPING_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Gelu", "Softplus", "Softsign", "Mish", "Clip", "Identity", "Dropout", "Erf", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Reciprocal", "Cast", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Concat",
    "Pad",
}
LOGIT_RTOL = 1e-4
GRADIENT_RTOL = 1e-3
FD_STEP = 1e-6


def _node_name(index):
    return f"n{index}"


class OnnxClassifier(nn.Module):
    """An onnx2torch graph taking channels-first crops (permuted to channels-last when the graph wants them).

    ``graph_tensors`` maps the sub-module of each single-output node (``graph.n3``) to its
    output tensor's name and axes as the graph defines them (``NCHW``, ``NHWC``, ..., or None
    where the graph does not decide them).
    """

    def __init__(self, graph, *, channels_last, graph_tensors):
        super().__init__()
        self.graph = graph
        self.channels_last = channels_last
        self.graph_tensors = graph_tensors

    def forward(self, image) -> torch.Tensor:
        if self.channels_last:
            image = image.movedim(1, -1)
        return self.graph(image)


class StaticReshape(nn.Module):
    """ONNX Reshape to a shape that is a constant of the graph (0 keeps the input's size).

    Replaces onnx2torch's Reshape, which tests its shape input's values: export's symbolic
    tracing cannot follow that test.
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, tensor, shape) -> torch.Tensor:  # noqa: ARG002 (the graph's constant: self.shape)
        return tensor.reshape([tensor.shape[i] if size == 0 else size for i, size in enumerate(self.shape)])


def _fix_reshapes(proto, graph):
    """Give every Reshape whose shape is an initializer or a Constant node's output that shape as Python ints."""
    constants = {tensor.name: tensor for tensor in proto.graph.initializer}
    constants.update({node.output[0]: attribute.t for node in proto.graph.node if node.op_type == "Constant"
                      for attribute in node.attribute if attribute.name == "value"})
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Reshape" and node.input[1] in constants and hasattr(graph, _node_name(i)):
            shape = onnx.numpy_helper.to_array(constants[node.input[1]])
            setattr(graph, _node_name(i), StaticReshape([int(size) for size in shape.reshape(-1)]))


def _read(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"MODEL: file {str(path)!r} not found")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and others on a damaged file
        raise InputError(f"MODEL: {str(path)!r} is not an ONNX model ({describe(error)})") from error


def _graph_input(proto, path):
    weights = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise InputError(
            f"MODEL: {str(path)!r} has {len(inputs)} inputs and {len(proto.graph.output)} outputs; a classifier "
            "graph takes one image input and returns one (N, classes) logits output"
        )
    return inputs[0]


def _check_input_shape(graph_input, input_shape, channels_last):
    native = (*input_shape[1:], input_shape[0]) if channels_last else tuple(input_shape)
    dims = graph_input.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if declared and declared[0] is not None:
        raise InputError(
            f"MODEL: the graph's input {graph_input.name!r} has a fixed batch of {declared[0]}; gradcamo runs "
            "batches of any size: export the graph with a dynamic batch axis (torch.onnx.export: "
            f"dynamic_axes={{{graph_input.name!r}: {{0: 'batch'}}}})"
        )
    if len(declared) != len(native) + 1 or any(d is not None and d != n for d, n in zip(declared[1:], native)):
        shown = ",".join("?" if d is None else str(d) for d in declared)
        layout = "channels-last" if channels_last else "channels-first"
        raise InputError(
            f"--input-shape: {','.join(map(str, input_shape))} read {layout} is ({'N,' + ','.join(map(str, native))}) "
            f"but the graph's input {graph_input.name!r} is ({shown})"
            + ("" if channels_last else "; for a channels-last graph add --input-layout nhwc")
        )


def _producers(proto):
    return {name: (index, node) for index, node in enumerate(proto.graph.node) for name in node.output if name}


def _ranks(proto):
    """The rank of every tensor whose shape ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference fails on some valid graphs; ranks are then unknown
        inferred = proto
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _channels_first(rank):
    return "NC" + "DHW"[5 - rank:] if rank in (3, 4, 5) else None


def _graph_axes(proto, graph_input, input_layout):
    """Every tensor's axes as letters (``NCHW``, ``NHWC``, ``NCDHW``, ...), None where the graph does not decide.

    ONNX nodes are in topological order, so one forward pass sees each node's inputs first.
    """
    ranks = _ranks(proto)
    first = _channels_first(ranks.get(graph_input.name))
    axes = {graph_input.name: first if first is None or input_layout == "nchw" else "N" + first[2:] + "C"}
    for node in proto.graph.node:
        outputs = [name for name in node.output if name]
        if len(outputs) == 1:
            axes[outputs[0]] = _node_axes(node, outputs[0], axes, ranks)
    return axes


def _node_axes(node, output, axes, ranks):
    if node.op_type in CHANNELS_FIRST_OPS:
        return _channels_first(ranks.get(output))
    if node.op_type == "Transpose":
        source = axes.get(node.input[0])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if source is None or perm is None or sorted(perm) != list(range(len(source))):
            return None
        return "".join(source[p] for p in perm)
    if node.op_type in LAYOUT_KEEPING_OPS:
        # inputs of an element-wise op share their axes' meaning (or broadcast): one known layout decides
        rank = ranks.get(output)
        known = {axes.get(name) for name in node.input if name and rank and ranks.get(name) == rank} - {None}
        return known.pop() if len(known) == 1 else None
    return None


def _find_target(proto, tensor, graph_input, path):
    producers = _producers(proto)
    if tensor not in producers:
        names = list(producers)
        close = difflib.get_close_matches(tensor, names, n=5, cutoff=0.4)
        hint = f"close names: {', '.join(close)}" if close else f"its tensors include: {', '.join(names[:8])}"
        kind = " (the graph's input)" if tensor == graph_input.name else ""
        raise InputError(f"--target-layer: {str(path)!r} has no intermediate tensor {tensor!r}{kind}; {hint}")
    index, node = producers[tensor]
    if len([o for o in node.output if o]) != 1:
        raise InputError(
            f"--target-layer: {tensor!r} is one of several outputs of {node.op_type} node {node.name!r}; "
            "choose a tensor that is its node's only output"
        )
    return index


def _check_convertible(proto):
    from onnx2torch.node_converters.registry import get_converter

    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise InputError("MODEL: the ONNX graph declares no ai.onnx opset")
    for node in proto.graph.node:
        try:
            get_converter(node.op_type, version, node.domain or "")
        except NotImplementedError:
            domain = f" (domain {node.domain})" if node.domain else ""
            raise ExportError(
                f"the ONNX graph's node {node.name or '(unnamed)'!r} uses operator {node.op_type}{domain} at opset "
                f"{version}, which onnx2torch cannot convert to torch"
            ) from None


def _open(path, input_shape, input_layout):
    if input_layout not in INPUT_LAYOUTS:
        raise InputError(f"--input-layout: expected one of {', '.join(INPUT_LAYOUTS)}, got {input_layout!r}")
    proto = _read(path)
    graph_input = _graph_input(proto, path)
    _check_input_shape(graph_input, input_shape, input_layout == "nhwc")
    return proto, graph_input


def _convert(proto, path, graph_input, input_shape, input_layout):
    """The graph as an :class:`OnnxClassifier` whose logits match onnxruntime's; the check's input and error."""
    import onnx2torch

    _check_convertible(proto)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(proto)
    for i, node in enumerate(renamed.graph.node):
        node.name = _node_name(i)
    try:
        graph = onnx2torch.convert(renamed)
    except Exception as error:  # onnx2torch raises many types on attributes it does not support
        raise ExportError(f"onnx2torch cannot convert {str(path)!r}: {describe(error)}") from error
    _fix_reshapes(proto, graph)
    axes, modules, tensors = _graph_axes(proto, graph_input, input_layout), dict(graph.named_modules()), {}
    for i, node in enumerate(proto.graph.node):
        outputs = [name for name in node.output if name]
        if len(outputs) == 1 and _node_name(i) in modules:
            tensors[f"graph.{_node_name(i)}"] = (outputs[0], axes.get(outputs[0]))
    model = OnnxClassifier(graph, channels_last=input_layout == "nhwc", graph_tensors=tensors).eval()
    image = torch.randn((3, *input_shape), generator=torch.Generator().manual_seed(0))
    return model, image, _logit_difference(proto, model, image)


def convert_onnx_classifier(path, input_shape, *, input_layout="nchw") -> OnnxClassifier:
    """The ONNX classifier at ``path`` converted to torch, its logits checked against onnxruntime's.

    For ``gradcamo layers``: every tensor of the graph is a candidate target (see
    :attr:`OnnxClassifier.graph_tensors`). Raises as :func:`load_onnx_classifier`.
    """
    proto, graph_input = _open(path, input_shape, input_layout)
    return _convert(proto, path, graph_input, input_shape, input_layout)[0]


def load_onnx_classifier(path, target_tensor, input_shape, *, input_layout="nchw") -> tuple[nn.Module, str]:
    """Convert a forward-only ONNX classifier to torch and check the conversion.

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX file.
    target_tensor : str
        Name of an intermediate tensor of the graph; its layout is decided at export
        (:func:`~gradcamo.exporter.layout.decide_layout`) from the axes the graph defines.
    input_shape : tuple of int
        Crop shape ``(C, [D,] H, W)`` (channels first, as gradcamo feeds it).
    input_layout : {"nchw", "nhwc"}
        The layout of the graph's own input.

    Returns
    -------
    model : OnnxClassifier
    layer_name : str
        The sub-module of ``model`` whose output is ``target_tensor``.

    Raises
    ------
    InputError
        A missing or damaged file, an unknown target tensor, a shape that does not fit.
    ExportError
        An operator onnx2torch cannot convert.
    ValidationError
        The converted model's logits or gradients disagree with the file (onnxruntime) or finite differences.
    """
    proto, graph_input = _open(path, input_shape, input_layout)
    index = _find_target(proto, target_tensor, graph_input, path)
    model, image, difference = _convert(proto, path, graph_input, input_shape, input_layout)
    layer_name = f"graph.{_node_name(index)}"
    if layer_name not in model.graph_tensors:
        node = proto.graph.node[index]
        raise ExportError(f"onnx2torch turned node {node.name!r} ({node.op_type}) into no module to hook")
    gradient_error = finite_difference_error(model, layer_name, image, input_shape)
    if not gradient_error <= GRADIENT_RTOL:
        raise ValidationError(
            f"the gradient with respect to {target_tensor!r} differs from finite differences by {gradient_error:.2e} "
            f"(relative; tolerance {GRADIENT_RTOL:.0e})"
        )
    LOGGER.info("ONNX conversion: logits %.1e from onnxruntime, gradient %.1e from finite differences", difference,
                gradient_error)
    _warn_about_probabilities(proto)
    return model, layer_name


def _warn_about_probabilities(proto):
    """Keras classifiers often end in a softmax: their gradients are those of probabilities, not logits."""
    last = _producers(proto).get(proto.graph.output[0].name, (None, None))[1]
    if last is not None and last.op_type in ("Softmax", "LogSoftmax"):
        LOGGER.warning(
            "the graph's output comes from %s node %r: the scores will explain %s, not logits; "
            "export the graph without its final %s to explain logits",
            last.op_type, last.name, "probabilities" if last.op_type == "Softmax" else "log-probabilities",
            last.op_type,
        )


def _logit_difference(proto, model, image):
    """Largest difference of the converted model's logits from onnxruntime's on ``image``; refused beyond tolerance."""
    import onnxruntime as ort

    native = image.movedim(1, -1) if model.channels_last else image
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        (expected,) = session.run(None, {session.get_inputs()[0].name: native.numpy()})
    except Exception as error:  # onnxruntime raises its own exception types
        raise InputError(f"MODEL: onnxruntime cannot run the ONNX graph: {describe(error)}") from error
    with torch.no_grad():
        logits = model(image)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected.shape or expected.ndim != 2:
        raise ExportError(f"the ONNX graph must return (N, classes) logits, got shape {expected.shape}")
    difference = float(np.abs(logits.numpy() - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not difference <= LOGIT_RTOL * scale:
        raise ValidationError(f"the torch conversion's logits differ from onnxruntime's by {difference:.2e} "
                              f"(scale {scale:.2e})")
    return difference


def finite_difference_error(model, layer_name, image, input_shape) -> float:
    """Relative error of autograd's directional derivative of the predicted logits along random
    directions of the layer's output against a central finite difference, in float64."""
    model = model.double()
    try:
        image = image.double()
        target = torch.full((image.shape[0],), -1)
        wrapper = GradCamWrapper(model, layer_name, input_shape=input_shape)
        with torch.no_grad():
            logits, activations, gradients = wrapper(image, target)
        target = logits.argmax(dim=1)
        direction = torch.randn(activations.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        step = FD_STEP * max(1.0, float(activations.abs().max()))
        layer = dict(model.named_modules())[layer_name]

        def selected(shift):
            handle = layer.register_forward_hook(lambda module, inputs, output: output + shift)
            try:
                with torch.no_grad():
                    return model(image).gather(1, target[:, None]).sum()
            finally:
                handle.remove()

        numeric = float((selected(step * direction) - selected(-step * direction)) / (2 * step))
        analytic = float((gradients * direction).sum())
        return abs(numeric - analytic) / max(abs(analytic), float(gradients.abs().sum()) * 1e-3, 1e-12)
    finally:
        model.float()
