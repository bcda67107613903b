"""Stores of other OME-Zarr writers, read as they write them, and scored like ome-zarr-py's.

* ngff-zarr (installed) consolidates the metadata of what it writes; labels added afterwards
  (with ome-zarr-py, as a segmentation step does) are missing from the consolidated metadata.
* iohub is not installed here: :func:`write_iohub_plate` writes with zarr directly the layout
  and metadata iohub's ``open_ome_zarr(..., layout="hcs")`` writes (NGFF 0.4 on Zarr v2; axes
  named ``T, C, Z, Y, X`` in upper case with iohub's types and units; arrays ``"0"`` of shape
  TCZYX chunked one ZYX stack per chunk, Blosc zstd level 1 with bit shuffle, ``/`` chunk keys,
  fill value 0; label images ``TZYX``), following iohub's ``iohub/ngff/nodes.py``.
* Images with axes in other orders (CZYX, ZYX, YX, YXC) read in canonical order.
"""

import duckdb
import ngff_zarr
import numpy as np
import pytest
import zarr
from numcodecs import Blosc
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_labels

from gradcamo.data.read import discover_images, open_image
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.errors import InputError
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.regions import plan_layout, read_region
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D

IOHUB_AXES = [{"name": "T", "type": "time", "unit": "second"}, {"name": "C", "type": "channel"},
              *({"name": a, "type": "space", "unit": "micrometer"} for a in "ZYX")]


@pytest.fixture(scope="module")
def cells():
    return make_cells((40, 36), 5, n_channels=3, radius=5, seed=21)


def read_rows(output):
    return duckdb.sql(f"select * from read_parquet('{output}/*.parquet') order by all").df()


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_zarr_store_with_labels_added_after_consolidation(tmp_path, cells, model_2d, version):
    image, labels = cells
    path = tmp_path / "nz.zarr"
    multiscales = ngff_zarr.to_multiscales(ngff_zarr.to_ngff_image(image, dims=["c", "y", "x"]), scale_factors=[])
    ngff_zarr.to_ngff_zarr(str(path), multiscales, version=version)
    group = zarr.open_group(str(path), mode="a", use_consolidated=False)
    write_labels(labels, group, name="cells", axes=["y", "x"], fmt=format_from_version(version), scale_factors=[],
                 scaler=None)
    consolidated = zarr.open_group(str(path), mode="r")  # what a reader trusting the consolidated metadata sees
    assert "labels" not in consolidated

    (ref,) = discover_images(path)
    source = open_image(ref)
    assert source.label_name == "cells"
    np.testing.assert_array_equal(source.labels[...], labels)
    score([path], model_2d, tmp_path / "scores", target="all", workers=1, threads=1)
    assert_matches(read_rows(tmp_path / "scores"), reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2]))


def _iohub_array(group, name, data):
    """An array as iohub creates it (Zarr v2)."""
    array = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=(1,) * (data.ndim - 3) + data.shape[-3:],
        compressors=Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE), fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    array[...] = data


