"""Read a local, unsharded Zarr v3 array's chunks straight from their files, in the calling thread.

zarr-python reads every chunk through its asyncio event loop and a pool of threads; for a
1080x1080 field of 5 uint16 channels and its labels (24 chunks of 540x540) that machinery cost
about as much CPU as decompressing the chunks (benchmarks/README.md, issue #25). For the usual
layout of an HCS image on local disk (a regular chunk grid, ``bytes`` then one of ``zstd``,
``blosc``, ``gzip``, or no compression) :func:`read_array` reads the chunk files and decompresses
them with the numcodecs codecs zarr itself uses: the same bytes, the same array.

Anything else (another store, a codec chain, sharding, big-endian bytes, a chunk file that is
not there, a chunk of the wrong size) goes through zarr, which also decides what a missing
chunk means (:mod:`gradcamo.data.chunks`): the direct path never fills anything in.
"""

import itertools
import os
import sys

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.storage import LocalStore

from gradcamo.data.chunks import ChunkCheckingStore

_DECODERS = {ZstdCodec: numcodecs.Zstd, BloscCodec: numcodecs.Blosc, GzipCodec: numcodecs.GZip}
"""zarr v3 compressors and the numcodecs codec each decodes with (as zarr does); decoding reads
what it needs (level, shuffle, type size) from the compressed data itself."""


def _local_root(array):
    """The directory of ``array``'s chunks when its store is a local directory read without a fill
    policy (a plain ``LocalStore``, or one under a :class:`ChunkCheckingStore` that refuses missing
    chunks); else None."""
    store = array.store_path.store
    if isinstance(store, ChunkCheckingStore):
        if store.mode != "error":  # "zeros" keeps count of chunks read as the fill value: zarr's way
            return None
        store = store.inner
    if not isinstance(store, LocalStore):
        return None
    return os.path.join(str(store.root), array.store_path.path)


def _decoder(array):
    """A function ``compressed bytes -> bytes`` for ``array``'s chunks; None when its layout is not the usual one."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(metadata.chunk_grid, RegularChunkGrid):
        return None
    codecs = tuple(metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2 or sys.byteorder != "little":
        return None
    if array.dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != "little"):
        return None
    if array.dtype.kind not in "biuf" or array.dtype.byteorder == ">":
        return None
    if len(codecs) == 1:
        return bytes
    compressor = _DECODERS.get(type(codecs[1]))
    return None if compressor is None else compressor().decode


def read_chunks(array, index, chunk) -> np.ndarray:
    """``array[index]`` (step-1 slices and integers) assembled from whole chunks.

    ``chunk(position)`` gives the chunk at grid ``position`` as an ndarray of the chunk's shape
    (clipped at the array's end is fine: only the part inside ``index`` is copied).
    """
    bounds = [(i, i + 1) if isinstance(i, (int, np.integer)) else (i.start or 0, n if i.stop is None else i.stop)
              for i, n in zip(index, array.shape)]
    out = np.empty([b - a for a, b in bounds], dtype=array.dtype)
    grid = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for (a, b), c in zip(bounds, array.chunks)]
    for position in itertools.product(*grid):
        data = chunk(position)
        source, target = [], []
        for p, c, (a, b) in zip(position, array.chunks, bounds):
            low, high = max(a, p * c), min(b, (p + 1) * c)
            source.append(slice(low - p * c, high - p * c))
            target.append(slice(low - a, high - a))
        out[tuple(target)] = data[tuple(source)]
    return out[tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in index)]


class _NotDirect(Exception):
    """A chunk the direct path does not read (absent, or not of the chunk's size): zarr reads the region."""


def _direct_chunk(root, array, decode):
    size = int(np.prod(array.chunks)) * array.dtype.itemsize

    def chunk(position):
        try:
            with open(os.path.join(root, array.metadata.encode_chunk_key(position)), "rb") as handle:
                raw = decode(handle.read())
        except FileNotFoundError:
            raise _NotDirect from None
        if len(memoryview(raw).cast("B")) != size:
            raise _NotDirect
        return np.frombuffer(raw, dtype=array.dtype).reshape(array.chunks)
    return chunk


def reads_directly(array) -> bool:
    """Whether :func:`read_array` reads ``array``'s chunk files itself (else zarr reads it)."""
    return _local_root(array) is not None and _decoder(array) is not None


def read_array(array, index) -> np.ndarray:
    """``array[index]`` as numpy (``index``: step-1 slices and integers, one per axis): read from the
    chunk files directly where the layout allows (see the module), else by zarr."""
    root, decode = _local_root(array), _decoder(array)
    if root is not None and decode is not None:
        try:
            return read_chunks(array, index, _direct_chunk(root, array, decode))
        except _NotDirect:
            pass
    return np.asarray(array[index])


__all__ = ["read_array", "read_chunks", "reads_directly"]
