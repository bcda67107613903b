"""Turn inputs and options into checked images and work units, before any scoring."""

import concurrent.futures
import dataclasses
import hashlib

import numpy as np

from gradcamo.data.read import discover_images, open_image
from gradcamo.errors import InputError, UnreadableError
from gradcamo.scorer.regions import block_grid, label_chunks, plan_layout
from gradcamo.scorer.units import Block

PLANNING_THREADS = 8
UNIT_MAX_BYTES = 512 * 2**20
"""An image whose chosen channels and labels take at most this many bytes is one work unit."""


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    """One image, checked against the model: one whole-image block, or several chunk-aligned ones."""

    ref: object
    blocks: tuple

    @property
    def whole(self) -> bool:
        """Scored in one task (measure and score from one read), not in two passes."""
        return len(self.blocks) == 1 and self.blocks[0].whole


@dataclasses.dataclass(frozen=True)
class UnreadableImage:
    """A plate field that could not be opened (missing, damaged or unreachable): a failed work
    unit of its own, without blocks, so that the plate's other fields are scored."""

    ref: object
    error: UnreadableError
    blocks: tuple = ()
    whole: bool = False


def parse_targets(spec, class_names) -> tuple[int, ...]:
    """``predicted`` -> (-1,); ``all`` -> every class; an index or a class name -> that class."""
    text = str(spec).strip()
    if text == "predicted":
        return (-1,)
    if text == "all":
        return tuple(range(len(class_names)))
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names):
            raise InputError(f"target: class index {index} out of range 0..{len(class_names) - 1}", argument="target")
        return (index,)
    if text in class_names:
        return (class_names.index(text),)
    raise InputError(
        f"target: expected predicted, all, a class index or one of {list(class_names)}, got {text!r}",
        argument="target",
    )


def _unit_prefix(ref):
    return hashlib.sha1(f"{ref.store}|{ref.path}".encode()).hexdigest()[:12]


def plan_image(ref, crop_shape, *, label_name=None, channels=None, timepoint=0, block_shape=None,
               unit_max_bytes=UNIT_MAX_BYTES, model_channel_names=(), centre_labels=None, missing_chunks="error") -> PlannedImage:
    """Open, check and split one image into work units.

    ``crop_shape`` is the model's crop ``(C, [D,] H, W)``: the image must offer C channels
    (after ``channels``, indices or names, or ``model_channel_names`` matched to the store's
    channel labels: :func:`gradcamo.scorer.channels.choose_channels`) and its spatial
    dimensions. The whole image is one unit when its chosen channels and labels fit
    ``unit_max_bytes`` and no ``block_shape`` is given; else chunk-aligned blocks
    (:func:`block_grid`). An image smaller than the crop is scored like any edge cell: its
    crops are padded with zeros. ``centre_labels`` names the label image whose objects centre
    the crops. ``missing_chunks`` is what reading a chunk the image's store lacks does
    (:func:`gradcamo.data.read.open_image`).

    Raises
    ------
    InputError
        As :func:`gradcamo.scorer.regions.plan_layout`.
    """
    source = open_image(ref, label_name, centre_labels, missing_chunks=missing_chunks)
    layout = plan_layout(
        source, spatial_dims=len(crop_shape) - 1, n_channels=crop_shape[0], channels=channels, timepoint=timepoint,
        model_channel_names=model_channel_names,
    )
    crop = tuple(crop_shape[1:])
    prefix = _unit_prefix(ref)
    voxels = int(np.prod(layout.spatial_shape))
    label_bytes = source.labels.dtype.itemsize + (0 if source.centres is None else source.centres.dtype.itemsize)
    nbytes = voxels * (len(layout.channels) * source.image.dtype.itemsize + label_bytes)
    if block_shape is None and nbytes <= unit_max_bytes:
        start, stop = (0,) * len(layout.spatial_shape), tuple(layout.spatial_shape)
        return PlannedImage(source.ref, (Block(f"{prefix}-image", source, layout, start, stop),))
    chunks = label_chunks(source.labels, layout.label_axes, layout.spatial_axes)
    blocks = block_grid(layout.spatial_shape, chunks, crop, block_shape=block_shape)
    return PlannedImage(source.ref, tuple(
        Block(f"{prefix}-{index:05d}", source, layout, start, stop) for index, (start, stop) in enumerate(blocks)
    ))


def plan_inputs(inputs, crop_shape, site_base=0, **options) -> list[PlannedImage | UnreadableImage]:
    """Every image of every input, planned; duplicates (the same image twice) refused.

    Plate fields without a site recorded by ``gradcamo import`` get their index plus ``site_base``.

    Images are opened and checked on a few threads (each costs a handful of small metadata
    reads, which add up over a plate of thousands of fields on a network store). A plate
    field that cannot be read is an :class:`UnreadableImage`, unless no image can be read.
    """
    refs, seen = [], set()
    for store in inputs:
        for ref in discover_images(store, site_base):
            key = (ref.store, ref.path)
            if key in seen:
                raise InputError(f"{ref.name}: given twice")
            seen.add(key)
            refs.append(ref)

    def plan(ref):
        try:
            return plan_image(ref, crop_shape, **options)
        except UnreadableError as error:
            if ref.plate is None:
                raise
            return UnreadableImage(ref, error)

    with concurrent.futures.ThreadPoolExecutor(PLANNING_THREADS) as pool:
        planned = list(pool.map(plan, refs))
    unreadable = [image for image in planned if isinstance(image, UnreadableImage)]
    if unreadable and len(unreadable) == len(planned):
        raise unreadable[0].error
    return planned
