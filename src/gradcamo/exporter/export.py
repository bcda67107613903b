"""export_model: a torch classifier -> one validated gradcamo ONNX file."""

import copy
import dataclasses
import json
import logging
import math
import os
import pathlib

import onnx
import torch
from torch import nn

import gradcamo
from gradcamo import contract
from gradcamo.errors import ExportError, GradcamoError, InputError, first_line
from gradcamo.files import atomic_path
from gradcamo.exporter.loading import hash_weights
from gradcamo.exporter.trace import choose_trace_batch, convert_to_onnx, trace_gradient_graph
from gradcamo.exporter.layout import decide_layout
from gradcamo.exporter.validate import make_validation_inputs, validate_onnx
from gradcamo.exporter.wrap import GradCamWrapper, capture_layer_output, resolve_layer

LOGGER = logging.getLogger(__name__)
DEFAULT_OPSET = 18


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What export_model wrote."""

    path: pathlib.Path
    metadata: dict
    validation: object  # ValidationReport, or None when validation was skipped
    layout: object = None  # the TargetLayout the layer's output was read with


def check_input_shape(input_shape) -> tuple:
    shape = tuple(input_shape)
    if len(shape) not in (3, 4) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise InputError(
            f"--input-shape: expected C,H,W (2D) or C,D,H,W (3D) positive integers, got {shape}"
        )
    return shape


def check_channel_values(values, n_channels, option, *, positive=False) -> list[float] | None:
    """``values`` as floats, one per channel (None stays None); ``positive``: each must be > 0.

    Raises
    ------
    InputError
        Not ``n_channels`` values, a value that is not finite, or (``positive``) one <= 0;
        the message names ``option``.
    """
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) != n_channels:
        raise InputError(f"{option}: expected {n_channels} values (one per channel), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{option}: every value must be a finite number, got {values}")
    if positive and not all(v > 0 for v in values):
        raise InputError(f"{option}: every value must be > 0, got {values}")
    return values


def check_normalisation(mean, std, n_channels, *,
                        options=("--mean", "--std")) -> tuple[list[float] | None, list[float] | None]:
    """A per-channel normalisation ``(x - mean) / std`` checked: ``mean`` finite, ``std`` finite and > 0.

    ``options`` names the two options in messages. Every command that takes a mean and a std
    checks them here, so that no std escapes the positivity check.

    Returns
    -------
    tuple
        ``(mean, std)``, each a list of float or None.
    """
    return (check_channel_values(mean, n_channels, options[0]),
            check_channel_values(std, n_channels, options[1], positive=True))


def check_output_path(path) -> pathlib.Path:
    """``path`` as a Path to a file that may be written: not a directory, in an existing directory."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise InputError(f"-o: {str(path)!r} is a directory; give a file name such as model.onnx")
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise InputError(f"-o: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"-o: directory {str(parent)!r} is not writable")
    return path


def _first_convolution(model):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return name, module
    return None, None


def shape_or_type(value) -> tuple | str:
    """A returned value, described for an error message: its shape if it is a tensor, else its type's name."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _probe(model, layer_name, input_shape, **layout_options):
    """Run the model once; check the input fits and decide how the layer's output is read.

    Returns n_classes and the :class:`TargetLayout`.
    """
    spatial_dims = len(input_shape) - 1
    conv_name, conv = _first_convolution(model)
    if conv is not None:
        conv_dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(conv)]
        if conv_dims != spatial_dims:
            raise InputError(
                f"--input-shape: {','.join(map(str, input_shape))} is {spatial_dims}D but the model's "
                f"first convolution {conv_name!r} is {conv_dims}D"
            )
        if conv.in_channels != input_shape[0]:
            raise InputError(
                f"--input-shape: {input_shape[0]} channels but the model's first convolution "
                f"{conv_name!r} takes {conv.in_channels}"
            )
    layer = resolve_layer(model, layer_name)
    batch = choose_trace_batch(input_shape)
    example = torch.zeros((batch, *input_shape))
    try:
        with torch.no_grad(), capture_layer_output(layer) as leaves:
            logits = model(example)
    except GradcamoError:
        raise
    except Exception as error:  # user models raise anything on a bad shape
        raise InputError(
            f"--input-shape: the model rejects input {tuple(input_shape)}: {first_line(error)}"
        ) from error
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        raise ExportError(f"the model must return (N, classes) logits, got {shape_or_type(logits)}")
    if not leaves:
        raise InputError(f"--target-layer: layer {layer_name!r} is not called in the model's forward")
    shape = tuple(leaves[0].shape)
    if not shape or shape[0] != batch:
        raise InputError(
            f"--target-layer: {layer_name!r} outputs shape {shape} for a batch of {batch}: its first axis "
            "is not the batch (e.g. attention windows); choose another layer (`gradcamo layers` lists candidates)"
        )
    layout = decide_layout(shape, input_shape[1:], model=model, layer_name=layer_name, layer=layer, **layout_options)
    return logits.shape[1], layout


def check_channel_names(names, n_channels) -> list[str] | None:
    """Channel names for ``--channel-names``: one per input channel, non-empty, unique case-insensitively."""
    if names is None:
        return None
    names = [str(name).strip() for name in names]
    if len(names) != n_channels:
        raise InputError(f"--channel-names: the crop has {n_channels} channels, got {len(names)} names")
    if not all(names) or len({name.lower() for name in names}) != len(names):
        raise InputError(f"--channel-names: names must be non-empty and unique (ignoring case), got {names}")
    return names


def check_gradient_reaches(wrapper, input_shape, n_classes, *, mean=None, std=None) -> None:
    """Refuse a target layer whose gradient is zero on every validation input (both target passes).

    Raises
    ------
    InputError
        Naming the layer and the way out.
    """
    image, target_passes = make_validation_inputs(input_shape, n_classes, mean=mean, std=std)
    for target in target_passes:
        _, _, gradients = wrapper(torch.from_numpy(image), torch.from_numpy(target))
        if bool(gradients.ne(0).any()):
            return
    raise InputError(
        f"--target-layer: the gradient of the logits with respect to {wrapper.layer_name!r} is zero on every "
        "validation input (a layer after the last use of what the logits depend on, e.g. a ViT's last block "
        "when only its class token reaches the head; a zero-initialised head; a detached branch): choose an "
        "earlier layer; `gradcamo layers` lists candidates"
    )


def _metadata(*, target_layer, layout, input_shape, class_names, mean, std, validation, weights_sha256,
              channel_names=None):
    named = {contract.META_CHANNEL_NAMES: json.dumps(channel_names)} if channel_names else {}
    return {
        **named,
        contract.META_FORMAT_VERSION: str(contract.FORMAT_VERSION),
        contract.META_TARGET_LAYER: target_layer,
        contract.META_TARGET_LAYOUT: layout.to_json(),
        contract.META_SPATIAL_DIMS: str(len(input_shape) - 1),
        contract.META_INPUT_SHAPE: json.dumps(list(input_shape)),
        contract.META_CLASS_NAMES: json.dumps(list(class_names)),
        contract.META_PREPROCESSING: json.dumps({"mean": mean, "std": std}),
        contract.META_VALIDATION: validation.to_json() if validation else json.dumps(None),
        contract.META_TORCH_VERSION: torch.__version__,
        contract.META_WEIGHTS_SHA256: weights_sha256,
        contract.META_GRADCAMO_VERSION: gradcamo.__version__,
    }


def write_atomically(model_proto, path) -> None:
    """Save an ONNX model at ``path``, all of it or nothing (:func:`gradcamo.files.atomic_path`)."""
    with atomic_path(path) as temporary:
        onnx.save(model_proto, str(temporary))


def export_model(
    model, target_layer, input_shape, path, *, class_names=None, mean=None, std=None,
    opset=DEFAULT_OPSET, validate=True, channel_names=None, target_layout=None, token_grid=None, prefix_tokens=None,
    target_label=None,
):
    """Export ``model`` as one ONNX graph returning logits, activations and gradients.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning (N, classes) logits. It is copied, never modified.
    target_layer : str
        Name of the sub-module (as in ``model.named_modules()``) whose output is explained.
    input_shape : tuple of int
        Crop shape ``(C, H, W)`` or ``(C, D, H, W)``.
    path : str or os.PathLike
        The ``.onnx`` file to write; written only when validation passes.
    class_names : sequence of str, optional
        One name per logit; default ``class_0``, ``class_1``, ...
    mean, std : sequence of float, optional
        Per-channel normalisation ``(x - mean) / std``, baked into the graph.
    opset : int
        ONNX opset.
    validate : bool
        Compare ORT with torch autograd on seeded inputs and refuse to write on disagreement.
    channel_names : sequence of str, optional
        The input channels the model was trained on, in order (``DNA, ER, RNA, AGP, Mito``);
        recorded as ``gradcamo.channel_names`` so that ``score`` picks a store's channels by name.
    target_layout : {"nchw", "nhwc", "tokens"}, optional
        How the layer's output is read; default: decided from the layer, the model and the
        shape (:func:`gradcamo.exporter.layout.decide_layout`), refused when undecidable.
    token_grid : tuple of int, optional
        Token grid ``(h, w)`` or ``(d, h, w)`` of a ``tokens`` layer, when the model declares none.
    prefix_tokens : int, optional
        Tokens before the grid (class, distillation, register), when the model declares none.
    target_label : str, optional
        The target layer's name as recorded in the metadata, when it is not ``target_layer``
        (an ONNX model's tensor name).

    Returns
    -------
    ExportResult

    Raises
    ------
    InputError
        A bad argument (layer, shape, channels, path, class names, normalisation), an
        undecidable layout, or a layer whose gradient is zero on every validation input.
    ExportError
        The model cannot be traced or converted.
    ValidationError
        The exported graph disagrees with torch beyond tolerance.
    """
    input_shape = check_input_shape(input_shape)
    path = check_output_path(path)
    mean, std = check_normalisation(mean, std, input_shape[0])
    channel_names = check_channel_names(channel_names, input_shape[0])
    model = copy.deepcopy(model).float().eval()
    n_classes, layout = _probe(model, target_layer, input_shape, layout=target_layout, token_grid=token_grid,
                               prefix_tokens=prefix_tokens)
    LOGGER.debug("target layer %r read as %s", target_layer, layout.describe())
    if class_names is None:
        class_names = [f"class_{i}" for i in range(n_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != n_classes:
        raise InputError(f"--classes: the model has {n_classes} outputs, got {len(class_names)} class names")
    if len(set(class_names)) != len(class_names):
        raise InputError(f"--classes: names must be unique, got {class_names}")

    wrapper = GradCamWrapper(model, target_layer, input_shape=input_shape, mean=mean, std=std, layout=layout).eval()
    check_gradient_reaches(wrapper, input_shape, n_classes, mean=mean, std=std)
    batch = choose_trace_batch(input_shape)
    example_image = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    example_target = torch.tensor([contract.PREDICTED_CLASS] + [0] * (batch - 1))
    LOGGER.info("tracing the gradient graph of %r", target_layer)
    graph_module = trace_gradient_graph(wrapper, example_image, example_target)
    LOGGER.info("converting to ONNX (opset %d)", opset)
    model_proto = convert_to_onnx(graph_module, (example_image, example_target), opset=opset)

    report = None
    if validate:
        LOGGER.info("validating against torch autograd")
        report = validate_onnx(
            model_proto.SerializeToString(), wrapper, input_shape, n_classes, mean=mean, std=std
        )
        LOGGER.info("CAM max relative error %.2e (tolerance %.0e)", report.cam_max_rel_error, report.cam_rtol)
    metadata = _metadata(
        target_layer=target_label or target_layer, layout=layout, input_shape=input_shape, class_names=class_names,
        mean=mean, std=std, validation=report, weights_sha256=hash_weights(model), channel_names=channel_names,
    )
    onnx.helper.set_model_props(model_proto, metadata)
    write_atomically(model_proto, path)
    LOGGER.info("wrote %s", path)
    return ExportResult(path=path, metadata=metadata, validation=report, layout=layout)
