"""Work units of the cell-stream engine and their reading side; arguments are plain, picklable data.

A unit is a :class:`Block` of one image (the whole image when it fits the memory budget)
and the objects it scores: those whose crop centre lies in the block. For a whole image
the task measures the objects itself, from the same label read that its masks are cut
from (one task, one read of each chunk). A larger image is split into chunk-aligned
blocks handled in two passes: :func:`measure_block` sums each block's objects, the client
merges the sums of one image and hands every block its :class:`Objects`, then the unit
(:func:`gradcamo.scorer.engine.run_unit`) cuts the crops from the block plus a halo of half
a crop (:func:`read_unit`).

A unit returns a :class:`UnitResult` whose table is finished: every column of its pass's schema.
"""

import dataclasses
import time

import numpy as np
import pyarrow as pa

from gradcamo.data.chunks import chunks_read_as_fill
from gradcamo.data.read import ImageRef, ImageSource
from gradcamo.errors import InputError
from gradcamo.scorer.crops import (
    CropCutter, Measurements, centre_voxels, crop_starts, measure_objects, merge_measurements,
)
from gradcamo.scorer.regions import Layout, read_region, region_index
from gradcamo.scorer.worker import worker_state

STAGES = ("read", "measure", "cut", "wait", "infer", "table")
"""Where a unit's seconds go: ``cut`` includes assembling batches; ``wait`` is time queued for the
session while another task's batch runs, and building the worker's sessions on first use."""


@dataclasses.dataclass(frozen=True)
class Block:
    """One spatial block ``[start, stop)`` of one image; ``whole`` when it is the entire image.

    ``source`` holds the opened level-0 arrays (zarr arrays pickle as store + metadata, so
    a worker reads chunks without opening and checking the image again).
    """

    unit_id: str
    source: ImageSource
    layout: Layout
    start: tuple
    stop: tuple

    @property
    def ref(self) -> ImageRef:
        return self.source.ref

    @property
    def whole(self) -> bool:
        return tuple(self.start) == (0,) * len(self.start) and tuple(self.stop) == tuple(self.layout.spatial_shape)


@dataclasses.dataclass(frozen=True)
class Objects:
    """The objects a block scores: label ids, voxel counts, centroids (whole-image coordinates).

    ``centres``: where each crop is centred, when another label image gives the centres
    (NaN rows: no centre object of that id); None: at the centroids. ``without_centre``:
    objects of the unit left out for want of a centre object (:meth:`centred`).
    """

    ids: np.ndarray
    voxels: np.ndarray
    centroids: np.ndarray
    centres: np.ndarray | None = None
    without_centre: int = 0

    @classmethod
    def of(cls, measurements, chosen=slice(None), centres=None) -> "Objects":
        """The ``chosen`` objects of ``measurements``; with ``centres`` (Measurements of the centre label
        image), each centred on the centre object of its id."""
        objects = cls(measurements.ids, measurements.voxels, measurements.centroids)
        if centres is not None:
            matched = np.full(objects.centroids.shape, np.nan)
            found = np.isin(objects.ids, centres.ids)
            matched[found] = centres.centroids[np.searchsorted(centres.ids, objects.ids[found])]
            objects = dataclasses.replace(objects, centres=matched)
        return objects.subset(chosen)

    def subset(self, chosen) -> "Objects":
        return Objects(self.ids[chosen], self.voxels[chosen], self.centroids[chosen],
                       None if self.centres is None else self.centres[chosen], self.without_centre)

    @property
    def crop_centres(self) -> np.ndarray:
        """(n, ndim) float64: where the crops are centred (NaN rows: no centre object)."""
        return self.centroids if self.centres is None else self.centres

    def centred(self) -> "Objects":
        """The objects with a crop centre; those without are counted in ``without_centre``."""
        has = np.isfinite(self.crop_centres).all(axis=1)
        if has.all():
            return self
        return dataclasses.replace(self.subset(has), without_centre=self.without_centre + int((~has).sum()))

    def __len__(self):
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class UnitResult:
    """What a unit sends back: its finished rows, the provider used and seconds per stage;
    ``worker`` describes the worker that ran it (:func:`gradcamo.scorer.resources.describe_worker`)."""

    table: pa.Table
    cells: int
    provider: str | None
    """The execution provider of the unit's first session; None when it ran none (no cells)."""
    seconds: dict[str, float]
    without_centre: int = 0
    """Cells left out for want of a centre object (``--center-labels``)."""
    missing_chunks: tuple[str, ...] = ()
    """Image chunks read as the fill value (``--missing-chunks zeros``): ``store/array/key``."""
    worker: dict | None = None


def _slices(start, stop):
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _read_labels(source, layout, start, stop, cache=None, centres=False):
    array, name = (source.centres, source.centre_name) if centres else (source.labels, source.label_name)
    labels = read_region(array, layout.label_axes, layout.spatial_axes, _slices(start, stop), cache=cache)
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError(
            f"{source.ref.name}: labels/{name} holds negative ids (e.g. {int(labels.min())}); "
            "label ids must be 0 (background) or positive"
        )
    return labels


def measure_block(block) -> Measurements | tuple[Measurements, Measurements]:
    """Pass 1 of a blocked image: voxel counts and coordinate sums of the objects in ``block``; with
    centre labels, a pair: those of the scored objects and those of the centre objects."""
    cache = worker_state().chunks
    cells = measure_objects(_read_labels(block.source, block.layout, block.start, block.stop, cache=cache),
                            offset=block.start)
    if block.source.centres is None:
        return cells
    centres = _read_labels(block.source, block.layout, block.start, block.stop, cache=cache, centres=True)
    return cells, measure_objects(centres, offset=block.start)


