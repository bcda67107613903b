"""Read a weights file as saved and fit its state dict to a model.

Accepted: a plain state dict; ``{"state_dict": ...}``, ``{"model": ...}`` and
``{"model_state_dict": ...}`` wrappers (PyTorch Lightning ``.ckpt`` files are the
first); keys under an attribute prefix (Lightning's ``model.``, DDP's ``module.``,
both), the prefix found by matching the keys against the model; safetensors files.
Pickles are read with ``torch.load(weights_only=True)``; the Python objects a checkpoint
holds beside its state dict (hyper-parameters, training state) are read as inert stand-ins,
so no code from the file runs. A full unpickle, which runs code from the file, only with
``trust_pickle=True``.
"""

import logging
import pathlib
import pickle
import re
import zipfile

import torch
from torch import nn

from gradcamo.errors import InputError, describe, first_line

LOGGER = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PICKLE_WARNING = "--trust-pickle: unpickling {path!r} executes code from the file; use it only for files you trust"
SHOWN_KEYS = 3
MAX_STAND_INS = 64
STAND_IN_MODULE = "gradcamo.stand_in"


TORCHSCRIPT_ADVICE = {
    "MODEL": "its compiled layers take no forward hooks, so the target layer cannot be captured; give the "
             "model's factory with --weights, or save the model with torch.export (.pt2)",
    "--weights": "save its weights with torch.save(torch.jit.load(path).state_dict(), 'weights.pt')",
}


def refuse_torchscript(path, option) -> None:
    """Refuse a TorchScript archive (``torch.jit.save``: compiled code) given as ``option``, saying what to give instead."""
    try:
        with zipfile.ZipFile(path) as archive:
            compiled = any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        compiled = False
    if compiled:
        raise InputError(f"{option}: {str(path)!r} is TorchScript: {TORCHSCRIPT_ADVICE[option]}")


def _stand_in(qualified_name):
    """An inert class standing for ``qualified_name``: called or restored with anything, it keeps nothing and runs nothing."""
    return type(qualified_name.rpartition(".")[2], (), {
        "__module__": STAND_IN_MODULE, "__qualname__": qualified_name,
        "__init__": lambda self, *args, **kwargs: None, "__setstate__": lambda self, state: None,
    })


def pickle_refusal(path, option, name) -> InputError:
    """The error for a pickle holding the Python object ``name`` beyond tensors and containers."""
    return InputError(
        f"{option}: {str(path)!r} holds Python objects beyond tensors ({name}); unpickling it "
        "runs code from the file: pass --trust-pickle if you trust the file"
    )


def load_pickle(path, *, trust_pickle, option, stand_ins=None):
    """``torch.load`` a file: weights only, or a full unpickle when ``trust_pickle`` (with a warning).

    With ``stand_ins`` (a list), the Python objects beside the tensors and containers that the
    weights-only unpickler refuses (a checkpoint's hyper-parameters, ``argparse.Namespace``,
    numpy arrays) are read as inert stand-ins, and their names appended to the list: no code
    from the file runs, and the tensors are read as saved.
    """
    if trust_pickle:
        LOGGER.warning(PICKLE_WARNING.format(path=str(path)))
    substitutes = []
    while True:
        try:
            with torch.serialization.safe_globals(substitutes):
                return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as error:
            refused = re.search(r"GLOBAL ([\w.]+) (was not an allowed global|whose module \w+ is blocked)", str(error))
            if refused and not trust_pickle:
                name = refused.group(1)
                if stand_ins is None or len(substitutes) >= MAX_STAND_INS or "blocked" in refused.group(2):
                    raise pickle_refusal(path, option, name) from error
                substitutes.append((_stand_in(name), name))
                stand_ins.append(name)
                continue
            # a dict or list subclass (items are set on it): it stands in as a plain dict or list
            container = re.search(rf"Can only (SETITEMS?|append to lists).* but got <class '{STAND_IN_MODULE}\.([\w.]+)'>",
                                  str(error))
            if container and stand_ins is not None:
                base = list if container.group(1).startswith("append") else dict
                substitutes = [(base if n == container.group(2) else s, n) for s, n in substitutes]
                continue
            cause = f"UnpicklingError: {first_line(error)}" if trust_pickle else "UnpicklingError"
            raise InputError(f"{option}: {str(path)!r} is not a weights-only torch file ({cause})") from error
        except (RuntimeError, EOFError, ValueError, AttributeError, ImportError) as error:
            raise InputError(f"{option}: {str(path)!r} is not a torch file torch.load reads ({describe(error)})") from error


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"--weights: {str(path)!r} is not a safetensors file ({describe(error)})") from error


