"""Write images with labels, and HCS plates, as OME-Zarr with ome-zarr-py (the standard writer)."""

import os

import numpy as np
import zarr
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

NGFF_VERSIONS = ("0.4", "0.5")
LABEL_NAME = "cells"


def _axes(spatial_dims):
    return ["c", "z", "y", "x"] if spatial_dims == 3 else ["c", "y", "x"]


def write_image_group(group, image, labels, *, chunks=None, label_name=LABEL_NAME, ngff_version="0.5") -> None:
    """Write one ``(C, [Z,] Y, X)`` image and its label image into an open zarr group.

    Parameters
    ----------
    group : zarr.Group
    image : (C, [Z,] Y, X) ndarray
    labels : ([Z,] Y, X) integer ndarray
    chunks : tuple of int, optional
        Spatial chunk shape of both arrays; default: whole planes.
    label_name : str
        Name of the label image under ``labels/``.
    ngff_version : {"0.4", "0.5"}
        NGFF 0.4 is written on Zarr v2, 0.5 on Zarr v3.
    """
    write_field(group, image, {label_name: labels}, chunks=chunks or labels.shape, ngff_version=ngff_version)


def _omero(image, channel_names):
    """``omero`` metadata naming the channels (labels), with display windows from the data."""
    full = np.iinfo(image.dtype) if np.issubdtype(image.dtype, np.integer) else None
    channels = []
    for name, plane in zip(channel_names, image):
        low, high = (float(plane.min()), float(plane.max())) if plane.size else (0.0, 0.0)
        window = {"min": float(full.min) if full else low, "max": float(full.max) if full else high,
                  "start": low, "end": high}
        channels.append({"label": str(name), "color": "FFFFFF", "window": window, "active": True})
    return {"channels": channels}


def write_field(group, image, labels, *, chunks=None, channel_names=None, ngff_version="0.5") -> None:
    """Write one ``(C, [Z,] Y, X)`` image and its named label images into an open zarr group.

    Parameters
    ----------
    group : zarr.Group
    image : (C, [Z,] Y, X) ndarray
    labels : dict
        ``{name: ([Z,] Y, X) integer ndarray}``, written under ``labels/<name>``.
    chunks : tuple of int, optional
        Spatial chunk shape of every array; default: whole planes (one z-plane per chunk in 3D).
    channel_names : sequence of str, optional
        Written as ``omero.channels[].label``.
    ngff_version : {"0.4", "0.5"}
        NGFF 0.4 is written on Zarr v2, 0.5 on Zarr v3 (both compressed: Blosc, Zstandard).
    """
    fmt = format_from_version(ngff_version)
    spatial_dims = image.ndim - 1
    spatial_chunks = tuple(chunks) if chunks else (1,) * (spatial_dims - 2) + image.shape[-2:]
    extra = {"omero": _omero(image, channel_names)} if channel_names is not None else {}
    write_image(
        image, group, axes=_axes(spatial_dims), fmt=fmt, scale_factors=[],
        storage_options={"chunks": (1, *spatial_chunks)}, **extra,
    )
    for name, label_image in labels.items():
        write_labels(
            label_image, group, name=name, axes=_axes(spatial_dims)[1:], fmt=fmt, scale_factors=[], scaler=None,
            storage_options={"chunks": spatial_chunks},
        )


def _open_root(path, ngff_version):
    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(f"ngff_version: expected one of {NGFF_VERSIONS}, got {ngff_version!r}")
    return zarr.open_group(str(path), mode="w", zarr_format=2 if ngff_version == "0.4" else 3)


def write_image_store(path, image, labels, **options) -> str | os.PathLike:
    """Write a single-image OME-Zarr store at ``path``; options as :func:`write_image_group`."""
    root = _open_root(path, options.get("ngff_version", "0.5"))
    write_image_group(root, image, labels, **options)
    return path


def write_plate(path, fields, *, name="plate", **options) -> str | os.PathLike:
    """Write an HCS plate.

    Parameters
    ----------
    path : str or os.PathLike
    fields : dict
        ``{(row_letter, column_number): [(image, labels), ...]}``, one pair per field.
    name : str
        The plate's name attribute (becomes ``Metadata_Plate``).
    **options
        As :func:`write_image_group`.
    """
    ngff_version = options.get("ngff_version", "0.5")
    fmt = format_from_version(ngff_version)
    root = _open_root(path, ngff_version)
    rows = sorted({row for row, _ in fields})
    columns = sorted({str(column) for _, column in fields}, key=int)
    well_paths = [f"{row}/{column}" for row, column in sorted(fields, key=lambda k: (k[0], int(k[1])))]
    write_plate_metadata(
        root, rows, columns, well_paths, fmt=fmt, name=name,
        field_count=max(len(v) for v in fields.values()),
    )
    for (row, column), images in fields.items():
        well = root.require_group(f"{row}/{column}")
        write_well_metadata(well, [{"path": str(i)} for i in range(len(images))], fmt=fmt)
        for index, (image, labels) in enumerate(images):
            write_image_group(well.require_group(str(index)), image, labels, **options)
    return path
