"""Image chunks must exist: a chunk that the store does not have is an error, never zeros.

zarr reads a chunk the store does not hold as the array's fill value. For label images that
is right (zarr does not write chunks equal to the fill value, so an absent label chunk is
background); for an image it hides an incomplete copy or an object a server answers 404 for.
:func:`strict_array` puts a :class:`ChunkCheckingStore` under an image array: every chunk
read that finds nothing (a missing file, an HTTP 404, an S3 NoSuchKey: zarr's stores answer
those with ``None``) raises :class:`MissingChunkError` naming the store, the array and the
chunk key; in ``zeros`` mode it is read as the fill value and remembered by that store (each
opened image, and each copy of it a Dask task unpickles, remembers what it read), so that the unit
that read it can say so (:func:`chunks_read_as_fill`); a cache that serves the chunk to another
unit passes the note on (:func:`read_as_fill`, :func:`mark_read_as_fill`). Nothing is kept at
module level: the notes live as long as the opened image. The check costs nothing on the way: it
looks at what the read returned, it lists nothing.

Sharded arrays (Zarr v3 ``sharding_indexed``): a shard is one stored object, and a missing
shard is a missing chunk like any other. A chunk that its shard's index marks as empty is what
zarr writes for a chunk equal to the fill value, and reads as that value; it is not checked.

:func:`find_missing_chunks` lists every missing chunk of an array (``inspect --check``).
"""

import itertools
import threading

import zarr
from zarr.core.array import AsyncArray
from zarr.core.buffer import Buffer
from zarr.core.common import concurrent_map
from zarr.core.sync import sync
from zarr.storage import StorePath, WrapperStore

from gradcamo.errors import InputError

MODES = ("error", "zeros")
"""``--missing-chunks``: a missing image chunk fails its work unit, or reads as the fill value (counted)."""
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
CHECKS_IN_FLIGHT = 32
"""Chunks looked up at once by :func:`find_missing_chunks` where the store cannot be listed."""

class MissingChunkError(LookupError):
    """An image chunk is not in the store (an incomplete copy, an HTTP 404, an S3 NoSuchKey).

    ``location`` is ``store name/array path/chunk key`` (``plate.zarr/A/2/0/s0/c/0/1/0``).
    """

    def __init__(self, array_name, key):
        super().__init__(f"{array_name} chunk {key} is missing; the store is incomplete (copy it again), or "
                         "pass --missing-chunks zeros if it is sparse on purpose")
        self.array_name = array_name
        self.key = key
        self.location = f"{array_name}/{key}"

    def __reduce__(self):  # Dask ships it from worker to client
        return type(self), (self.array_name, self.key)


