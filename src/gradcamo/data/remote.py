"""Open remote OME-Zarr stores (any fsspec URL) with bounded retries of transient read errors.

zarr reads a URL through fsspec; s3fs retries its own transient errors, fsspec's HTTP
filesystem does not. :class:`RetryingStore` retries every read of a remote store that fails
with a connection error, a timeout or an HTTP 5xx/429 answer, a few times with growing
pauses, so a server that drops connections for a while costs time, not the run. A missing
object (a 404, an S3 NoSuchKey) is not retried: zarr's store answers it with nothing, which is
a missing image chunk (:mod:`gradcamo.data.chunks`), background for labels, or a group not found.

Credentials, endpoints and anonymous access come from fsspec's configuration (environment
variables such as ``FSSPEC_S3_ENDPOINT_URL`` or ``FSSPEC_S3='{"anon": true}'``, or files in
``~/.config/fsspec/``) and from the usual AWS variables; see docs/reliability.md.
"""

import asyncio
import functools
import logging

from zarr.core.buffer import Buffer
from zarr.storage import FsspecStore, WrapperStore

LOGGER = logging.getLogger(__name__)

RETRIES = 5
"""Reads retried at most this many times after the first attempt."""
RETRY_PAUSE_SECONDS = 0.5
"""Pause before the first retry; doubled before each further one (0.5 s ... 8 s, 15.5 s in all)."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_remote(location) -> bool:
    """True for URLs that fsspec opens over the network (not plain paths nor ``file://``)."""
    location = str(location)
    return "://" in location and not location.startswith("file://")


@functools.cache
def _transient_errors():
    errors = [ConnectionError, TimeoutError]
    try:
        import aiohttp
    except ImportError:  # no HTTP/S3 filesystem installed: nothing else to recognise
        return tuple(errors)
    return (*errors, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


@functools.cache
def read_errors() -> tuple[type[Exception], ...]:
    """Exception types of a read that failed in the store or on the way to it (not of bad content)."""
    try:
        import aiohttp
    except ImportError:
        return (OSError,)
    return (OSError, aiohttp.ClientError)


def is_transient(error) -> bool:
    """Whether a failed read is worth trying again (connection dropped, timeout, 5xx, 429)."""
    if isinstance(error, _transient_errors()):
        return True
    status = getattr(error, "status", None)
    return isinstance(status, int) and status in RETRY_STATUSES


async def _retrying(read, key):
    attempt = 0
    while True:
        try:
            return await read()
        except Exception as error:
            if attempt == RETRIES or not is_transient(error):
                raise
            pause = RETRY_PAUSE_SECONDS * 2**attempt
            attempt += 1
            LOGGER.info("reading %s failed (%s: %s); retry %d of %d in %.1f s",
                           key, type(error).__name__, error, attempt, RETRIES, pause)
            await asyncio.sleep(pause)


class RetryingStore(WrapperStore):
    """A read-only zarr store that retries transient read errors of the store it wraps."""

    async def get(self, key, prototype, byte_range=None) -> Buffer | None:
        return await _retrying(lambda: self._store.get(key, prototype, byte_range), key)

    async def get_partial_values(self, prototype, key_ranges) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return await _retrying(lambda: self._store.get_partial_values(prototype, key_ranges),
                               ", ".join(key for key, _ in key_ranges[:3]))

    async def exists(self, key) -> bool:
        return await _retrying(lambda: self._store.exists(key), key)


def open_store(location) -> "str | RetryingStore":
    """What to hand ``zarr.open_group`` for ``location``: a :class:`RetryingStore` for a
    remote URL, the location itself otherwise (fsspec caches the filesystems underneath)."""
    location = str(location)
    if not is_remote(location):
        return location
    return RetryingStore(FsspecStore.from_url(location, read_only=True))


__all__ = ["RETRIES", "RETRY_PAUSE_SECONDS", "RetryingStore", "is_remote", "is_transient", "open_store", "read_errors"]
