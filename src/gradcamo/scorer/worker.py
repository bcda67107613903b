"""Per-worker state of a scoring (or encoding) run, held by a ``distributed.WorkerPlugin``.

A worker keeps, for the duration of a run: its onnxruntime sessions (never pickled; a scoring
run's come from the process's session cache, :func:`gradcamo.scorer.session.scoring_session`,
so repeated runs in one process do not build them again), a cache of decoded chunks (the halos of neighbouring blocks share chunks), a lock that lets one batch at a time into a session
(so that a second task thread reads, decompresses and cuts the next unit while the first
one's batches run: reading overlaps inference), and the providers its sessions got.
``teardown`` drops all of it.
"""

import threading

from distributed import WorkerPlugin, get_worker

from gradcamo.scorer.regions import ChunkCache

PLUGIN_NAME = "gradcamo-scorer"
CHUNK_CACHE_BYTES = 1024 * 2**20


class ScorerPlugin(WorkerPlugin):
    """Sessions, a chunk cache and an inference lock, one set per worker process."""

    name = PLUGIN_NAME
    idempotent = False

    def _clear(self):
        self._sessions = {}
        self.chunks = ChunkCache(CHUNK_CACHE_BYTES)
        """Decoded chunks of blocked images (whole-image units read each chunk once anyway)."""
        self._guard = threading.Lock()
        self.inference = threading.Lock()
        """Held around ``session.run``: one batch at a time per worker, whatever its threads."""

    def setup(self, worker=None):
        """Fresh state (the plugin travels pickled without any: it is built here, on the worker)."""
        self._clear()

    def teardown(self, worker=None):
        self._clear()

    def session(self, build, *arguments):
        """The session ``build(*arguments)`` on this worker, built on first use and kept for the run.

        ``build`` and ``arguments`` are the cache key: e.g. :func:`gradcamo.scorer.session.scoring_session` and a
        :class:`~gradcamo.scorer.units.ScoreSpec`'s ``session_arguments`` (the model file's
        path and sha256, crop, convention, device, threads, methods), or an autoencoder's
        graph opener and its description.
        """
        key = (build, *arguments)
        with self._guard:
            if key not in self._sessions:
                self._sessions[key] = build(*arguments)
            return self._sessions[key]


_OUTSIDE_DASK = ScorerPlugin()
_OUTSIDE_DASK.setup()


def worker_state():
    """This worker's :class:`ScorerPlugin`; outside a Dask worker, one for the calling process."""
    try:
        worker = get_worker()
    except ValueError:
        return _OUTSIDE_DASK
    plugin = worker.plugins.get(PLUGIN_NAME)
    return plugin if plugin is not None else _OUTSIDE_DASK
