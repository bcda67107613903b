"""``gradcamo exaggerate``: a direction between two groups of latent codes, trajectories along it, decoded and measured.

Layout of the output directory (written in a hidden staging directory, renamed at the end,
so a failed or killed run leaves no OUT)::

    direction.json          the direction (latent units per step), its AUROC and fold scheme, the options
    trajectories.parquet    one row per cell and step: keys, cell_index, step_index, step, group, properties
                            (and with a model: prob_<class>, predicted_class, grad_camo)
    images.zarr/            decoded (cells, steps, C, [D,] H, W) float32, difference (minus step 0),
                            mean_difference (steps, C, [D,] H, W), foreground (cells, steps, H, W) bool,
                            step_latent (cells, L) float64 (each cell's shift per step)
    report.html             the report (:mod:`gradcamo.exaggerate.report`)
"""

import dataclasses
import json
import logging
import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

import gradcamo
from gradcamo.errors import InputError
from gradcamo.exaggerate.autoencoder import open_decoder, read_autoencoder
from gradcamo.exaggerate.direction import feature_direction, lda_direction, parse_direction
from gradcamo.exaggerate.gradient import gradient_direction, read_latent_shift
from gradcamo.exaggerate.groups import KEY_TYPES, check_latents, read_groups
from gradcamo.exaggerate.properties import measure, property_names
from gradcamo.exaggerate.report import write_exaggerate_report
from gradcamo.exaggerate.trajectories import (
    DEFAULT_STEPS, choose_cells, classify, decode, differences, open_classifier, parse_steps, shift_codes,
)
from gradcamo.exaggerate.trends import monotonic_shares
from gradcamo.files import staged_directory
from gradcamo.progress import cell_progress
from gradcamo.options import check_whole_number

LOGGER = logging.getLogger(__name__)
DIRECTION_FILE = "direction.json"
TRAJECTORIES_FILE = "trajectories.parquet"
IMAGES = "images.zarr"
REPORT_FILE = "report.html"
OUTPUTS = (DIRECTION_FILE, TRAJECTORIES_FILE, IMAGES, REPORT_FILE)


@dataclasses.dataclass(frozen=True)
class ExaggerateSummary:
    """What :func:`exaggerate` wrote: ``shares`` are the rows of the monotonic table (:func:`monotonic_shares`)."""

    output: pathlib.Path
    cells: int
    steps: int
    direction: dict
    shares: list
    seconds: float


def _check_output(output, overwrite):
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output}: exists and is not a directory", argument="output")
    if output.is_dir() and any(output.iterdir()):
        if not (output / DIRECTION_FILE).exists():
            raise InputError(f"output {output}: holds files `gradcamo exaggerate` did not write; choose a new or empty "
                             "directory", argument="output")
        if not overwrite:
            raise InputError(f"output {output}: holds an earlier exaggeration; pass --overwrite to replace it",
                             argument="output")


def _check_cells(cells):
    check_whole_number(cells, "cells")


def _trajectory_table(groups, chosen, group_names, steps, values, classes, probabilities, grad_camo):
    """One row per (cell, step), cell-major."""
    n_steps = len(steps)
    repeat = np.repeat(chosen, n_steps)
    columns = {key: pa.array([groups.keys[key][i] for i in repeat], kind) for key, kind in KEY_TYPES.items()}
    columns["cell_index"] = pa.array(np.repeat(np.arange(len(chosen), dtype=np.int32), n_steps))
    columns["step_index"] = pa.array(np.tile(np.arange(n_steps, dtype=np.int32), len(chosen)))
    columns["step"] = pa.array(np.tile(steps, len(chosen)))
    columns["group"] = pa.array(np.repeat(group_names, n_steps).tolist(), pa.string())
    columns.update({name: pa.array(value) for name, value in values.items()})
    if probabilities is not None:
        columns.update({f"prob_{name}": pa.array(probabilities[:, k]) for k, name in enumerate(classes)})
        columns["predicted_class"] = pa.array(probabilities.argmax(axis=1).astype(np.int32))
        columns["grad_camo"] = pa.array(grad_camo)
    return pa.table(columns, metadata={"gradcamo-version": gradcamo.__version__})


def _write_images(directory, arrays, steps):
    group = zarr.open_group(str(directory / IMAGES), mode="w", zarr_format=3)
    group.attrs["gradcamo"] = {"steps": steps.tolist(), "axes": "cells, steps, C, [D,] H, W"}
    for name, array in arrays.items():
        chunks = array.shape if name in ("mean_difference", "step_latent") else (1, *array.shape[1:])
        group.create_array(name, shape=array.shape, chunks=chunks, dtype=array.dtype)[...] = array


def _find_direction(kind, argument, groups, chosen, latent_shift, device):
    """The direction; ``latent_shift`` is the description of the ``gradient:FILE`` graph (else None)."""
    if kind == "feature":
        return feature_direction(groups.codes, groups.is_high, argument)
    if kind == "gradient":
        return gradient_direction(argument, latent_shift, groups.codes, groups.is_high, chosen, device=device)
    return lda_direction(groups.codes, groups.is_high, groups.keys["Metadata_Plate"],
                         [w if w is not None else image for w, image in zip(groups.keys["Metadata_Well"],
                                                                           groups.keys["Metadata_Image"])])


