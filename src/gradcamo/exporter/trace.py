"""Trace a GradCamWrapper into a plain aten graph and convert it to ONNX.

``torch.autograd.grad`` inside ``forward`` does not export directly; tracing the wrapper
with ``make_fx`` records the backward as ordinary aten ops, which the dynamo ONNX
exporter then lowers. Both steps rely on private torch APIs: see the pin in pyproject.
"""

import contextlib
import io
import logging
import re
import warnings

import torch
from torch.export import Dim
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.fx.experimental.proxy_tensor import make_fx

from gradcamo import contract
from gradcamo.errors import ExportError, GradcamoError, first_line
from gradcamo.exporter.decompositions import gradient_decompositions, simplify_as_strided

LOGGER = logging.getLogger(__name__)


def choose_trace_batch(input_shape) -> int:
    """Batch size of the example inputs: >= 2 and unequal to every crop dimension.

    make_fx gives equal input sizes one symbol ("duck sizing"); a batch equal to, say,
    the channel count would be specialised to that constant with it.
    """
    batch = 2
    while batch in input_shape:
        batch += 1
    return batch

MAX_BATCH = 1 << 20


def trace_gradient_graph(wrapper, example_image, example_target) -> torch.fx.GraphModule:
    """Record ``wrapper``'s forward and partial backward as an aten ``GraphModule``.

    Traced under the MATH attention backend: ``scaled_dot_product_attention`` (ViTs' fused
    attention) then records matmul and softmax, whose backward the ONNX exporter lowers
    (the fused CPU kernels' backward it cannot).
    """
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            traced = make_fx(
                wrapper,
                tracing_mode="symbolic",
                decomposition_table=gradient_decompositions(),
                _allow_non_fake_inputs=True,
            )(example_image, example_target)
    except GradcamoError:
        raise
    except Exception as error:  # the tracer raises many types on code it cannot follow
        raise ExportError(
            f"the model cannot be traced for export (it branches on tensor values or computes shapes from "
            f"them): {first_line(error)}"
        ) from error
    replaced = simplify_as_strided(traced)
    LOGGER.debug("traced %d nodes, %d as_strided views rewritten", len(traced.graph.nodes), replaced)
    return traced


def _unsupported_ops(message):
    return sorted(set(re.findall(r"No ONNX function found for <OpOverload\(op='([^']+)'", message)))


@contextlib.contextmanager
def _exporter_logs_kept_back():
    """Keep the ONNX exporter's own log lines (e.g. "torchvision is not installed. Skipping
    torchvision::nms", once per op) off the user's terminal; errors still surface as ExportError."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert_to_onnx(module, example_inputs, *, opset, input_names=contract.INPUT_NAMES,
                    output_names=contract.OUTPUT_NAMES):
    """Convert a module (a traced gradient graph, or a plain forward graph) to an ONNX ``ModelProto``.

    Every input gets one dynamic batch axis (axis 0), named :data:`gradcamo.contract.BATCH_AXIS`.
    """
    batch = Dim(contract.BATCH_AXIS, min=1, max=MAX_BATCH)
    exporter_log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(exporter_log), _exporter_logs_kept_back():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=tuple({0: batch} for _ in example_inputs),
                verbose=False,
            )
    except Exception as error:  # the exporter raises many unrelated types; report them as one
        unsupported = _unsupported_ops(str(error))
        if unsupported:
            raise ExportError(
                "the graph uses ops the ONNX exporter cannot lower: "
                f"{', '.join(unsupported)}; choose another target layer or report this model"
            ) from error
        raise ExportError(f"torch.onnx.export failed: {first_line(error)}") from error
    LOGGER.debug("%s", exporter_log.getvalue())
    model_proto = program.model_proto
    for value in model_proto.graph.input:
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise ExportError(
                f"the batch axis of input {value.name!r} was specialised to a constant while "
                "tracing; the model must treat the batch axis generically (no fixed-size view)"
            )
    return model_proto
