"""Synthetic OME-Zarr stores: written with ome-zarr-py, read back by ome-zarr-py and by gradcamo.data."""


import re

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from gradcamo.data.read import discover_images, open_image
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.errors import InputError


@pytest.fixture(scope="module")
def cells_2d():
    return make_cells((48, 40), 6, n_channels=3, radius=5, seed=3)


@pytest.mark.parametrize("spatial_shape", [(48, 40), (6, 40, 32)])
def test_make_cells_is_seeded_and_labels_each_cell(spatial_shape):
    image, labels = make_cells(spatial_shape, 5, n_channels=2, radius=5, seed=11)
    again, again_labels = make_cells(spatial_shape, 5, n_channels=2, radius=5, seed=11)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert image.shape == (2, *spatial_shape) and image.dtype == np.uint16
    ids = np.unique(labels)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids)))
    assert 3 <= len(ids) - 1 <= 5
    inside = image[0][labels > 0].mean()
    outside = image[0][labels == 0].mean()
    assert inside > 2 * outside


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
def test_image_store_reads_back_with_ome_zarr_py(tmp_path, cells_2d, ngff_version):
    image, labels = cells_2d
    path = write_image_store(tmp_path / "img.zarr", image, labels, chunks=(16, 16), ngff_version=ngff_version)
    image_node = next(iter(Reader(parse_url(str(path)))()))
    label_node = next(iter(Reader(parse_url(str(path / "labels" / "cells")))()))
    np.testing.assert_array_equal(np.asarray(image_node.data[0]), image)
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)

    (ref,) = discover_images(path)
    source = open_image(ref)
    assert (ref.name, ref.plate, ref.well, ref.site) == ("img.zarr", None, None, 0)
    assert source.axes == ("c", "y", "x") and source.spatial_axes == ("y", "x")
    np.testing.assert_array_equal(source.image[...], image)
    np.testing.assert_array_equal(source.labels[...], labels)
    assert source.labels.chunks == (16, 16)


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
def test_plate_keys(tmp_path, cells_2d, ngff_version):
    pair = cells_2d
    path = write_plate(
        tmp_path / "screen.zarr", {("B", 3): [pair, pair], ("A", 12): [pair]}, name="P7", ngff_version=ngff_version
    )
    refs = discover_images(path)
    keys = [(r.plate, r.well, r.site, r.name) for r in refs]
    assert sorted(keys) == [
        ("P7", "A12", 0, "screen.zarr/A/12/0"),
        ("P7", "B03", 0, "screen.zarr/B/3/0"),
        ("P7", "B03", 1, "screen.zarr/B/3/1"),
    ]
    assert all(open_image(r).labels.shape == pair[1].shape for r in refs)


def test_plate_without_name_uses_the_store_stem(tmp_path, cells_2d):
    path = write_plate(tmp_path / "plate42.zarr", {("A", 1): [cells_2d]})
    attributes = zarr.open_group(str(path), mode="a")
    ome = dict(attributes.attrs["ome"])
    del ome["plate"]["name"]
    attributes.attrs["ome"] = ome
    assert discover_images(path)[0].plate == "plate42"


def _edit_attrs(group, **changes):
    attributes = dict(group.attrs)
    metadata = attributes.get("ome", attributes)
    metadata.update(changes)
    group.attrs.put(attributes)


def _store_with(tmp_path, cells_2d, mutate):
    path = write_image_store(tmp_path / "img.zarr", *cells_2d)
    mutate(zarr.open_group(str(path), mode="a"), tmp_path)
    return path


def _second_labels(group, tmp_path):
    labels = group["labels"]
    _edit_attrs(labels, labels=["cells", "nuclei"])
    labels.create_group("nuclei").attrs.put(dict(labels["cells"].attrs))
    labels["nuclei"].create_array("s0", data=group["labels/cells/s0"][...])


BAD_STORES = [
    ("no labels", lambda g, t: g.__delitem__("labels"), r"img.zarr: no label images"),
    ("several labels", _second_labels, r"several label images \['cells', 'nuclei'\]; choose one with --labels"),
    ("missing level 0", lambda g, t: g.__delitem__("s0"), r"img.zarr: level 0 array 's0' is missing"),
    ("escaping dataset path", lambda g, t: _edit_attrs(g, multiscales=[{**dict(g.attrs)["ome"]["multiscales"][0], "datasets": [{"path": "../x"}]}]), r"metadata path '../x' leaves the store"),
    ("float labels", lambda g, t: (g["labels/cells"].__delitem__("s0"), g["labels/cells"].create_array("s0", data=np.zeros((48, 40), np.float32))), r"labels/cells has dtype float32; label images must be integers"),
    ("shape mismatch", lambda g, t: (g["labels/cells"].__delitem__("s0"), g["labels/cells"].create_array("s0", data=np.zeros((48, 39), np.uint32))), r"image spatial shape \{'y': 48, 'x': 40\} != labels/cells shape \{'y': 48, 'x': 39\}"),
    ("bool image", lambda g, t: (g.__delitem__("s0"), g.create_array("s0", data=np.zeros((3, 48, 40), bool))), r"img.zarr: the image has dtype bool; expected intensities"),
    ("truncated group metadata", lambda g, t: _cut(t / "img.zarr/zarr.json", 40), r"img.zarr: unreadable metadata \(JSONDecodeError: .*\); the store is damaged, truncated"),
    ("empty array metadata", lambda g, t: _cut(t / "img.zarr/s0/zarr.json", 0), r"img.zarr: unreadable metadata \(JSONDecodeError"),
    ("label metadata not JSON", lambda g, t: (t / "img.zarr/labels/cells/s0/zarr.json").write_bytes(b"\x89garbage\xff"), r"img.zarr: unreadable metadata \("),
]


def _cut(path, size):
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("case", BAD_STORES, ids=[c[0] for c in BAD_STORES])
def test_bad_stores_are_named(tmp_path, cells_2d, case):
    _, mutate, pattern = case
    path = _store_with(tmp_path, cells_2d, mutate)
    with pytest.raises(InputError, match=pattern):
        open_image(discover_images(path)[0])


def test_missing_and_non_ome_inputs(tmp_path):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}/absent.zarr: no such file or directory")):
        discover_images(tmp_path / "absent.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("x", data=np.zeros(3))
    with pytest.raises(InputError, match=r"plain.zarr: not OME-Zarr \(no 'multiscales' or 'plate' metadata\)"):
        discover_images(tmp_path / "plain.zarr")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(InputError, match=r"file.txt: OME-Zarr group not found or not a Zarr group"):
        discover_images(tmp_path / "file.txt")
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(4, 4), dtype="uint16")
    with pytest.raises(InputError, match=r"array.zarr: is a plain Zarr array; expected an OME-Zarr group"):
        discover_images(tmp_path / "array.zarr")


def test_plate_well_paths_cannot_escape(tmp_path, cells_2d):
    path = write_plate(tmp_path / "p.zarr", {("A", 1): [cells_2d]})
    group = zarr.open_group(str(path), mode="a")
    ome = dict(group.attrs["ome"])
    ome["plate"]["wells"][0]["path"] = "../../etc"
    group.attrs["ome"] = ome
    with pytest.raises(InputError, match=r"metadata path '../../etc' leaves the store"):
        discover_images(path)