def merge_blocks(parts, ndim) -> Objects:
    """One image's :class:`Objects` from the :func:`measure_block` results of all its blocks."""
    if parts and isinstance(parts[0], tuple):
        cells, centres = zip(*parts)
        return Objects.of(merge_measurements(cells, ndim), centres=merge_measurements(centres, ndim))
    return Objects.of(merge_measurements(parts, ndim))


def assign_objects(blocks, objects) -> list[tuple[Block, Objects]]:
    """Pair each block with the objects whose crop centre it holds (one image's merged :class:`Objects`).

    An object without a centre object goes to the block holding its centroid, which counts it
    as left out.
    """
    centres = objects.crop_centres
    centres = centre_voxels(np.where(np.isfinite(centres), centres, objects.centroids))
    return [
        (block, objects.subset(np.all((centres >= block.start) & (centres < block.stop), axis=1)))
        for block in blocks
    ]


class StageClock:
    """Seconds per stage of one unit (:data:`STAGES`): each :meth:`lap` charges the time since the last."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._clock = time.perf_counter()

    def lap(self, stage) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._clock
        self._clock = now


def unit_region(block, objects, crop_spatial) -> tuple[np.ndarray, np.ndarray]:
    """The spatial region ``[start, stop)`` a unit reads: the whole image (``objects`` None), or
    the block and the halo its objects' crops reach into."""
    layout = block.layout
    crop = np.asarray(crop_spatial)
    if objects is None:
        return np.zeros(len(crop), np.int64), np.asarray(layout.spatial_shape)
    # Crops of objects centred in [start, stop) span [start - crop//2, stop - 1 - crop//2 + crop).
    return (np.maximum(np.asarray(block.start) - crop // 2, 0),
            np.minimum(np.asarray(block.stop) - 1 - crop // 2 + crop, layout.spatial_shape))


def missing_in_unit(block, objects, crop_spatial) -> tuple[str, ...]:
    """The image chunks a unit read as the fill value (``--missing-chunks zeros``), as
    :func:`gradcamo.data.chunks.chunks_read_as_fill` names them."""
    layout = block.layout
    start, stop = unit_region(block, objects, crop_spatial)
    index, _ = region_index(layout.image_axes, layout.spatial_axes, _slices(start, stop),
                            channels=layout.channels, timepoint=layout.timepoint)
    return tuple(chunks_read_as_fill(block.source.image, index))


def read_unit(block, objects, crop_spatial, clock) -> tuple:
    """Read a unit's region (the whole image, or the block and its halo), measure its objects if
    needed, and set up the cutting of their crops: the read, measure and cut steps of every unit.

    Parameters
    ----------
    block : Block
    objects : Objects, optional
        The block's objects from pass 1; None for a whole image, measured here from the
        same label read that the masks are cut from.
    crop_spatial : tuple of int
        The crop's spatial shape.
    clock : StageClock

    Returns
    -------
    objects : Objects
        Those with a crop centre (:meth:`Objects.centred`).
    cutter : CropCutter or None
        Cuts the objects' crops and masks; None when there are no objects.
    """
    source = block.source
    layout = block.layout
    crop = np.asarray(crop_spatial)
    region_start, region_stop = unit_region(block, objects, crop_spatial)
    cache = None if objects is None else worker_state().chunks  # a whole image reads every chunk once anyway
    labels = _read_labels(source, layout, region_start, region_stop, cache)
    image = read_region(
        source.image, layout.image_axes, layout.spatial_axes, _slices(region_start, region_stop),
        channels=layout.channels, timepoint=layout.timepoint, cache=cache,
    )
    clock.lap("read")
    if objects is None:
        centres = None
        if source.centres is not None:
            centres = measure_objects(_read_labels(source, layout, region_start, region_stop, centres=True))
        objects = Objects.of(measure_objects(labels), centres=centres)
        clock.lap("measure")
    objects = objects.centred()
    if not len(objects):
        return objects, None
    return objects, CropCutter(image, labels, crop_starts(objects.crop_centres, crop) - region_start, crop)


def key_columns(block, objects, index) -> dict:
    """The key columns (:data:`gradcamo.scorer.sink.KEY_FIELDS`) of the rows of ``objects[index]`` of ``block``."""
    n = len(index)
    centroids = objects.centroids[index]
    spatial = block.layout.spatial_axes
    ref = block.ref
    return {
        "Metadata_Plate": [ref.plate] * n,
        "Metadata_Well": [ref.well] * n,
        "Metadata_Site": np.full(n, ref.site, dtype=np.int32),
        "Metadata_Image": [ref.name] * n,
        "Metadata_ObjectNumber": objects.ids[index],
        "centroid_z": centroids[:, 0] if "z" in spatial else [None] * n,
        "centroid_y": centroids[:, spatial.index("y")],
        "centroid_x": centroids[:, spatial.index("x")],
        "object_voxels": objects.voxels[index],
    }


__all__ = ["Block", "Measurements", "Objects", "StageClock", "UnitResult", "assign_objects", "key_columns",
           "measure_block", "merge_blocks", "missing_in_unit", "read_unit", "unit_region"]
