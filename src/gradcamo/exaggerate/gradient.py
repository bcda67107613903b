"""``--direction gradient:FILE``: Latent Shift (Cohen et al. 2021), one direction per cell, without torch.

FILE is a graph from ``gradcamo export-latent-shift``: ``z`` and ``target`` in, the classifier's
logits of the decoded code and ``d logit[target] / d z`` out. Each drawn cell moves along the
gradient at its own code (held fixed along the trajectory, as in Latent Shift), scaled like the
LDA direction: one step is one standard deviation of all the cells' codes projected on the
cell's direction (in z-scored units).
"""

import json

import numpy as np
import onnx

from gradcamo import contract
from gradcamo.cam import softmax
from gradcamo.errors import InputError
from gradcamo.exaggerate.direction import Direction, auroc, zscore_parameters
from gradcamo.model_file import file_sha256
from gradcamo.scorer.session import create_session, run_in_batches

BATCH_SIZE = 64


def read_latent_shift(path, latent_size, input_shape) -> dict:
    """The description of a Latent Shift graph for codes of ``latent_size`` and crops of ``input_shape``.

    Raises
    ------
    InputError
        No such file, not a Latent Shift graph, or made for another latent size or crop shape.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InputError(f"direction: {path}: no such file; export one with `gradcamo export-latent-shift`",
                         argument="direction") from None
    except Exception as error:  # protobuf's and onnx's decode errors share no useful base
        raise InputError(f"direction: {path}: not an ONNX file ({type(error).__name__})", argument="direction") from None
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    description = json.loads(metadata.get(contract.META_LATENT_SHIFT, "null")) or {}
    if description.get("format") != contract.LATENT_SHIFT_FORMAT:
        raise InputError(f"direction: {path}: not a Latent Shift graph; export one with `gradcamo export-latent-shift`",
                         argument="direction")
    if description["latent_size"] != latent_size or tuple(description["input_shape"]) != tuple(input_shape):
        raise InputError(
            f"direction: {path} is made for codes of {description['latent_size']} features and crops "
            f"{','.join(map(str, description['input_shape']))}; the autoencoder has {latent_size} and "
            f"{','.join(map(str, input_shape))}", argument="direction")
    return description


def latent_gradients(session, codes, target) -> tuple[np.ndarray, np.ndarray]:
    """Logits (M, K) and d logit[target] / d z (M, L) of each code, float64."""
    feed = {contract.LATENT_CODE: codes, contract.TARGET: np.full(len(codes), target, dtype=np.int64)}
    logits, gradients = run_in_batches(session, [contract.LOGITS, contract.LATENT_GRADIENT], feed, BATCH_SIZE)
    return logits.astype(np.float64), gradients.astype(np.float64)


def gradient_direction(path, description, codes, is_high, chosen, *, device="auto") -> Direction:
    """Per-cell Latent Shift steps for the ``chosen`` cells.

    Parameters
    ----------
    path : path-like
        The Latent Shift graph (checked by :func:`read_latent_shift`).
    description : dict
        Its description.
    codes : (N, L) float ndarray
        Codes of all cells of both groups.
    is_high : (N,) bool ndarray
    chosen : (M,) int ndarray
        The drawn cells.
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    Direction
        ``step`` is (M, L).

    Notes
    -----
    The target class is the one whose mean probability (on the drawn cells' own decoded codes)
    is highest in the high group relative to the low group. With ``g`` a cell's gradient of that
    logit, ``u = std * g / |std * g|`` (z-scored units) and ``s`` the standard deviation over all
    cells of ``u . (z - mean) / std``, the cell's step is ``std * u * s``.
    """
    session = create_session(str(path), device=device)
    chosen_codes = np.asarray(codes, dtype=np.float64)[chosen]
    logits, _ = latent_gradients(session, chosen_codes, contract.PREDICTED_CLASS)
    probabilities = softmax(logits)
    high = np.asarray(is_high)[chosen]
    gap = probabilities[high].mean(axis=0) - probabilities[~high].mean(axis=0)
    target = int(np.argmax(gap))
    _, gradients = latent_gradients(session, chosen_codes, target)
    mean, std = zscore_parameters(codes)
    scaled = gradients * std
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    units = np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0)
    spread = (((np.asarray(codes, dtype=np.float64) - mean) / std) @ units.T).std(axis=0)
    summary = {
        "method": "gradient", "graph": str(path), "graph_sha256": file_sha256(path),
        "target_class": description["class_names"][target],
        "auroc": auroc(probabilities[:, target], high) if high.any() and (~high).any() else None,
        "auroc_note": f"of the graph's probability of {description['class_names'][target]} on the drawn cells' "
                      "own decoded codes (nothing is fitted)",
        "folds": None,
        "coherence": float(np.linalg.norm(units.mean(axis=0))),
        "zero_gradients": int((norms[:, 0] == 0).sum()),
    }
    return Direction(std * units * spread[:, None], summary)
