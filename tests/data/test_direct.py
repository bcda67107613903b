"""Chunks read straight from local files give exactly what zarr gives; other layouts, and missing
chunks, are zarr's to read (gradcamo.data.direct)."""

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, TransposeCodec, ZstdCodec

from gradcamo.data.chunks import MissingChunkError, strict_array
from gradcamo.data.direct import read_array, read_chunks, reads_directly

SHAPE, CHUNKS = (3, 50, 45), (1, 16, 20)  # edge chunks on both spatial axes
REGIONS = [
    (slice(0, 3), slice(0, 50), slice(0, 45)),
    (1, slice(5, 37), slice(19, 41)),
    (slice(1, 3), slice(48, 50), slice(0, 1)),
    (2, 49, slice(40, 45)),
    (slice(0, 3), slice(10, 10), slice(0, 45)),  # empty
]


def _array(path, dtype, **options):
    rng = np.random.default_rng(0)
    data = (rng.random(SHAPE) * 1000).astype(dtype)
    array = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype=dtype, **options)
    array[...] = data
    return zarr.open_array(str(path), mode="r"), data


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compressors", [ZstdCodec(level=3), BloscCodec(cname="lz4", shuffle="bitshuffle"),
                                         GzipCodec(level=1), None], ids=["zstd", "blosc", "gzip", "none"])
def test_direct_reads_equal_zarr(tmp_path, dtype, compressors):
    array, data = _array(tmp_path / "a.zarr", dtype, compressors=compressors)
    assert reads_directly(array)
    for region in REGIONS:
        got = read_array(array, region)
        assert got.dtype == array.dtype and np.array_equal(got, np.asarray(array[region]))
        assert np.array_equal(got, data[region])


def test_other_layouts_go_through_zarr(tmp_path):
    layouts = {
        "sharded": {"shards": (1, 32, 40)},
        "transposed": {"serializer": BytesCodec(), "filters": [TransposeCodec(order=(0, 2, 1))]},
        "big-endian": {"serializer": BytesCodec(endian="big")},
    }
    for name, options in layouts.items():
        array, data = _array(tmp_path / f"{name}.zarr", np.uint16, **options)
        assert not reads_directly(array), name
        assert np.array_equal(read_array(array, REGIONS[1]), data[REGIONS[1]])
    array, data = _array(tmp_path / "v2.zarr", np.uint16, zarr_format=2)
    assert not reads_directly(array) and np.array_equal(read_array(array, REGIONS[0]), data)
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype=np.uint16)
    memory[...] = data
    assert not reads_directly(memory) and np.array_equal(read_array(memory, REGIONS[0]), data)


def test_a_missing_chunk_is_zarrs_to_read(tmp_path):
    array, data = _array(tmp_path / "a.zarr", np.uint16, fill_value=7)
    os.remove(tmp_path / "a.zarr" / "c" / "1" / "0" / "1")
    expected = data.copy()
    expected[1, 0:16, 20:40] = 7  # a plain local store: the fill value, as zarr reads it
    assert np.array_equal(read_array(array, REGIONS[0]), expected)
    strict = strict_array(array, "a.zarr")  # an image: a missing chunk is refused by name
    assert reads_directly(strict)
    with pytest.raises(MissingChunkError, match="c/1/0/1"):
        read_array(strict, REGIONS[0])
    assert np.array_equal(read_array(strict, (0, slice(0, 50), slice(0, 45))), data[0])  # other chunks: direct
    assert not reads_directly(strict_array(array, "a.zarr", mode="zeros"))  # zeros: zarr counts what it fills


def test_read_chunks_assembles_any_region():
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype=np.int32)
    data = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    array[...] = data

    def chunk(position):
        return data[tuple(slice(p * c, (p + 1) * c) for p, c in zip(position, CHUNKS))]

    for region in REGIONS:
        assert np.array_equal(read_chunks(array, region, chunk), data[region])
