"""Image chunks must exist: a chunk file deleted from a store written by ome-zarr-py fails its
work unit by name (never zeros), ``--missing-chunks zeros`` reads it as the fill value counted and
flagged, ``inspect --check`` lists it; absent label chunks are background. Remote stores (an HTTP
404, an S3 NoSuchKey) are tested in tests/data/test_remote.py."""

import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import zarr

from gradcamo.cli import main
from gradcamo.data.chunks import MissingChunkError, chunks_read_as_fill, find_missing_chunks
from gradcamo.data.read import discover_images, open_image
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.regions import ChunkCache
from gradcamo.scorer.sink import read_scores
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D

KEY = ["Metadata_Image", "Metadata_ObjectNumber", "target_class"]
WELLS = (("A", 1), ("A", 2), ("B", 1), ("B", 2))
GONE = "A/2/0/s0/c/1/0/1"
"""The image chunk deleted: field A/2/0, channel 1, y 0:24, x 24:48."""
FAILED = ("failed: plate.zarr/A/2/0 (whole image): MissingChunkError: plate.zarr/A/2/0/s0 chunk c/1/0/1 is missing; "
          "the store is incomplete (copy it again), or pass --missing-chunks zeros if it is sparse on purpose")


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    fields = {well: [make_cells((48, 48), 8, n_channels=3, radius=5, seed=5 * well[1] + ord(well[0]))]
              for well in WELLS}
    return write_plate(tmp_path_factory.mktemp("plate") / "plate.zarr", fields, name="P", chunks=(24, 24))


def _argv(store, model, output, *extra):
    return ["score", str(store), "-m", str(model), "-o", str(output), "--target", "all", "-q", *extra]


def _rows(output):
    return read_scores(output).to_pandas().sort_values(KEY).reset_index(drop=True)


def _same(rows, expected, *, exact=True):
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), expected.reset_index(drop=True), check_exact=exact)


@pytest.fixture(scope="module")
def intact_rows(plate, model_2d, tmp_path_factory):
    output = tmp_path_factory.mktemp("intact") / "scores"
    assert main(_argv(plate, model_2d, output)) == 0
    return _rows(output)


@pytest.fixture
def incomplete(plate, tmp_path):
    """A copy of the plate whose chunk :data:`GONE` was not copied."""
    copy = shutil.copytree(plate, tmp_path / "copy" / "plate.zarr")
    (copy / GONE).unlink()
    return copy


def test_a_missing_image_chunk_fails_its_unit_by_name_and_a_rerun_retries_it(incomplete, plate, model_2d,
                                                                             intact_rows, tmp_path, capsys):
    output = tmp_path / "scores"
    assert main(_argv(incomplete, model_2d, output)) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == FAILED and err[1].startswith("error: 1 of 4 work units failed")
    rows = _rows(output)
    assert not rows.missing_chunks.any()
    _same(rows, intact_rows[intact_rows.Metadata_Image != "plate.zarr/A/2/0"])
    manifest = json.loads((output / "_gradcamo.json").read_text())
    assert [f["cause"] for f in manifest["failures"]] == [FAILED.split("(whole image): ")[1]]
    assert "missing_chunks" not in manifest
    shutil.copyfile(plate / GONE, incomplete / GONE)  # the copy completed
    assert main(_argv(incomplete, model_2d, output)) == 0
    assert "(3 of 4 work units resumed" in capsys.readouterr().out
    _same(_rows(output), intact_rows)


