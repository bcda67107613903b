"""Move codes along a direction, decode them and measure the decoded cells (and classify them, with a model).

A trajectory is one cell's code ``z`` shifted to ``z + k * step`` for every step ``k`` (in
standard deviations of the direction, :mod:`gradcamo.exaggerate.direction`), each decoded by
``decoder.onnx`` into an image in raw intensities.
"""

import numpy as np

from gradcamo import contract
from gradcamo.cam import score_ratio, softmax
from gradcamo.errors import InputError
from gradcamo.model_file import ModelInfo, read_model_info
from gradcamo.scorer.head import CAM_INSIDE, CAM_TOTAL, MASK
from gradcamo.scorer.session import run_in_batches
from gradcamo.visual.recompute import cam_session

DEFAULT_STEPS = "-4:4:1"
CONVENTION = "raw"
METHOD = "gradcam"


def parse_steps(text) -> np.ndarray:
    """The steps of ``START:STOP:STEP`` (STOP included), in standard deviations.

    Raises
    ------
    InputError
        Not three numbers, STEP <= 0, STOP < START, more than 101 steps, or 0 not among them
        (step 0, the cell's own code, is what the differences are taken against).

    Examples
    --------
    >>> parse_steps("-1:1:0.5").tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    try:
        start, stop, step = (float(part) for part in str(text).split(":"))
    except ValueError:
        raise InputError(f"steps: expected START:STOP:STEP such as -4:4:1, got {text!r}", argument="steps") from None
    if not step > 0 or stop < start:
        raise InputError(f"steps: expected STEP > 0 and STOP >= START, got {text!r}", argument="steps")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    if count > 101:
        raise InputError(f"steps: {text!r} gives {count} steps; at most 101", argument="steps")
    steps = start + step * np.arange(count)
    steps[np.isclose(steps, 0.0, atol=1e-9 * step)] = 0.0
    if not (steps == 0).any():
        raise InputError(f"steps: {text!r} does not include 0 (the cell's own code)", argument="steps")
    return steps


def choose_cells(is_high, cells, seed) -> tuple[np.ndarray, np.ndarray]:
    """Indices of up to ``cells`` cells of each group, drawn without replacement (high first, each in order).

    Returns
    -------
    indices : (M,) int64 ndarray
    groups : (M,) str ndarray
        ``high`` or ``low``.
    """
    generator = np.random.default_rng(seed)
    chosen, groups = [], []
    for name, members in (("high", np.flatnonzero(is_high)), ("low", np.flatnonzero(~is_high))):
        picked = np.sort(generator.choice(members, size=min(cells, len(members)), replace=False))
        chosen.append(picked)
        groups += [name] * len(picked)
    return np.concatenate(chosen).astype(np.int64), np.asarray(groups)


def shift_codes(codes, step, steps) -> np.ndarray:
    """(N, S, L) float32: ``codes[n] + steps[s] * step`` (``step`` (L,), or (N, L): one per cell)."""
    step = np.broadcast_to(np.asarray(step, dtype=np.float64), np.shape(codes))
    shifted = np.asarray(codes, dtype=np.float64)[:, None, :] + np.asarray(steps)[None, :, None] * step[:, None, :]
    return shifted.astype(np.float32)


def decode(session, codes, *, batch_size=64, advance=None) -> np.ndarray:
    """Decode (M, L) codes with a ``decoder.onnx`` session into (M, C, [D,] H, W) float32 images."""
    feed = {contract.LATENT_CODE: codes}
    (images,) = run_in_batches(session, [contract.IMAGE], feed, batch_size, advance)
    return images


def differences(decoded, steps) -> tuple[np.ndarray, np.ndarray]:
    """Each step minus step 0, and its mean over cells.

    Parameters
    ----------
    decoded : (cells, S, C, [D,] H, W) float32 ndarray
    steps : (S,) float ndarray
        Holds 0.

    Returns
    -------
    difference : same shape as ``decoded``
    mean_difference : (S, C, [D,] H, W) float32 ndarray
    """
    zero = int(np.flatnonzero(np.asarray(steps) == 0)[0])
    difference = decoded - decoded[:, zero:zero + 1]
    return difference, difference.mean(axis=0)


def open_classifier(model, input_shape) -> ModelInfo:
    """The :class:`~gradcamo.model_file.ModelInfo` of a gradcamo model for crops of ``input_shape``.

    Raises
    ------
    InputError
        Not a gradcamo model, or its crop shape differs from the autoencoder's.
    """
    info = read_model_info(model)
    if tuple(info.input_shape) != tuple(input_shape):
        raise InputError(
            f"model {model}: its crop shape {','.join(map(str, info.input_shape))} differs from the autoencoder's "
            f"{','.join(map(str, input_shape))}; use a classifier of the same crop shape", argument="model")
    return info


def classify(info, images, masks, *, batch_size=64) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Grad-CAMO (of the predicted class, foreground as the mask) of decoded images.

    The scorer's own graph and head compute both (:func:`gradcamo.visual.recompute.cam_session`,
    ``raw`` convention, Grad-CAM), as ``score`` would for a cell with this crop and mask.

    Parameters
    ----------
    info : ModelInfo
    images : (M, C, [D,] H, W) float32 ndarray
    masks : (M, H, W) bool ndarray
        Foregrounds; in 3D the same mask is used on every z plane.

    Returns
    -------
    probabilities : (M, K) float64 ndarray
        Softmax of the logits.
    grad_camo : (M,) float64 ndarray
        NaN where the CAM is empty.
    """
    spatial = tuple(info.input_shape[1:])
    session = cam_session(info.path, info.sha256, spatial, CONVENTION, METHOD)
    masks = np.broadcast_to(masks[:, None], (len(masks), *spatial)) if len(spatial) == 3 else masks
    feed = {contract.IMAGE: images, contract.TARGET: np.full(len(images), -1, np.int64), MASK: masks}
    logits, inside, total = run_in_batches(session, [contract.LOGITS, CAM_INSIDE, CAM_TOTAL], feed, batch_size)
    grad_camo, _ = score_ratio(inside, total)
    return softmax(logits), grad_camo
