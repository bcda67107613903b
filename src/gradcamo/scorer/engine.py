"""The cell-stream engine's work unit, the same for every per-cell pass (``score``, ``encode``, ...).

A pass declares what varies, as a :class:`PassKind`: its crop shape and batch size, the
columns it writes (an Arrow schema), the graphs it runs on a batch of crops and how its
batches become rows. :func:`run_unit` does everything else, once for every kind:

1. read the unit's region and measure its cells (:func:`gradcamo.scorer.units.read_unit`);
2. cut the crops and masks batch by batch, each cell ``inputs_per_cell`` times in a row
   (``score``: once per requested target);
3. hand each :class:`CellBatch` to the kind with an :class:`Inference`, through which its
   graphs run: the worker's sessions (built once per run by the worker plugin), batches
   padded to one shape on CUDA, one batch at a time on a GPU, the stage clock;
4. build the unit's table: the key columns, the crop columns the schema declares
   (:func:`crop_columns`) and the kind's own columns (:class:`Rows`).

The run around units (planning, the Dask cluster, the task window, failure isolation,
progress, resume, Ctrl-C, part files and the manifest) is
:func:`gradcamo.scorer.pipeline.run_units`; docs/architecture.md shows the smallest kind.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from gradcamo.scorer.crops import CropCutter
from gradcamo.scorer.resources import describe_worker, worker_device_id
from gradcamo.scorer.session import CUDA, run_in_batches
from gradcamo.scorer.sink import KEY_FIELDS, make_table
from gradcamo.scorer.units import Block, Objects, StageClock, UnitResult, key_columns, missing_in_unit, read_unit
from gradcamo.scorer.worker import ScorerPlugin, session_threads, worker_state


@dataclasses.dataclass(frozen=True)
class CellBatch:
    """Crops of one batch and where they come from.

    ``cells`` index the unit's cells; ``slots`` say which of its ``inputs_per_cell`` inputs
    each crop is (``score``: the index of its requested target).
    """

    cells: np.ndarray
    """(m,) int: each crop's cell, an index into the unit's cells."""
    slots: np.ndarray
    """(m,) int in ``[0, inputs_per_cell)``."""
    crops: np.ndarray
    """(m, C, *S) float32, as the crop rule cuts them (zero outside the image)."""
    masks: np.ndarray
    """(m, *S) of the kind's ``mask_dtype``: the cell's own label."""
    cutter: CropCutter

    def surroundings(self) -> tuple[np.ndarray, np.ndarray]:
        """(m, *S) bool each: the crops' background (in-image, label 0) and in-image pixels."""
        return self.cutter.surroundings(self.cells)


@dataclasses.dataclass(frozen=True)
class Rows:
    """A unit's rows as a kind builds them: each row's cell and the kind's columns."""

    cells: np.ndarray
    """(rows,) int: each row's cell, an index into the unit's cells (the engine adds its keys)."""
    columns: Mapping[str, Any]
    """The kind's columns, one entry per row, named as in its schema."""


class PassKind(Protocol):
    """What a per-cell pass declares; :func:`run_unit` does the rest.

    A kind is a small frozen dataclass: picklable, holding no session (each worker builds
    its sessions through :meth:`Inference.session`).
    """

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """C, [D,] H, W of every crop."""

    @property
    def batch_size(self) -> int:
        """Crops per graph run."""

    @property
    def device(self) -> str:
        """``auto``, ``cpu`` or ``cuda``, for every session of the kind."""

    @property
    def threads(self) -> int | None:
        """onnxruntime threads per worker (``--threads``); None: from the worker's CPUs."""

    @property
    def provenance(self) -> Mapping[str, str]:
        """Recorded in every part's schema metadata (``gradcamo.<key>``)."""

    @property
    def schema(self) -> pa.Schema:
        """The parts' columns: :data:`KEY_FIELDS` (the keys the engine fills) first."""

    @property
    def inputs_per_cell(self) -> int:
        """How many times each cell's crop is fed (``score``: its requested targets)."""

    @property
    def mask_dtype(self) -> Any:
        """numpy dtype of :attr:`CellBatch.masks` (bool, or float32 for a graph input)."""

    def run_batch(self, batch: CellBatch, inference: "Inference") -> Any:
        """Run the kind's graphs on one batch; whatever it returns is handed to :meth:`rows`."""

    def rows(self, batches: Sequence[Any]) -> Rows:
        """The unit's rows from the results of :meth:`run_batch`, in batch order."""


