"""What ``gradcamo export`` exports: the model as given (torch or ONNX), its weights and references."""

import dataclasses
import pathlib

from torch import nn

from gradcamo.errors import InputError
from gradcamo.exporter.export import check_input_shape
from gradcamo.exporter.loading import load_model, load_weights
from gradcamo.exporter.layers import list_layers
from gradcamo.exporter.onnx_in import convert_onnx_classifier, load_onnx_classifier
from gradcamo.exporter.references import CosineSimilarityHead, read_references, reference_names
from gradcamo.exporter.wrap import resolve_layer


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """A model ready for :func:`gradcamo.export_model`."""

    model: nn.Module
    layer_name: str  # the sub-module of ``model`` to hook
    target_label: str  # the target layer as the user named it, recorded in the metadata
    class_names: list  # or None: the export's default


def load_source(
    spec, target_layer, input_shape, *, weights=None, factory_kwargs=None, trust_pickle=False,
    input_layout=None, references=None,
):
    """Load MODEL (a torch model spec or an ONNX file) as gradcamo exports it.

    An ONNX ``spec`` is converted and checked (:func:`load_onnx_classifier`); ``target_layer``
    then names a tensor of its graph. With ``references``, the model's (N, D) embedding
    becomes K cosine-similarity logits named after the references.

    Raises
    ------
    InputError
        Options that do not apply to this kind of model, and every loading error.
    """
    input_shape = check_input_shape(input_shape)
    if _is_onnx(spec, weights, factory_kwargs):
        model, layer_name = load_onnx_classifier(spec, target_layer, input_shape, input_layout=input_layout or "nchw")
    else:
        _refuse_input_layout(input_layout)
        model, layer_name = load_model(spec, factory_kwargs, trust_pickle=trust_pickle), target_layer
        if weights:
            load_weights(model, weights, trust_pickle=trust_pickle)
    if references is None:
        return ExportSource(model, layer_name, target_layer, None)
    resolve_layer(model, layer_name)  # a wrong layer is named as the user gave it, not under the head
    vectors, names = read_references(references)
    return ExportSource(
        CosineSimilarityHead(model, vectors), f"model.{layer_name}", target_layer,
        reference_names(names, len(vectors)),
    )


def source_layers(
    spec, input_shape, *, weights=None, factory_kwargs=None, input_layout=None, trust_pickle=False,
) -> tuple[list, str | None]:
    """``gradcamo layers``: the candidate target layers of MODEL (:func:`gradcamo.exporter.layers.list_layers`).

    An ONNX file's candidates are its graph's tensors, listed by tensor name, read in the
    layout export would give them (the graph's axes, else the shape).
    """
    input_shape = check_input_shape(input_shape)
    if _is_onnx(spec, weights, factory_kwargs):
        graph = convert_onnx_classifier(spec, input_shape, input_layout=input_layout or "nchw")
        return list_layers(graph, input_shape, names={module: t[0] for module, t in graph.graph_tensors.items()})
    _refuse_input_layout(input_layout)
    model = load_model(spec, factory_kwargs, trust_pickle=trust_pickle)
    if weights:
        load_weights(model, weights, trust_pickle=trust_pickle)
    return list_layers(model, input_shape)


def _is_onnx(spec, weights, factory_kwargs):
    """Whether MODEL is an ONNX file; refuses the options that do not apply to one."""
    if pathlib.Path(spec).suffix != ".onnx":
        return False
    for option, value in (("--weights", weights), ("--factory-kwargs", factory_kwargs)):
        if value:
            raise InputError(f"{option}: an ONNX MODEL holds its weights and takes no {option}")
    return True


def _refuse_input_layout(input_layout):
    if input_layout not in (None, "nchw"):
        raise InputError("--input-layout: applies to ONNX models only (a torch model takes channels-first crops)")
