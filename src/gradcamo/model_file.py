"""Read and check a gradcamo ONNX model file without torch or onnxruntime."""

import dataclasses
import hashlib
import json
import pathlib

import onnx
from google.protobuf.message import DecodeError

from gradcamo import contract
from gradcamo.errors import ContractError, InputError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a gradcamo model file declares."""

    path: pathlib.Path
    sha256: str
    format_version: int
    target_layer: str
    spatial_dims: int
    input_shape: tuple
    class_names: tuple
    preprocessing: dict
    validation: dict
    metadata: dict
    opset: int
    inputs: dict
    outputs: dict
    channel_names: tuple = ()
    """The names of the input channels the model was trained on (empty when it records none)."""


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor_signature(value_info):
    tensor_type = value_info.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
    return {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name, "shape": dims}


def static_spatial_shape(dims, spatial_dims, name) -> tuple[int, ...]:
    """The spatial extents of a ``[N, C, *spatial]`` tensor whose declared ``dims`` are ints or axis names.

    Raises
    ------
    ContractError
        ``dims`` has not ``spatial_dims`` spatial axes, or one of them is dynamic (a name or unknown).
    """
    spatial = list(dims[2:])
    if len(spatial) != spatial_dims or not all(isinstance(d, int) and d > 0 for d in spatial):
        raise ContractError(
            f"{name}: the graph declares no static {spatial_dims}-D spatial shape (got {[d or '?' for d in spatial]}); "
            "the scorer's head is built for one layer shape: export the model again with gradcamo export"
        )
    return tuple(spatial)


def _check_spatial_dims(path, metadata, input_shape, inputs, outputs):
    """``gradcamo.spatial_dims`` as an int that the image input's rank, the crop shape and the
    activations' static spatial shape agree with."""
    declared = metadata[contract.META_SPATIAL_DIMS]
    if declared not in ("2", "3"):
        raise ContractError(f"{path}: metadata {contract.META_SPATIAL_DIMS} is {declared!r}; expected 2 or 3")
    spatial_dims = int(declared)
    rank = len(inputs[contract.IMAGE]["shape"])
    if rank != spatial_dims + 2:
        raise ContractError(
            f"{path}: metadata {contract.META_SPATIAL_DIMS} is {spatial_dims} but the graph's {contract.IMAGE} input "
            f"has rank {rank} ({rank - 2} spatial dims); export the model again with gradcamo export"
        )
    if len(input_shape) != spatial_dims + 1:
        raise ContractError(
            f"{path}: metadata {contract.META_SPATIAL_DIMS} is {spatial_dims} but {contract.META_INPUT_SHAPE} "
            f"{list(input_shape)} has {len(input_shape) - 1} spatial dims; export the model again with gradcamo export"
        )
    static_spatial_shape(outputs[contract.ACTIVATIONS]["shape"], spatial_dims, f"{path}: {contract.ACTIVATIONS}")
    return spatial_dims


def _json_field(metadata, key, path):
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as error:
        raise ContractError(f"{path}: metadata {key!r} is missing or not JSON") from error


def read_model_info(path) -> ModelInfo:
    """Load a model file's contract: I/O signature and gradcamo metadata.

    Raises
    ------
    InputError
        The file does not exist.
    ContractError
        The file is not ONNX, lacks the gradcamo contract, or has a newer format version; its
        ``gradcamo.spatial_dims`` contradicts its image input's rank or its crop shape; its
        activations have no static spatial shape (the scorer's head needs one).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise InputError(f"model file {str(path)!r} is a directory; expected an .onnx file from `gradcamo export`")
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError, RuntimeError) as error:
        raise ContractError(f"{path}: not an ONNX model ({type(error).__name__})") from error
    if not model.graph.node:
        raise ContractError(f"{path}: not an ONNX model (empty graph)")
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    missing = [key for key in contract.REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ContractError(
            f"{path}: not a gradcamo model (metadata lacks {', '.join(missing)}); "
            "export it with `gradcamo export`"
        )
    version = metadata[contract.META_FORMAT_VERSION]
    if not version.isdigit() or int(version) > contract.FORMAT_VERSION:
        raise ContractError(
            f"{path}: gradcamo format version {version!r} is newer than this gradcamo reads "
            f"({contract.FORMAT_VERSION}); upgrade gradcamo"
        )
    inputs = {i.name: _tensor_signature(i) for i in model.graph.input}
    outputs = {o.name: _tensor_signature(o) for o in model.graph.output}
    absent = [n for n in contract.INPUT_NAMES if n not in inputs] + [
        n for n in contract.OUTPUT_NAMES if n not in outputs
    ]
    if absent:
        raise ContractError(f"{path}: graph lacks the gradcamo inputs/outputs {', '.join(absent)}")
    custom_domains = sorted({op.domain for op in model.opset_import if op.domain not in ("", "ai.onnx")})
    if custom_domains:
        raise ContractError(f"{path}: uses custom operator domains {', '.join(custom_domains)}")
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)
    input_shape = tuple(_json_field(metadata, contract.META_INPUT_SHAPE, path))
    spatial_dims = _check_spatial_dims(path, metadata, input_shape, inputs, outputs)
    return ModelInfo(
        path=path,
        sha256=file_sha256(path),
        format_version=int(version),
        target_layer=metadata[contract.META_TARGET_LAYER],
        spatial_dims=spatial_dims,
        input_shape=input_shape,
        class_names=tuple(_json_field(metadata, contract.META_CLASS_NAMES, path)),
        preprocessing=json.loads(metadata.get(contract.META_PREPROCESSING, "null")) or {},
        validation=json.loads(metadata.get(contract.META_VALIDATION, "null")) or {},
        metadata=metadata,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        channel_names=tuple(_json_field(metadata, contract.META_CHANNEL_NAMES, path))
        if contract.META_CHANNEL_NAMES in metadata else (),
    )
