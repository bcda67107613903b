"""Per-worker state of a scoring (or encoding) run, held by a ``distributed.WorkerPlugin``.

A worker keeps, for the duration of a run: its onnxruntime sessions (never pickled; built on
first use), a cache of decoded chunks (the halos of neighbouring blocks share chunks) and a
lock that lets one batch at a time onto a GPU. ``teardown`` drops all of it: nothing outlives
the run at module level, so a later run in the same process (the default local worker runs
in-process) builds its sessions again from the model file as it is then.

Task threads overlap reading with inference. On CUDA they take turns at the GPU while the
others read, decompress and cut. On CPU each runs its own batches with its share of the
worker's cores (:func:`session_threads`): with one pool of all cores and one batch at a
time, every operator waited for the pool thread that a reading task had preempted (on 2
cores, resnet18 5x64x64 end to end went from 696 to 817 cells/s, EfficientNet3dSmall
5x8x32x32 from 447 to 611).
"""

import contextlib
import os
import threading
from typing import Any, cast

from distributed import WorkerPlugin, get_worker

from gradcamo.scorer.regions import ChunkCache
from gradcamo.scorer.resources import process_cpus
from gradcamo.scorer.session import CUDA, SessionCache

PLUGIN_NAME = "gradcamo-scorer"
CHUNK_CACHE_BYTES = 1024 * 2**20


class ScorerPlugin(WorkerPlugin):
    """Sessions, a chunk cache and an inference lock, one set per worker process."""

    name = PLUGIN_NAME
    idempotent = False

    def _clear(self):
        self._sessions = SessionCache()
        self.chunks = ChunkCache(CHUNK_CACHE_BYTES)
        """Decoded chunks of blocked images (whole-image units read each chunk once anyway)."""
        self._gpu = threading.Lock()

    def setup(self, worker=None) -> None:
        """Fresh state (the plugin travels pickled without any: it is built here, on the worker)."""
        self._clear()

    def teardown(self, worker=None) -> None:
        self._clear()

    def session(self, build, *arguments, **options) -> Any:
        """The session ``build(*arguments, **options)`` on this worker, built on first use and kept for the run.

        ``build``, ``arguments`` and ``options`` are the key: e.g. a pass kind's graph builder
        (:func:`gradcamo.scorer.session.scoring_session`: the model file's path and sha256, crop,
        convention, methods) with the worker's device and threads
        (:meth:`gradcamo.scorer.engine.Inference.session`).
        """
        return self._sessions.get(build, *arguments, **options)

    def batch_slot(self, session) -> contextlib.AbstractContextManager:
        """What to hold around ``session.run``: on CUDA the worker's GPU lock (one batch at a
        time); on CPU nothing (each task thread runs with :func:`session_threads` cores)."""
        return self._gpu if session.get_providers()[0] == CUDA else contextlib.nullcontext()


def session_threads(requested=None) -> int:
    """onnxruntime threads of one task thread's batches on this worker's CPU.

    The worker's cores (``requested``, i.e. ``--threads``; else ``OMP_NUM_THREADS``, which local
    worker processes get; else the CPUs this process may use,
    :func:`gradcamo.scorer.resources.process_cpus`) shared by its task threads, which run their
    batches at the same time; at least 1.
    """
    cores = requested or int(os.environ.get("OMP_NUM_THREADS") or 0) or process_cpus()
    try:
        tasks = get_worker().state.nthreads
    except ValueError:  # outside a Dask worker: one caller
        tasks = 1
    return max(1, int(cores) // max(1, tasks))


def worker_state() -> "ScorerPlugin":
    """This worker's :class:`ScorerPlugin`; outside a Dask worker (or without the plugin), a fresh
    one set up for this call alone, kept by no one."""
    try:
        plugin = cast("ScorerPlugin | None", get_worker().plugins.get(PLUGIN_NAME))
    except ValueError:
        plugin = None
    if plugin is None:
        plugin = ScorerPlugin()
        plugin.setup()
    return plugin
