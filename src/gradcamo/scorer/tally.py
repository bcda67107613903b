"""What a run's finished units add up to, for its manifest, its summary and its progress bar."""

import collections
import logging
from typing import Any

import pyarrow.compute as pc

from gradcamo.scorer.empty import EMPTY_MAPS_KEY, empty_maps_warning
from gradcamo.scorer.units import STAGES, Block, UnitResult

LOGGER = logging.getLogger(__name__)


class RunTally:
    """Counts, providers, stage seconds, chunks read as the fill value and cells per worker of one run.

    Parameters
    ----------
    images : list
        The run's planned images (:func:`gradcamo.scorer.pipeline.plan_run`).
    centre_labels : bool
        Crops are centred on another label image: cells without a centre object are counted.
    missing_chunks : dict of str to list of str
        Chunks read as the fill value by the runs that wrote the parts kept (image name -> chunks).
    """

    def __init__(self, images: list, *, centre_labels: bool, missing_chunks: dict[str, list[str]]):
        self.counts: dict[str, Any] = {"images": len(images), "units": sum(len(i.blocks) or 1 for i in images),
                                       "cells": 0, "rows": 0}
        """The manifest's ``counts``."""
        if centre_labels:
            self.counts["cells_without_centre"] = 0
        self.providers: set[str] = set()
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.missing = {image: set(chunks) for image, chunks in missing_chunks.items()}
        self._workers: dict[str, dict] = {}
        self._finished_images: collections.Counter = collections.Counter()

    def add(self, block: Block, result: UnitResult) -> None:
        """Count one finished unit."""
        self.counts["cells"] += result.cells
        self.counts["rows"] += result.table.num_rows
        if "cells_without_centre" in self.counts:
            self.counts["cells_without_centre"] += result.without_centre
        if "cam_empty" in result.table.column_names:
            # pyarrow.compute: a bool column's to_numpy() imports pandas on first use, and pyarrow's
            # guard around that import would swallow the Interrupted that Ctrl-C raises there
            empty = pc.sum(result.table["cam_empty"]).as_py() or 0
            self.counts[EMPTY_MAPS_KEY] = self.counts.get(EMPTY_MAPS_KEY, 0) + empty
        if result.provider:
            self.providers.add(result.provider)
        for stage, seconds in result.seconds.items():
            self.stages[stage] += seconds
        self._finished_images[block.ref] += 1
        if result.missing_chunks:
            self.missing.setdefault(block.ref.name, set()).update(result.missing_chunks)
        if result.worker is not None:
            entry = self._workers.setdefault(result.worker["worker"], {**result.worker, "cells": 0})
            entry["cells"] += result.cells

    def expected_cells(self, images: int) -> int | None:
        """The cells of ``images`` images, estimated from those finished so far (None before the first)."""
        if not self._finished_images:
            return None
        estimate = self.counts["cells"] / len(self._finished_images) * images
        return max(int(estimate), self.counts["cells"]) or None

    @property
    def empty_maps(self) -> int:
        return self.counts.get(EMPTY_MAPS_KEY, 0)

    @property
    def missing_chunks(self) -> dict[str, list[str]]:
        """Image name -> the chunks read as the fill value, sorted."""
        return {image: sorted(chunks) for image, chunks in sorted(self.missing.items())}

    @property
    def workers(self) -> list[dict]:
        """What each worker was (:func:`gradcamo.scorer.resources.describe_worker`) and the cells it did."""
        return [self._workers[name] for name in sorted(self._workers)]

    def record(self, dataset: Any) -> None:
        """Write the tally's manifest entries (``missing_chunks``, ``workers``, ``warnings``) to ``dataset``."""
        if self.missing:
            dataset.record(missing_chunks=self.missing_chunks)
        for entry in self.workers:
            LOGGER.info("worker %s on %s: %d cells", entry["worker"], entry["device"], entry["cells"])
        dataset.record(workers=self.workers)
        warning = empty_maps_warning(self.empty_maps, self.counts["rows"])
        if warning:
            dataset.record(warnings=[warning])


__all__ = ["RunTally"]
