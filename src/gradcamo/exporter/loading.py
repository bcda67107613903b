"""Load a model (factory, ``timm:NAME``, saved model file) and its weights."""

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import pathlib
import sys
import zipfile

import torch
from torch import nn

from gradcamo.errors import InputError, describe
from gradcamo.exporter.checkpoints import fit_state_dict, load_pickle, read_state_dict, refuse_torchscript


@contextlib.contextmanager
def _folder_on_path(folder):
    """``folder`` first on ``sys.path`` while the block runs, so a model file's sibling imports work."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _import_source(source, spec):
    if source.endswith(".py"):
        path = pathlib.Path(source)
        if not path.is_file():
            raise InputError(f"MODEL: file {source!r} not found (from {spec!r})")
        module_name = f"_gradcamo_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # user code may raise anything
            del sys.modules[module_name]
            raise InputError(f"MODEL: importing {source!r} failed: {type(error).__name__}: {error}") from error
        return module
    try:
        return importlib.import_module(source)
    except ImportError as error:
        raise InputError(f"MODEL: cannot import module {source!r}: {error}") from error


def _create_timm_model(name, factory_kwargs):
    try:
        import timm
    except ImportError:
        raise InputError("MODEL: 'timm:' models need timm (pip install timm)") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise InputError(f"MODEL: timm has no model {name!r}" + (f"; close names: {', '.join(close)}" if close else ""))
    try:
        return timm.create_model(name, pretrained=False, **(factory_kwargs or {}))
    except Exception as error:  # timm raises anything on bad kwargs
        raise InputError(f"MODEL: timm.create_model({name!r}) raised {describe(error)}") from error


def _load_exported_program(path):
    """A torch.export ``.pt2`` file as a module with its original sub-modules (unflattened, so hooks run)."""
    if not zipfile.is_zipfile(path):
        raise InputError(f"MODEL: {str(path)!r} is not a torch.export .pt2 file (not a zip archive)")
    exporter_logger = logging.getLogger("torch.export")
    level = exporter_logger.level
    exporter_logger.setLevel(logging.ERROR)  # it logs a traceback before raising on a file it cannot read
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch.export raises many types on files it cannot read
        raise InputError(f"MODEL: {str(path)!r} is not a torch.export .pt2 file it can load: {describe(error)}") from error
    finally:
        exporter_logger.setLevel(level)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    shapes = [getattr(n.meta.get("val"), "shape", None) for n in inputs]
    if len(inputs) != 1 or not shapes[0]:
        raise InputError(f"MODEL: {str(path)!r} takes {len(inputs)} inputs; a classifier takes one image batch")
    if isinstance(shapes[0][0], int):
        raise InputError(
            f"MODEL: {str(path)!r} was exported for a fixed batch of {shapes[0][0]}; export it with a dynamic "
            "batch: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))"
        )
    module = torch.export.unflatten(program)
    for graph in {getattr(m, "graph", None) for m in module.modules()} - {None}:
        for node in graph.nodes:
            node.meta.clear()  # its fake tensors with symbolic shapes cannot be deep-copied; running needs none
    return module


def _load_model_file(path, *, trust_pickle):
    """A whole model saved to a file: torch.export ``.pt2``, or a pickled ``nn.Module`` (with ``trust_pickle``)."""
    if path.suffix == ".pt2":
        return _load_exported_program(path)
    refuse_torchscript(path, "MODEL")
    model = load_pickle(path, trust_pickle=trust_pickle, option="MODEL")
    if not isinstance(model, nn.Module):
        raise InputError(
            f"MODEL: {str(path)!r} holds a {type(model).__name__}, not a pickled nn.Module; a state dict "
            "goes to --weights with the model's factory as MODEL"
        )
    return model


def load_model(spec, factory_kwargs=None, *, trust_pickle=False) -> nn.Module:
    """The model named by ``spec``, with random or saved-in-file weights.

    ``spec`` is ``package.module:factory``, ``path/to/file.py:factory`` (the file's folder is
    importable while it loads, so sibling imports work), ``timm:NAME`` (``pretrained=False``;
    ``factory_kwargs`` go to ``timm.create_model``), a torch.export ``.pt2`` file, or a pickled
    ``nn.Module`` (only with ``trust_pickle``: unpickling runs code from the file).

    Returns
    -------
    model : torch.nn.Module

    Raises
    ------
    InputError
        When the spec is malformed, cannot be imported or loaded, or does not produce a module.
    """
    path = pathlib.Path(spec)
    if path.suffix == ".onnx":
        raise InputError(f"MODEL: {spec!r}: an ONNX classifier is taken by `gradcamo export` (see docs/models.md)")
    if path.suffix == ".pt2" or (path.suffix != ".py" and path.is_file()):
        if not path.is_file():
            raise InputError(f"MODEL: file {spec!r} not found")
        if factory_kwargs:
            raise InputError(f"MODEL: --factory-kwargs apply to factories, not to the saved model {spec!r}")
        return _load_model_file(path, trust_pickle=trust_pickle)
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise InputError(
            "MODEL: expected 'package.module:factory', 'path/to/file.py:factory', 'timm:NAME' or a model "
            f"file (.pt2, .onnx, a pickled module), got {spec!r}"
        )
    if source == "timm":
        model = _create_timm_model(name, factory_kwargs)
    else:
        folder = pathlib.Path(source).resolve().parent if source.endswith(".py") else None
        with _folder_on_path(folder) if folder else contextlib.nullcontext():
            model = _call_factory(_import_source(source, spec), source, name, spec, factory_kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(f"MODEL: factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_factory(module, source, name, spec, factory_kwargs):
    factory = getattr(module, name, None)
    if not callable(factory):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InputError(
            f"MODEL: {source!r} has no callable {name!r}; callables there: {', '.join(available[:12]) or 'none'}"
        )
    try:
        return factory(**(factory_kwargs or {}))
    except Exception as error:  # user code may raise anything
        raise InputError(f"MODEL: factory {spec!r} raised {type(error).__name__}: {error}") from error


def load_weights(model, path, *, trust_pickle=False) -> nn.Module:
    """Load a weights file into ``model`` (strict), as saved: see :mod:`gradcamo.exporter.checkpoints`.

    Raises
    ------
    InputError
        When the file is missing, unreadable, a pickle beyond tensors (without
        ``trust_pickle``), or its keys or shapes do not fit the model.
    """
    state = read_state_dict(path, trust_pickle=trust_pickle)
    model.load_state_dict(fit_state_dict(model, state, path), strict=True)
    return model


def hash_weights(model) -> str:
    """sha256 over the model's state_dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