def exaggerate(
    latents, ae_dir, output, *, high, low, direction="lda", steps=DEFAULT_STEPS, cells=32, model=None, seed=0,
    overwrite=False, device="auto", batch_size=64, progress=False,
) -> ExaggerateSummary:
    """Fit a direction between two groups of cells, decode their codes moved along it, measure and report.

    Parameters
    ----------
    latents : path-like
        A latents dataset (``gradcamo encode``).
    ae_dir : path-like
        The autoencoder that encoded it (``gradcamo export-autoencoder``).
    output : path-like
        Directory to write (module docstring); new, empty, or with ``overwrite`` an earlier one.
    high, low : str
        SQL conditions over the latents' columns choosing the two groups, e.g. ``"Metadata_Well = 'B02'"``.
    direction : str
        ``lda`` (shrinkage LDA on z-scored codes), ``feature:K`` or ``gradient:FILE`` (Latent Shift, a graph
        from ``gradcamo export-latent-shift``; one direction per cell).
    steps : str or sequence of float
        ``START:STOP:STEP`` in standard deviations of the direction (0 must be among them).
    cells : int
        Cells per group (drawn with ``seed``; all when there are fewer).
    model : path-like, optional
        A gradcamo classifier of the same crop shape: class probabilities and Grad-CAMO per image.
    seed : int
    overwrite : bool
    device : {"auto", "cpu", "cuda"}
    batch_size : int
    progress : bool

    Returns
    -------
    ExaggerateSummary

    Raises
    ------
    InputError
        Bad options or SQL, a group without cells, codes of another latent size, a model of
        another crop shape, an output that may not be written. Nothing is written then.
    """
    started = time.time()
    output = pathlib.Path(output)
    _check_output(output, overwrite)
    _check_cells(cells)
    steps = parse_steps(steps)
    info = read_autoencoder(ae_dir)
    classifier = open_classifier(model, info.input_shape) if model is not None else None
    kind, argument = parse_direction(direction, info.latent_size)
    latent_shift = read_latent_shift(argument, info.latent_size, info.input_shape) if kind == "gradient" else None
    check_latents(latents, info.latent_size, ae_dir)
    groups = read_groups(latents, high, low, info.latent_size)
    chosen, group_names = choose_cells(groups.is_high, cells, seed)
    found = _find_direction(kind, argument, groups, chosen, latent_shift, device)
    LOGGER.info("%s direction between %d high and %d low cells: AUROC %s", direction, int(groups.is_high.sum()),
                int((~groups.is_high).sum()), "n/a" if found.summary["auroc"] is None else f"{found.summary['auroc']:.3f}")
    if found.summary["auroc"] is None:
        LOGGER.warning("no AUROC: %s", found.summary["auroc_note"])
    shifted = shift_codes(groups.codes[chosen], found.step, steps).reshape(-1, info.latent_size)
    session = open_decoder(info, device=device)
    with cell_progress(progress) as bar:
        task = bar.add_task("decoding", total=len(shifted))
        decoded = decode(session, shifted, batch_size=batch_size, advance=lambda n: bar.update(task, advance=n))
    values, masks = measure(decoded)
    probabilities = grad_camo = None
    classes: tuple = ()
    if classifier is not None:
        probabilities, grad_camo = classify(classifier, decoded, masks, batch_size=batch_size)
        classes = classifier.class_names
    table = _trajectory_table(groups, chosen, group_names, steps, values, classes, probabilities, grad_camo)
    quantities = [f"prob_{name}" for name in classes] + (["grad_camo"] if classes else [])
    quantities += property_names(info.input_shape[0])
    by_cell = {name: table[name].to_numpy().reshape(len(chosen), len(steps)) for name in quantities}
    shares = monotonic_shares(by_cell, group_names, quantities)
    record = {
        "direction": direction, **found.summary,
        "step_latent": found.step.tolist() if found.step.ndim == 1 else "per cell: images.zarr/step_latent",
        "high": high, "low": low, "cells": {"high": int(groups.is_high.sum()), "low": int((~groups.is_high).sum())},
        "trajectory_cells": {"high": int((group_names == "high").sum()), "low": int((group_names == "low").sum())},
        "steps": steps.tolist(), "seed": seed, "latents": str(pathlib.Path(latents).resolve()),
        "autoencoder": str(info.directory), "model": str(pathlib.Path(model).resolve()) if model else None,
        "model_sha256": classifier.sha256 if classifier else None, "gradcamo_version": gradcamo.__version__,
    }
    shape = (len(chosen), len(steps))
    decoded, masks = decoded.reshape(*shape, *decoded.shape[1:]), masks.reshape(*shape, *masks.shape[1:])
    difference, mean_difference = differences(decoded, steps)
    with staged_directory(output) as staging:
        (staging / DIRECTION_FILE).write_text(json.dumps(record, indent=2))
        pq.write_table(table, staging / TRAJECTORIES_FILE)
        _write_images(staging, {"decoded": decoded, "difference": difference, "mean_difference": mean_difference,
                                "foreground": masks,
                                "step_latent": np.broadcast_to(found.step, (len(chosen), info.latent_size)).copy()},
                      steps)
        write_exaggerate_report(staging / REPORT_FILE, record, table, shares, decoded, masks, mean_difference)
    return ExaggerateSummary(output, len(chosen), len(steps), record, shares, time.time() - started)
