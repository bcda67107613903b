"""Work units that failed: what is recorded, and when a run stops early.

A unit that raises anything but a :class:`~gradcamo.errors.GradcamoError` (a corrupt or
unreadable chunk, a decode error, a worker that died twice, a model error) is recorded and
the run goes on; its rows are missing and its part file is not written, so re-running the
same command computes it (and only it) again. A ``GradcamoError`` raised in a unit is bad
input found late (negative label ids, a CUDA device that is not there): it stops the run.
"""

import dataclasses
import itertools
import logging

from gradcamo.data.chunks import MissingChunkError
from gradcamo.data.remote import read_errors
from gradcamo.errors import describe, first_line

LOGGER = logging.getLogger(__name__)
DEFAULT_MAX_FAILURES = 10
"""Failed units tolerated before a run stops early: scattered damage (a few bad chunks among
thousands) is far below it, while a systematic fault (storage gone, wrong credentials, a model
that cannot run) fails every unit and would otherwise fill the log with thousands of lines."""
SHOWN_CHUNKS = 3
"""Damaged chunks named in a failure's cause (the rest are counted)."""


def describe_block(block) -> str:
    """``whole image``, or the block's spatial ranges: ``y 0:256, x 256:512``."""
    if block.whole:
        return "whole image"
    axes = block.layout.spatial_axes
    return ", ".join(f"{axis} {start}:{stop}" for axis, start, stop in zip(axes, block.start, block.stop))


def _chunk_positions(array, axes, block):
    """Grid positions of the stored chunks (shards when sharded) of ``array`` that ``block`` covers
    (every chunk along non-spatial axes)."""
    spatial = block.layout.spatial_axes
    ranges = []
    for axis, size, chunk in zip(axes, array.shape, array.shards or array.chunks):
        if axis in spatial:
            start, stop = block.start[spatial.index(axis)], block.stop[spatial.index(axis)]
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        else:
            ranges.append(range(-(-size // chunk)))
    return itertools.product(*ranges)


def damaged_chunks(block) -> list[str]:
    """Where the image and label chunks of ``block`` that are missing (image chunks only) or cannot be
    read or decoded are stored.

    Reads the block's chunks one by one (only after its unit failed, to name the culprit).

    Returns
    -------
    list of str
        ``store name/array path/chunk key``, e.g. ``plate.zarr/A/2/0/s0/c/0/1/0``.
    """
    source = block.source
    store = source.ref.name.split("/")[0]
    found = []
    for array, axes in ((source.image, block.layout.image_axes), (source.labels, block.layout.label_axes)):
        stored = array.shards or array.chunks
        for position in _chunk_positions(array, axes, block):
            try:
                array[tuple(slice(p * c, (p + 1) * c) for p, c in zip(position, stored))]  # this chunk alone
            except Exception:  # whatever reading it raises marks it: the unit's own error is reported as is
                found.append(f"{store}/{array.path}/{array.metadata.encode_chunk_key(position)}")
    return found


@dataclasses.dataclass(frozen=True)
class UnitFailure:
    """One failed work unit: its id (None for a field not opened), image (``Metadata_Image``),
    block and cause (one line)."""

    unit: object
    image: str
    block: str
    cause: str

    @classmethod
    def unopened(cls, image) -> "UnitFailure":
        """The failure of a plate field that could not be opened (an ``UnreadableImage``)."""
        return cls(None, image.ref.name, "opening", first_line(image.error))

    @classmethod
    def of(cls, block, error, *, stage=None) -> "UnitFailure":
        """The failure of ``block``'s unit with ``error``; the cause names the damaged chunks, if any."""
        where = describe_block(block)
        # a store that cannot be reached would mark every chunk: look for damaged ones only otherwise
        chunks = [] if isinstance(error, read_errors()) else damaged_chunks(block)
        cause = describe(error)
        if isinstance(error, MissingChunkError):  # it names its own chunk: list the others
            chunks = [chunk for chunk in chunks if chunk != error.location]
            what = "also missing or unreadable"
        else:
            what = f"unreadable chunk{'s' if len(chunks) > 1 else ''}"
        if chunks:
            more = f" and {len(chunks) - SHOWN_CHUNKS} more" if len(chunks) > SHOWN_CHUNKS else ""
            cause += f" ({what}: {', '.join(chunks[:SHOWN_CHUNKS])}{more})"
        return cls(block.unit_id, block.ref.name, f"{stage}, {where}" if stage else where, cause)

    def __str__(self):
        return f"{self.image} ({self.block}): {self.cause}"


class FailureLog:
    """The failures of one run, and whether more than ``max_failures`` have happened."""

    def __init__(self, max_failures):
        self.max_failures = max_failures
        self.failures = []

    def record(self, failure) -> None:
        LOGGER.info("work unit failed: %s", failure)
        self.failures.append(failure)

    @property
    def exceeded(self) -> bool:
        return len(self.failures) > self.max_failures

    def to_json(self) -> list[dict]:
        return [dataclasses.asdict(failure) for failure in self.failures]


__all__ = ["DEFAULT_MAX_FAILURES", "FailureLog", "UnitFailure", "damaged_chunks", "describe_block"]