def test_zeros_reads_it_as_the_fill_value_counted_and_flagged(incomplete, model_2d, intact_rows, tmp_path,
                                                              capsys):
    """Other fields' rows are the intact run's; the field's rows equal those of a store where the
    chunk holds zeros, and are flagged; the count is in the last line, the manifest and ``summary``."""
    output = tmp_path / "scores"
    assert main(_argv(incomplete, model_2d, output)) == 3  # as a user would: it fails first
    capsys.readouterr()
    assert main(_argv(incomplete, model_2d, output, "--missing-chunks", "zeros")) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "(3 of 4 work units resumed" in last
    assert last.endswith("; 1 missing image chunk read as zeros (--missing-chunks zeros) in 1 image "
                         "(plate.zarr/A/2/0: 1); the rows read with them have missing_chunks = true")
    manifest = json.loads((output / "_gradcamo.json").read_text())
    assert manifest["missing_chunks"] == {"plate.zarr/A/2/0": [f"plate.zarr/{GONE}"]}
    assert manifest["failures"] == []
    rows = _rows(output)
    field = rows.Metadata_Image == "plate.zarr/A/2/0"
    assert rows.missing_chunks.tolist() == field.tolist()
    _same(rows[~field], intact_rows[intact_rows.Metadata_Image != "plate.zarr/A/2/0"])

    zeroed = shutil.copytree(incomplete, tmp_path / "zeroed" / "plate.zarr")
    with zarr.config.set({"array.write_empty_chunks": True}):
        array = zarr.open_array(str(zeroed / "A/2/0/s0"), mode="r+")
        array[1, :24, 24:] = 0  # stored zeros, where the fill value (0) was read
    assert (zeroed / GONE).exists() and array.fill_value == 0
    expected = _rows_of_field(zeroed, model_2d, tmp_path / "zeroed-scores")
    _same(rows[field].drop(columns="missing_chunks"), expected.drop(columns="missing_chunks"))
    assert rows[field].grad_camo.tolist() != intact_rows[intact_rows.Metadata_Image == "plate.zarr/A/2/0"].grad_camo.tolist()

    assert main(["summary", str(output)]) == 0
    assert "1 missing image chunk read as zeros" in " ".join(capsys.readouterr().err.split())

    # cams reads the image recorded under missing_chunks as it was scored (its score check holds) ...
    assert main(["cams", str(output), "-o", str(tmp_path / "cams"), "--where", "missing_chunks", "--limit", "2",
                 "-q"]) == 0
    # ... and any other image strictly
    for chunk in (incomplete / "A/1/0/s0/c/0").glob("*/*"):
        chunk.unlink()
    assert main(["cams", str(output), "-o", str(tmp_path / "cams-a01"), "--where",
                 "Metadata_Image = 'plate.zarr/A/1/0'", "--limit", "1", "-q"]) == 2
    assert "plate.zarr/A/1/0/s0 chunk c/0/" in capsys.readouterr().err


def _rows_of_field(store, model, output):
    assert main(_argv(store, model, output)) == 0
    rows = _rows(output)
    return rows[rows.Metadata_Image == "plate.zarr/A/2/0"]


def test_inspect_check_lists_every_missing_image_chunk(incomplete, plate, capsys):
    (incomplete / "B/1/0/s0/c/0/0/0").unlink()
    (incomplete / "B/1/0/labels/cells/s0/c/1/1").unlink()  # a label chunk: background, not listed
    assert main(["inspect", str(incomplete), "--check", "--json"]) == 3
    captured = capsys.readouterr()
    described = {image["image"]: image["missing_chunks"] for image in json.loads(captured.out)}
    assert described == {"plate.zarr/A/1/0": [], "plate.zarr/A/2/0": [f"plate.zarr/{GONE}"],
                         "plate.zarr/B/1/0": ["plate.zarr/B/1/0/s0/c/0/0/0"], "plate.zarr/B/2/0": []}
    assert captured.err.splitlines() == [
        f"missing: plate.zarr/{GONE}", "missing: plate.zarr/B/1/0/s0/c/0/0/0",
        "error: 2 image chunks missing in 2 images; copy the store again (score fails their work units), or score "
        "with --missing-chunks zeros if it is sparse on purpose",
    ]
    assert main(["inspect", str(plate), "--check"]) == 0
    assert capsys.readouterr().err == "checked: no image chunk is missing in 4 images\n"


def test_an_absent_all_background_label_chunk_is_background(tmp_path, model_2d):
    image, labels = make_cells((48, 48), 6, n_channels=3, radius=5, seed=4)
    labels[24:, 24:] = 0  # zarr does not write this chunk: it equals the fill value
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(24, 24))
    assert not (store / "labels/cells/s0/c/1/1").exists() and (store / "labels/cells/s0/c/0/1").exists()
    assert (store / "s0/c/0/1/1").exists()
    assert main(_argv(store, model_2d, tmp_path / "scores")) == 0
    assert_matches(read_scores(tmp_path / "scores").to_pandas(), reference_rows(model_2d, image, labels, CROP_2D,
                                                                                [0, 1, 2]))


def test_a_blocked_image_flags_the_blocks_that_read_the_missing_chunk(tmp_path, model_2d):
    """Split in blocks, the rows of the blocks whose read (block and halo) met the chunk are flagged."""
    image, labels = make_cells((96, 96), 24, n_channels=3, radius=5, seed=9)
    store = write_image_store(tmp_path / "big.zarr", image, labels, chunks=(16, 16))
    (store / "s0/c/0/5/5").unlink()  # y 80:96, x 80:96: only the block [48:96, 48:96] reads it
    summary = score([store], model_2d, tmp_path / "scores", block_shape=(48, 48), missing_chunks="zeros")
    assert summary.units == 4 and summary.missing_chunks == {"big.zarr": ["big.zarr/s0/c/0/5/5"]}
    rows = read_scores(tmp_path / "scores").to_pandas()
    in_last_block = (np.floor(rows.centroid_y + 0.5) >= 48) & (np.floor(rows.centroid_x + 0.5) >= 48)
    assert in_last_block.any() and (~in_last_block).any()
    assert rows.missing_chunks.tolist() == in_last_block.tolist()