class Inference:
    """The worker's sessions as one unit's kind uses them.

    Every session is the worker plugin's (built on first use with this worker's device and
    threads, kept for the run); :meth:`run` times the stages, pads batches on CUDA and holds
    the worker's GPU turn.
    """

    def __init__(self, state: ScorerPlugin, kind: PassKind, clock: StageClock):
        self._state, self._kind, self._clock = state, kind, clock
        self.threads = session_threads(kind.threads)
        """onnxruntime threads of this task's sessions (:func:`gradcamo.scorer.worker.session_threads`)."""
        self.provider: str | None = None
        """The execution provider of the first session the unit used."""

    def session(self, build: Callable[..., ort.InferenceSession], *arguments: Any) -> ort.InferenceSession:
        """``build(*arguments, device=, threads=, device_id=)``: this worker's session, built once per run."""
        self._clock.lap("cut")
        session = self._state.session(build, *arguments, device=self._kind.device, threads=self.threads,
                                      device_id=worker_device_id())
        self._clock.lap("wait")  # building it (first use on this worker), or waiting for another task to
        if self.provider is None:
            self.provider = session.get_providers()[0]
        return session

    def run(self, session: ort.InferenceSession, outputs: Sequence[str],
            feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run(outputs, feed)`` on any number of rows, ``batch_size`` at a time
        (:func:`gradcamo.scorer.session.run_in_batches`).

        Every output's first axis has a whole number of entries per input row (the score
        head: one per method); the rows of each output are those of the inputs, in order.
        """
        return run_in_batches(session, outputs, feed, self._kind.batch_size,
                              run=functools.partial(self._run_batch, session))

    def _run_batch(self, session, outputs, batch):
        rows = len(next(iter(batch.values())))
        if session.get_providers()[0] == CUDA:
            batch = _padded_to(batch, self._kind.batch_size)
        self._clock.lap("cut")
        with self._state.batch_slot(session):
            self._clock.lap("wait")
            values = session.run(outputs, batch)
            self._clock.lap("infer")
        fed = len(next(iter(batch.values())))
        return [value[:rows * (len(value) // fed)] for value in values]

    @property
    def worker(self) -> dict | None:
        """The worker that ran the unit (:func:`gradcamo.scorer.resources.describe_worker`); None before a session."""
        return None if self.provider is None else describe_worker(self.provider, self.threads)


def _padded_to(feed, batch_size):
    """``feed`` with its last sample repeated up to ``batch_size`` rows.

    On CUDA every new batch shape costs onnxruntime a new plan (a short last batch per unit
    made the tiny model 10-50x slower on an H100); each sample's outputs depend on that
    sample alone, so the repeats are computed and dropped.
    """
    missing = batch_size - len(next(iter(feed.values())))
    return {name: np.concatenate([value, np.repeat(value[-1:], missing, axis=0)]) if missing else value
            for name, value in feed.items()}


def crop_columns(schema: pa.Schema, pad_fractions: np.ndarray, missing_chunks: bool) -> dict[str, np.ndarray]:
    """The columns about each row's crop that ``schema`` declares: ``edge_padded`` (the crop
    reaches past the image), ``pad_fraction`` (the share of its voxels that do) and
    ``missing_chunks`` (its unit read image chunks as the fill value)."""
    names = set(schema.names)
    columns = {
        "edge_padded": pad_fractions > 0,
        "pad_fraction": pad_fractions.astype(np.float32),
        "missing_chunks": np.full(len(pad_fractions), missing_chunks),
    }
    return {name: values for name, values in columns.items() if name in names}


def run_unit(kind: PassKind, block: Block, objects: Objects | None = None) -> UnitResult:
    """Run ``kind`` on the cells of one block: read, (measure,) cut, run its batches, build the rows.

    Parameters
    ----------
    kind : PassKind
    block : gradcamo.scorer.units.Block
    objects : gradcamo.scorer.units.Objects, optional
        The block's objects from pass 1; None for a whole image, measured here from the
        same label read that the masks are cut from.

    Returns
    -------
    gradcamo.scorer.units.UnitResult
        Its table has ``kind.schema``: one row per entry of the kind's :class:`Rows`.
    """
    clock = StageClock()
    crop_spatial = tuple(kind.crop_shape[1:])
    given = objects
    cells, cutter = read_unit(block, objects, crop_spatial, clock)
    missing = missing_in_unit(block, given, crop_spatial)
    if cutter is None:
        return UnitResult(make_table({}, provenance=kind.provenance, schema=kind.schema), 0, None, clock.seconds,
                          without_centre=cells.without_centre, missing_chunks=missing)
    inference = Inference(worker_state(), kind, clock)
    per_cell = kind.inputs_per_cell
    item_cells = np.repeat(np.arange(len(cells)), per_cell)
    batches = []
    for begin in range(0, len(item_cells), kind.batch_size):
        chosen = item_cells[begin:begin + kind.batch_size]
        crops, masks = cutter.cut(chosen, cells.ids[chosen], mask_dtype=kind.mask_dtype)
        slots = np.arange(begin, begin + len(chosen)) % per_cell
        batches.append(kind.run_batch(CellBatch(chosen, slots, crops, masks, cutter), inference))
    rows = kind.rows(batches)
    table = make_table({
        **key_columns(block, cells, rows.cells),
        **crop_columns(kind.schema, cutter.pad_fractions[rows.cells], bool(missing)),
        **rows.columns,
    }, provenance=kind.provenance, schema=kind.schema)
    clock.lap("table")
    return UnitResult(table, len(cells), inference.provider, clock.seconds, without_centre=cells.without_centre,
                      missing_chunks=missing, worker=inference.worker)


__all__ = ["KEY_FIELDS", "CellBatch", "Inference", "PassKind", "Rows", "crop_columns", "run_unit"]