def read_state_dict(path, *, trust_pickle=False):
    """The ``{name: tensor}`` state dict a weights file holds, unwrapped from checkpoint dicts.

    Raises
    ------
    InputError
        The file is missing, unreadable, a pickle beyond tensors (without ``trust_pickle``),
        or holds no state dict.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"--weights: file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    refuse_torchscript(path, "--weights")
    stand_ins = []
    state = load_pickle(path, trust_pickle=trust_pickle, option="--weights", stand_ins=stand_ins)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    while isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), (dict, nn.Module))), None)
        if inner is None:
            break
        state = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        if stand_ins:
            raise pickle_refusal(path, "--weights", stand_ins[0])
        found = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        raise InputError(
            f"--weights: {str(path)!r} holds no state dict of tensors (found {found}); expected a state dict "
            f"or a checkpoint with one under {' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    if stand_ins:
        LOGGER.info("weights: %d Python objects beside the state dict not unpickled (%s)", len(stand_ins),
                    _shown(stand_ins))
    return dict(state)


def _all_tensors(state):
    return all(isinstance(v, torch.Tensor) for v in state.values())


def _candidate_prefixes(keys, expected):
    """Prefixes ``p`` such that some key is ``p + name`` for a name the model expects."""
    prefixes = {""}
    for key in keys:
        for index, char in enumerate(key):
            if char == "." and key[index + 1:] in expected:
                prefixes.add(key[: index + 1])
    return prefixes


def _under(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _shown(keys):
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


def _mismatch(expected, state):
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(keys)} {label}: {_shown(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", resized))
        if keys
    ]
    return "; ".join(parts)


def fit_state_dict(model, state, path) -> dict:
    """The part of ``state`` that is exactly ``model``'s state dict, found by its key prefix.

    The prefix is the one under which the keys are exactly the model's (Lightning's
    ``model.``, DDP's ``module.``, nested ones such as ``module.model.``); keys outside
    it (a LightningModule's other attributes) are ignored and logged.

    Raises
    ------
    InputError
        No prefix fits (the missing and unexpected keys of the closest one are listed),
        or several do.
    """
    expected = model.state_dict()
    names = set(expected)
    candidates = {p: _under(state, p) for p in _candidate_prefixes(state, names)}
    fitting = [
        p for p, sub in candidates.items()
        if set(sub) == names and all(sub[k].shape == expected[k].shape for k in names)
    ]
    if len(fitting) > 1:
        raise InputError(
            f"--weights: {str(path)!r} holds the model's weights under several prefixes "
            f"({', '.join(repr(p) for p in sorted(fitting))}); save the one you mean as a plain state dict"
        )
    if not fitting:
        closest = max(sorted(candidates), key=lambda p: (len(set(candidates[p]) & names), p == ""))
        where = f" (under prefix {closest!r})" if closest else ""
        raise InputError(
            f"--weights: {str(path)!r} does not fit the model{where}: {_mismatch(expected, candidates[closest])}"
        )
    (prefix,) = fitting
    ignored = len(state) - len(candidates[prefix])
    if prefix:
        LOGGER.info("weights: keys under prefix %r%s", prefix, f" ({ignored} other keys ignored)" if ignored else "")
    return candidates[prefix]