def test_a_chunk_read_as_zeros_served_from_the_cache_still_flags_the_unit(tmp_path, model_2d):
    """Each Dask task unpickles its own copy of the image; the worker's chunk cache serves one copy's
    read to the next unit, and says that the chunk was read as zeros. Two blocks' halos read it here."""
    image, labels = make_cells((96, 96), 24, n_channels=3, radius=5, seed=9)
    store = write_image_store(tmp_path / "big.zarr", image, labels, chunks=(16, 16))
    (store / "s0/c/0/2/2").unlink()  # y 32:48, x 32:48: in the block [0:48, 0:48] and the halos of the 3 others
    summary = score([store], model_2d, tmp_path / "scores", block_shape=(48, 48), missing_chunks="zeros",
                    workers=1, threads=1)
    assert summary.units == 4 and summary.missing_chunks == {"big.zarr": ["big.zarr/s0/c/0/2/2"]}
    assert read_scores(tmp_path / "scores").to_pandas().missing_chunks.all()

    source = open_image(discover_images(store)[0], missing_chunks="zeros")
    first, second = (pickle.loads(pickle.dumps(source)) for _ in range(2))  # what two tasks unpickle
    cache = ChunkCache(max_bytes=10**8)
    index = (slice(None), slice(32, 64), slice(32, 64))
    np.testing.assert_array_equal(cache.read(first.image, index)[0, :16, :16], 0)
    reads = cache.reads
    assert chunks_read_as_fill(second.image, index) == []  # it read nothing yet
    cache.read(second.image, index)
    assert cache.reads == reads  # served from the cache ...
    assert chunks_read_as_fill(second.image, index) == ["big.zarr/s0/c/0/2/2"]  # ... and noted as read as zeros
    assert chunks_read_as_fill(source.image, index) == []  # the copies' notes are their own


@pytest.mark.parametrize("ngff_version, key", [("0.4", "1/0/1"), ("0.5", "c/1/0/1")])
def test_every_ngff_version_is_strict(tmp_path, ngff_version, key):
    image, labels = make_cells((48, 48), 4, n_channels=3, radius=5, seed=2)
    store = write_image_store(tmp_path / "img.zarr", image, labels, chunks=(24, 24), ngff_version=ngff_version)
    (store / "s0" / key).unlink()
    with pytest.raises(MissingChunkError, match=f"^img.zarr/s0 chunk {key} is missing; "):
        open_image(discover_images(store)[0]).image[...]
    zeros = open_image(discover_images(store)[0], missing_chunks="zeros")
    data = zeros.image[...]
    assert (data[1, :24, 24:] == 0).all() and (data[0] == image[0]).all()
    assert chunks_read_as_fill(zeros.image, (slice(None), slice(0, 24), slice(0, 48))) == [f"img.zarr/s0/{key}"]
    assert chunks_read_as_fill(zeros.image, (slice(None), slice(24, 48), slice(0, 48))) == []
    assert find_missing_chunks(zeros.image) == [key]


def test_sharded_arrays_a_missing_shard_is_missing_an_empty_inner_chunk_is_not(tmp_path):
    """A shard is one object: missing, it is a missing chunk. An inner chunk its shard's index marks
    empty is how zarr stores a chunk equal to the fill value: it reads as that value."""
    image, labels = make_cells((48, 48), 4, n_channels=3, radius=5, seed=3)
    image[:, :12, :12] = 0  # inner chunk (c, 0, 0) of every shard (c, 0, 0): left out of the shard
    store = write_image_store(tmp_path / "img.zarr", image, labels, chunks=(24, 24))
    array = zarr.create_array(str(store), name="s0", shape=image.shape, dtype=image.dtype, chunks=(1, 12, 12),
                              shards=(1, 24, 24), fill_value=0, overwrite=True)
    array[...] = image
    assert sorted(p.name for p in (store / "s0/c/0").glob("*/*")) == ["0", "0", "1", "1"]
    source = open_image(discover_images(store)[0])
    assert (source.image[...] == image).all()
    (store / "s0/c/2/1/0").unlink()
    assert find_missing_chunks(source.image) == ["c/2/1/0"]
    with pytest.raises(MissingChunkError, match="^img.zarr/s0 chunk c/2/1/0 is missing"):
        source.image[2, 30:32, 5:7]
    assert (source.image[:2] == image[:2]).all()


def test_an_unknown_mode_is_one_line_exit_2_and_writes_nothing(plate, model_2d, tmp_path, capsys):
    assert main(_argv(plate, model_2d, tmp_path / "scores", "--missing-chunks", "maybe")) == 2
    assert capsys.readouterr().err == "error: --missing-chunks: expected one of error, zeros, got 'maybe'\n"
    assert not (tmp_path / "scores").exists()
