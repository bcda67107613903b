"""What ``gradcamo export`` exports: the model as given (torch or ONNX), its weights and references."""

import dataclasses
import pathlib

from torch import nn

from gradcamo.errors import InputError
from gradcamo.exporter.export import check_input_shape
from gradcamo.exporter.loading import load_model, load_weights
from gradcamo.exporter.onnx_in import load_onnx_classifier
from gradcamo.exporter.references import CosineSimilarityHead, read_references, reference_names
from gradcamo.exporter.wrap import resolve_layer


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """A model ready for :func:`gradcamo.export_model`."""

    model: nn.Module
    layer_name: str  # the sub-module of ``model`` to hook
    target_label: str  # the target layer as the user named it, recorded in the metadata
    class_names: list  # or None: the export's default
    layout: str | None = None  # the target's layout where loading decided it (an ONNX tensor: "nchw"), else None


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
    is_onnx = pathlib.Path(spec).suffix == ".onnx"
    if is_onnx:
        for option, value in (("--weights", weights), ("--factory-kwargs", factory_kwargs)):
            if value:
                raise InputError(f"{option}: an ONNX MODEL holds its weights and takes no {option}")
        model, layer_name = load_onnx_classifier(spec, target_layer, input_shape, input_layout=input_layout or "nchw")
    else:
        if input_layout not in (None, "nchw"):
            raise InputError("--input-layout: applies to ONNX models only (a torch model takes channels-first crops)")
        model, layer_name = load_model(spec, factory_kwargs, trust_pickle=trust_pickle), target_layer
        if weights:
            load_weights(model, weights, trust_pickle=trust_pickle)
    layout = "nchw" if is_onnx else None  # load_onnx_classifier refuses any other ONNX tensor layout
    if references is None:
        return ExportSource(model, layer_name, target_layer, None, layout)
    resolve_layer(model, layer_name)  # a wrong layer is named as the user gave it, not under the head
    vectors, names = read_references(references)
    return ExportSource(
        CosineSimilarityHead(model, vectors), f"model.{layer_name}", target_layer,
        reference_names(names, len(vectors)), layout,
    )
