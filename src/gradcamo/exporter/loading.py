"""Load a model from a ``module:factory`` or ``file.py:factory`` spec and its weights."""

import hashlib
import importlib
import importlib.util
import pathlib
import pickle
import sys

import torch
from torch import nn

from gradcamo.errors import InputError


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


def load_model(spec, factory_kwargs=None) -> nn.Module:
    """Call the factory named by ``spec`` (``package.module:name`` or ``path/file.py:name``).

    Returns
    -------
    model : torch.nn.Module

    Raises
    ------
    InputError
        When the spec is malformed, cannot be imported, or does not produce a module.
    """
    if spec.endswith(".pt2"):
        raise InputError(
            f"MODEL: {spec!r}: torch.export .pt2 files are not supported yet; give the "
            "factory that builds the model ('module:factory' or 'file.py:factory') and --weights"
        )
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise InputError(
            f"MODEL: expected 'package.module:factory' or 'path/to/file.py:factory', got {spec!r}"
        )
    module = _import_source(source, spec)
    factory = getattr(module, name, None)
    if not callable(factory):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InputError(
            f"MODEL: {source!r} has no callable {name!r}; callables there: {', '.join(available[:12]) or 'none'}"
        )
    try:
        model = factory(**(factory_kwargs or {}))
    except Exception as error:  # user code may raise anything
        raise InputError(f"MODEL: factory {spec!r} raised {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise InputError(f"MODEL: factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _unwrap_checkpoint(state, path):
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--weights: {str(path)!r} does not hold a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _describe_mismatch(model, state):
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", resized)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    return "; ".join(parts)


def load_weights(model, path) -> nn.Module:
    """Load a weights-only state_dict file into ``model`` (strict).

    Raises
    ------
    InputError
        When the file is missing, is not a weights-only state_dict, or does not fit.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"--weights: file {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InputError(
            f"--weights: {str(path)!r} is not a weights-only torch file ({type(error).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from error
    state = _unwrap_checkpoint(state, path)
    mismatch = _describe_mismatch(model, state)
    if mismatch:
        raise InputError(f"--weights: {str(path)!r} does not fit the model: {mismatch}")
    model.load_state_dict(state, strict=True)
    return model


def hash_weights(model) -> str:
    """sha256 over the model's state_dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
