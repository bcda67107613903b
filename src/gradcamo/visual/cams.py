"""``gradcamo cams``: the crops, masks, CAMs and overlays of chosen rows, written to a directory.

Layout of the output directory::

    cams.parquet   the selected score rows, plus ``index`` (int64, position in the arrays)
    cams.zarr/     Zarr v3 group: image (N, C, [D,] H, W) float32, mask (N, [D,] H, W) bool,
                   cam (N, [D,] H, W) float32 (crop resolution, the dataset's convention)
    png/<index>.png  one overlay per row

With ``ablated`` (``gradcamo cams --ablated``), also what ``score --ablation`` feeds the model:
``cams.zarr`` arrays ``cell_only`` and ``context_only`` (N, C, [D,] H, W) float32 and
``png/<index>_cell_only.png``, ``png/<index>_context_only.png`` beside each overlay.
"""

import dataclasses
import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from gradcamo.errors import InputError
from gradcamo.files import staged_directory
from gradcamo.progress import cell_progress
from gradcamo.results.datasets import resolve_datasets
from gradcamo.scorer.causal import ABLATIONS, ablated_crops
from gradcamo.scorer.session import SessionCache
from gradcamo.visual.overlay import batch_overlays, render_overlay
from gradcamo.visual.recompute import iter_cams
from gradcamo.visual.select import select_rows
from gradcamo.visual.source import open_source

ROWS_FILE = "cams.parquet"
ARRAYS = "cams.zarr"
PNG_DIR = "png"


@dataclasses.dataclass(frozen=True)
class CamsSummary:
    """What a call of :func:`write_cams` wrote."""

    output: pathlib.Path
    rows: int
    seconds: float


def _check_output(output, overwrite):
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not (output / ROWS_FILE).exists():
            raise InputError(f"-o {output}: holds files `gradcamo cams` did not write; choose a new or empty directory")
        if not overwrite:
            raise InputError(f"-o {output}: holds earlier cams; pass --overwrite to replace them")


def _create_arrays(directory, n, info, ablated=False):
    group = zarr.open_group(str(directory / ARRAYS), mode="w", zarr_format=3)
    shape, spatial = tuple(info.input_shape), tuple(info.input_shape[1:])
    group.attrs["gradcamo"] = {"model_sha256": info.sha256, "target_layer": info.target_layer}
    extra = {kind: group.create_array(kind, shape=(n, *shape), chunks=(1, *shape), dtype="float32")
             for kind in (ABLATIONS if ablated else ())}
    return {
        **extra,
        "image": group.create_array("image", shape=(n, *shape), chunks=(1, *shape), dtype="float32"),
        "mask": group.create_array("mask", shape=(n, *spatial), chunks=(1, *spatial), dtype="bool"),
        "cam": group.create_array("cam", shape=(n, *spatial), chunks=(1, *spatial), dtype="float32"),
    }


def _ablated_pngs(batch, rows):
    """``(name, png bytes)`` of the cell-only and context-only crops of each row, and the crops themselves."""
    cell_only, context_only = ablated_crops(batch.image, batch.mask, batch.background, batch.in_image)
    pngs = []
    for kind, crops in zip(ABLATIONS, (cell_only, context_only)):
        for k, index in enumerate(batch.rows):
            caption = [f"#{rows['Metadata_ObjectNumber'][index]} {kind.replace('_', ' ')}",
                       "fill: background median"]
            pngs.append((f"{index}_{kind}.png", render_overlay(crops[k], batch.mask[k], np.zeros_like(batch.cam[k]),
                                                               caption)))
    return {"cell_only": cell_only, "context_only": context_only}, pngs


def write_cams(
    scores, output, *, where=None, order_by=None, limit=64, method=None, models=(), input_map=None,
    overwrite=False, progress=False, ablated=False,
) -> CamsSummary:
    """Recompute and write the CAMs of the rows of ``scores`` that the SQL selects.

    Parameters
    ----------
    scores : path-like
        A score dataset (``gradcamo score``).
    output : path-like
        Directory to write (see the module docstring); must be new, empty, or (with
        ``overwrite``) earlier cams.
    where, order_by : str, optional
        SQL over the ``scores`` view; see :func:`gradcamo.visual.select.select_rows`.
    limit : int
    method : str, optional
        Only rows of this CAM method (default: rows of every method scored, each
        recomputed with its own method).
    models : sequence of path-like
        Model files to choose from (by sha256) when the manifest names none or it moved.
    input_map : dict of str to str, optional
        ``{OLD: NEW}`` for inputs that moved.
    overwrite : bool
    progress : bool
        Show cells, cells/s and ETA on stderr.
    ablated : bool
        Also write each row's cell-only and context-only crops (see the module docstring).

    Returns
    -------
    CamsSummary

    Raises
    ------
    InputError
        Bad SQL or no row selected, a ``method`` the dataset does not hold, model file not found or changed, input not found or
        changed, or an ``output`` that may not be written. Nothing is written then.
    """
    started = time.time()
    output = pathlib.Path(output)
    _check_output(output, overwrite)
    resolve_datasets([scores])  # once: warns about an incomplete dataset; the steps below check silently
    table = select_rows(scores, where=where, order_by=order_by, limit=limit, method=method)
    if table.num_rows == 0:
        raise InputError(f"--where {where!r}: selects no rows of {scores}; nothing written")
    source = open_source(scores, models=models, input_map=input_map)
    rows = table.to_pydict()
    n = table.num_rows
    with staged_directory(output) as staging, cell_progress(progress) as bar, SessionCache() as sessions:
        arrays = _create_arrays(staging, n, source.model, ablated)
        (staging / PNG_DIR).mkdir()
        task = bar.add_task("cams", total=n)
        for batch in iter_cams(source, rows, sessions):
            modified, pngs = _ablated_pngs(batch, rows) if ablated else ({}, [])
            for name in arrays:
                values = modified[name] if name in modified else getattr(batch, name)
                arrays[name].set_orthogonal_selection(batch.rows, values)
            for name, png in pngs:
                (staging / PNG_DIR / name).write_bytes(png)
            for index, png in batch_overlays(batch, rows):
                (staging / PNG_DIR / f"{index}.png").write_bytes(png)
            bar.update(task, advance=len(batch.rows))
        pq.write_table(table.append_column("index", pa.array(np.arange(n, dtype=np.int64))), staging / ROWS_FILE)
    return CamsSummary(output, n, time.time() - started)