def _iohub_multiscales(axes, ndim):
    return [{"version": "0.4", "axes": axes, "name": "0",
             "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * ndim}]}]}]


def write_iohub_plate(path, fields, *, label_name="nuclei"):
    """An HCS plate as iohub writes it: ``{(row, column): [(image CZYX, labels ZYX), ...]}``."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    rows = sorted({r for r, _ in fields})
    columns = sorted({str(c) for _, c in fields}, key=int)
    root.attrs["plate"] = {
        "version": "0.4", "name": path.stem, "acquisitions": [{"id": 0}], "field_count": max(map(len, fields.values())),
        "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
        "wells": [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(str(c))}
                  for r, c in fields],
    }
    for (row, column), images in fields.items():
        well = root.require_group(f"{row}/{column}")
        well.attrs["well"] = {"images": [{"path": str(i)} for i in range(len(images))], "version": "0.4"}
        for index, (image, labels) in enumerate(images):
            position = well.require_group(str(index))
            position.attrs.update({
                "multiscales": _iohub_multiscales(IOHUB_AXES, 5),
                "omero": {"version": "0.4", "id": 0, "name": str(index),
                          "channels": [{"label": f"ch{c}", "active": True, "color": "FFFFFF", "coefficient": 1.0,
                                        "family": "linear", "inverted": False,
                                        "window": {"start": 0, "end": 65535, "min": 0, "max": 65535}}
                                       for c in range(len(image))],
                          "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color", "projection": "normal"}},
            })
            _iohub_array(position, "0", image[None])
            label_group = position.require_group("labels")
            label_group.attrs["labels"] = [label_name]
            label = label_group.require_group(label_name)
            label.attrs.update({"multiscales": _iohub_multiscales([IOHUB_AXES[0], *IOHUB_AXES[2:]], 4),
                                "image-label": {"version": "0.4", "colors": [], "properties": []}})
            _iohub_array(label, "0", labels[None])
    return path


def test_iohub_plate_tczyx_upper_case(tmp_path, cells, model_2d):
    image, labels = cells
    second = make_cells((40, 36), 4, n_channels=3, radius=5, seed=22)
    fields = {("A", 1): [(image[:, None], labels[None])], ("B", 2): [(second[0][:, None], second[1][None])]}
    path = write_iohub_plate(tmp_path / "iohub.zarr", fields)
    refs = discover_images(path)
    assert [(r.plate, r.well, r.site) for r in refs] == [("iohub", "A01", 0), ("iohub", "B02", 0)]
    source = open_image(refs[0])
    assert source.axes == ("t", "c", "z", "y", "x") and source.label_axes == ("t", "z", "y", "x")

    score([path], model_2d, tmp_path / "scores", target="all", block_shape=(20, 18), workers=1, threads=1)
    frame = read_rows(tmp_path / "scores")
    assert_matches(frame[frame.Metadata_Well == "A01"], reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2]))
    assert_matches(frame[frame.Metadata_Well == "B02"], reference_rows(model_2d, *second, CROP_2D, [0, 1, 2]))


def _write_with_axes(path, image, labels, axes):
    """A 0.4 image group whose level 0 has ``axes`` (a string; ``c`` absent: one channel)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    canonical = "czyx" if image.ndim == 4 else "cyx"
    data = image if "c" in axes else image[0]
    data = np.transpose(data, [(canonical if "c" in axes else canonical[1:]).index(a) for a in axes])
    root.attrs["multiscales"] = _iohub_multiscales([{"name": a.upper() if i % 2 else a} for i, a in enumerate(axes)],
                                                   len(axes))
    root.create_array("0", data=data)
    label_axes = [a for a in axes if a != "c"]
    label = root.require_group("labels/cells")
    root["labels"].attrs["labels"] = ["cells"]
    label.attrs["multiscales"] = _iohub_multiscales([{"name": a} for a in label_axes], len(label_axes))
    label.create_array("0", data=np.transpose(labels, [canonical[1:].index(a) for a in label_axes]))
    return path


@pytest.mark.parametrize("axes", ["tczyx", "czyx", "zyx", "yx", "yxc", "xzcy"])
def test_axes_in_any_order_and_case_read_canonically(tmp_path, axes):
    spatial = (3, 20, 16) if "z" in axes else (20, 16)
    image, labels = make_cells(spatial, 3, n_channels=2, radius=4, seed=5)
    if "t" in axes:
        image = image[:, None]
    path = _write_with_axes(tmp_path / "a.zarr", image[:, 0] if "t" in axes else image, labels, axes.replace("t", ""))
    if "t" in axes:  # a leading t of size 1
        path = _write_with_axes(tmp_path / "a.zarr", image[:, 0], labels, "czyx" if "z" in axes else "cyx")
    source = open_image(discover_images(path)[0])
    n_channels = 2 if "c" in axes else 1
    layout = plan_layout(source, spatial_dims=len(spatial), n_channels=n_channels)
    region = tuple(slice(2, n - 1) for n in spatial)
    expected = (image[:, 0] if "t" in axes else image)[:n_channels][(slice(None),) + region]
    got = read_region(source.image, layout.image_axes, layout.spatial_axes, region, channels=layout.channels)
    np.testing.assert_array_equal(got, expected)
    got_labels = read_region(source.labels, layout.label_axes, layout.spatial_axes, region)
    np.testing.assert_array_equal(got_labels, labels[region])


@pytest.mark.parametrize("channels", [(0, 1, 2), (2, 0), (1,)])
def test_read_region_takes_the_chosen_channels_in_order(tmp_path, channels):
    """Every channel in order comes back as read (no copy); a subset or another order is picked."""
    image, labels = make_cells((20, 16), 3, n_channels=3, radius=4, seed=6)
    source = open_image(discover_images(_write_with_axes(tmp_path / "a.zarr", image, labels, "cyx"))[0])
    layout = plan_layout(source, spatial_dims=2, n_channels=len(channels), channels=list(channels))
    region = (slice(2, 19), slice(1, 15))
    got = read_region(source.image, layout.image_axes, layout.spatial_axes, region, channels=layout.channels)
    np.testing.assert_array_equal(got, image[list(channels)][(slice(None),) + region])


def test_other_ngff_versions_are_refused_by_name(tmp_path, cells):
    path = write_image_store(tmp_path / "old.zarr", *cells, ngff_version="0.4")
    group = zarr.open_group(str(path), mode="a")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["version"] = "0.3"
    multiscales[0]["axes"] = ["c", "y", "x"]  # 0.3 names axes by strings
    group.attrs["multiscales"] = multiscales
    with pytest.raises(InputError, match=r"old.zarr: OME-Zarr \(NGFF\) version 0.3 is not read; gradcamo reads "
                                         r"0.4 and 0.5"):
        open_image(discover_images(path)[0])


def test_repeated_and_unknown_axes_are_refused(tmp_path, cells):
    image, labels = cells
    path = _write_with_axes(tmp_path / "a.zarr", image, labels, "cyx")
    group = zarr.open_group(str(path), mode="a")
    group.attrs["multiscales"] = _iohub_multiscales([{"name": "C"}, {"name": "y"}, {"name": "Y"}], 3)
    with pytest.raises(InputError, match=r"axis names \('c', 'y', 'y'\) repeat one"):
        open_image(discover_images(path)[0])
    group.attrs["multiscales"] = _iohub_multiscales([{"name": "q"}, {"name": "y"}, {"name": "x"}], 3)
    with pytest.raises(InputError, match=r"axes \{'q': 3\} are not read"):
        open_image(discover_images(path)[0])