class ChunkCheckingStore(WrapperStore):
    """Wraps the store of one image array: a chunk read that finds nothing raises
    :class:`MissingChunkError` (``mode="error"``) or is remembered as read as the fill value
    (``mode="zeros"``).

    Parameters
    ----------
    store : zarr.abc.store.Store
    array_path : str
        The array's path in the store: keys under it that are not metadata are chunks.
    array_name : str
        How messages name the array: ``store name/array path``.
    mode : {"error", "zeros"}
    """

    def __init__(self, store, *, array_path, array_name, mode="error"):
        super().__init__(store)
        self.array_path = array_path
        self.array_name = array_name
        self.mode = check_mode(mode)
        self._forget()

    @property
    def inner(self):
        """The store this one checks the reads of."""
        return self._store

    def _forget(self) -> None:
        self._read_as_fill: set[str] = set()
        """Store keys of the chunks read through this wrapper as the fill value (``zeros`` mode)."""
        self._lock = threading.Lock()

    def __getstate__(self):
        """Pickled (shipped to a Dask task) without its notes: a copy remembers what it reads itself."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_read_as_fill", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._forget()

    def _with_store(self, store):
        wrapper = type(self)(store, array_path=self.array_path, array_name=self.array_name, mode=self.mode)
        wrapper._read_as_fill, wrapper._lock = self._read_as_fill, self._lock  # the same image: the same notes
        return wrapper

    def _chunk_key(self, key):
        """The chunk key relative to the array (``c/0/1/0``), or None when ``key`` is no chunk of it."""
        prefix = f"{self.array_path}/" if self.array_path else ""
        if not key.startswith(prefix):
            return None
        relative = key[len(prefix):]
        return None if relative.rsplit("/", 1)[-1] in METADATA_NAMES else relative

    def _checked(self, key, value):
        chunk = self._chunk_key(key)
        if chunk is None:
            return value
        if value is None:
            if self.mode == "error":
                raise MissingChunkError(self.array_name, chunk)
            self.mark_read_as_fill([key])
        elif self._read_as_fill:  # it is back (the copy was completed since)
            with self._lock:
                self._read_as_fill.discard(key)
        return value

    def mark_read_as_fill(self, keys) -> None:
        """Note store ``keys`` as read as the fill value (by this wrapper, or by a copy whose read a cache serves)."""
        with self._lock:
            self._read_as_fill.update(keys)

    def read_as_fill(self, keys) -> frozenset[str]:
        """Those of the store ``keys`` noted as read as the fill value."""
        with self._lock:
            return frozenset(self._read_as_fill.intersection(keys))

    async def get(self, key, prototype, byte_range=None) -> Buffer | None:
        return self._checked(key, await self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype, key_ranges) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        return [self._checked(key, value) for (key, _), value in zip(key_ranges, values)]


def check_mode(mode) -> str:
    """``mode`` if it is one of :data:`MODES`; else an ``InputError`` naming the choices."""
    if mode not in MODES:
        raise InputError(f"missing_chunks: expected one of {', '.join(MODES)}, got {mode!r}", argument="missing_chunks")
    return mode


def strict_array(array, array_name, mode="error") -> zarr.Array:
    """``array`` (opened, metadata read) over a :class:`ChunkCheckingStore`; nothing is read again."""
    store = ChunkCheckingStore(array.store_path.store, array_path=array.path, array_name=array_name, mode=mode)
    async_array = array.async_array
    return zarr.Array(AsyncArray(async_array.metadata, StorePath(store, array.path), async_array.config))


def storage_grid(array) -> tuple[int, ...]:
    """The number of stored objects (chunks, or shards when sharded) along each axis."""
    return tuple(-(-n // c) for n, c in zip(array.shape, array.shards or array.chunks))


def _stored_positions(array, index):
    """Grid positions of the stored objects that ``array[index]`` reads (``index``: ints and step-1 slices)."""
    ranges = []
    for i, n, c in zip(index, array.shape, array.shards or array.chunks):
        if isinstance(i, slice):
            start, stop = i.start or 0, n if i.stop is None else i.stop
            ranges.append(range(start // c, (stop - 1) // c + 1) if stop > start else range(0))
        else:
            ranges.append(range(int(i) // c, int(i) // c + 1))
    return itertools.product(*ranges)


def read_as_fill(array, index) -> frozenset[str]:
    """Store keys of the stored objects of ``array[index]`` that ``array`` (this opened image, or
    a copy marked by :func:`mark_read_as_fill`) read as the fill value; empty for an array not read
    in ``zeros`` mode (label images among them)."""
    store = array.store
    if not isinstance(store, ChunkCheckingStore) or store.mode != "zeros":
        return frozenset()
    prefix = f"{array.path}/" if array.path else ""
    return store.read_as_fill(prefix + array.metadata.encode_chunk_key(p) for p in _stored_positions(array, index))


def mark_read_as_fill(array, keys) -> None:
    """Note ``keys`` (from :func:`read_as_fill` on another copy of the same image) as read as the
    fill value by ``array``: a chunk cache serving a copy's read to another unit says so."""
    if keys and isinstance(array.store, ChunkCheckingStore):
        array.store.mark_read_as_fill(keys)


def chunks_read_as_fill(array, index) -> list[str]:
    """Chunks of ``array[index]`` that ``array`` read as the fill value (``zeros`` mode).

    Returns
    -------
    list of str
        ``store name/array path/chunk key``, sorted; empty for an array not read in ``zeros`` mode.
    """
    keys = read_as_fill(array, index)
    if not keys:
        return []
    prefix = f"{array.path}/" if array.path else ""
    return sorted(f"{array.store.array_name}/{key[len(prefix):]}" for key in keys)


async def _stored_keys(store, prefix):
    return {key async for key in store.list_prefix(prefix)}


async def _absent(store, keys):
    present = await concurrent_map([(key,) for key in keys], store.exists, CHECKS_IN_FLIGHT)
    return [key for key, here in zip(keys, present) if not here]


def find_missing_chunks(array, *, listable=True) -> list[str]:
    """Every chunk (or shard) of ``array`` that its store does not hold.

    Parameters
    ----------
    array : zarr.Array
    listable : bool
        List the array's keys once (local paths, object stores); else ask for each chunk
        (HTTP servers, which cannot be listed).

    Returns
    -------
    list of str
        Chunk keys relative to the array (``c/0/1/0``), in grid order.
    """
    store = array.store
    prefix = f"{array.path}/" if array.path else ""
    expected = [prefix + array.metadata.encode_chunk_key(p) for p in itertools.product(*map(range, storage_grid(array)))]
    if listable:
        stored = sync(_stored_keys(store, prefix))
        absent = [key for key in expected if key not in stored]
    else:
        absent = sync(_absent(store, expected))
    return [key[len(prefix):] for key in absent]


__all__ = ["MODES", "ChunkCheckingStore", "MissingChunkError", "check_mode", "chunks_read_as_fill",
           "find_missing_chunks", "mark_read_as_fill", "read_as_fill", "storage_grid", "strict_array"]
