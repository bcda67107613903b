"""Turn inputs and options into checked images and work units, before any scoring."""

import dataclasses
import hashlib

import numpy as np

from gradcamo.data.read import discover_images
from gradcamo.errors import InputError
from gradcamo.scorer.regions import block_grid, label_chunks, open_cached, plan_layout
from gradcamo.scorer.units import Unit


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    """One image, checked against the model, with its blocks."""

    ref: object
    units: tuple


def parse_targets(spec, class_names):
    """``predicted`` -> (-1,); ``all`` -> every class; an index or a class name -> that class."""
    text = str(spec).strip()
    if text == "predicted":
        return (-1,)
    if text == "all":
        return tuple(range(len(class_names)))
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names):
            raise InputError(f"--target: class index {index} out of range 0..{len(class_names) - 1}")
        return (index,)
    if text in class_names:
        return (class_names.index(text),)
    raise InputError(
        f"--target: expected predicted, all, a class index or one of {list(class_names)}, got {text!r}"
    )


def _unit_prefix(ref):
    return hashlib.sha1(f"{ref.store}|{ref.path}".encode()).hexdigest()[:12]


def plan_image(ref, info, *, label_name=None, channels=None, timepoint=0, block_shape=None):
    """Open, check and split one image into work units.

    Raises
    ------
    InputError
        As :func:`gradcamo.scorer.regions.plan_layout`, or a crop larger than the image.
    """
    source = open_cached(ref, label_name)
    layout = plan_layout(
        source, spatial_dims=info.spatial_dims, n_channels=info.input_shape[0],
        channels=channels, timepoint=timepoint,
    )
    crop = tuple(info.input_shape[1:])
    if any(c > n for c, n in zip(crop, layout.spatial_shape)):
        raise InputError(
            f"{ref.name}: the model's crop {crop} is larger than the image {layout.spatial_shape}"
        )
    chunks = label_chunks(source.labels, layout.label_axes, layout.spatial_axes)
    blocks = block_grid(layout.spatial_shape, chunks, crop, block_shape=block_shape)
    prefix = _unit_prefix(ref)
    units = tuple(
        Unit(f"{prefix}-{index:05d}", ref, layout, start, stop) for index, (start, stop) in enumerate(blocks)
    )
    return PlannedImage(ref, units)


def plan_inputs(inputs, info, **options):
    """Every image of every input, planned; duplicates (the same image twice) refused."""
    planned, seen = [], set()
    for store in inputs:
        for ref in discover_images(store):
            key = (ref.store, ref.path)
            if key in seen:
                raise InputError(f"{ref.name}: given twice")
            seen.add(key)
            planned.append(plan_image(ref, info, **options))
    return planned


def assign_objects(units, measurements):
    """Give each object to the unit whose block holds its crop centre."""
    centres = np.floor(measurements.centroids + 0.5).astype(np.int64)
    assigned = []
    for unit in units:
        chosen = np.all((centres >= unit.start) & (centres < unit.stop), axis=1)
        assigned.append(
            dataclasses.replace(
                unit, ids=measurements.ids[chosen], voxels=measurements.voxels[chosen],
                centroids=measurements.centroids[chosen],
            )
        )
    return assigned
