"""onnxruntime sessions for scoring: one per worker process, never pickled."""

import logging
import os
import threading

import numpy as np
import onnx
import onnxruntime as ort

from gradcamo.errors import InputError
from gradcamo.scorer.head import append_score_head, expose_crop_cam

LOGGER = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
"""The default, EXHAUSTIVE, benchmarks every convolution of every new input shape: on an H100
the tiny model's first batches ran 10x slower with it (benchmarks/README.md, GPU)."""
CPU = "CPUExecutionProvider"


def gpu_present() -> bool:
    """Whether an NVIDIA driver is loaded (asking ORT for CUDA without one only logs errors)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def check_device(device) -> str:
    """``device`` itself when it is one of :data:`DEVICES` and usable here.

    Raises
    ------
    InputError
        Any other value; ``cuda`` on a machine without an NVIDIA driver (refused before
        onnxruntime tries, which would print its C++ errors about missing CUDA libraries).
    """
    if device not in DEVICES:
        raise InputError(f"device: expected one of {', '.join(DEVICES)}, got {device!r}", argument="device")
    if device == "cuda" and not gpu_present():
        raise InputError("device cuda: onnxruntime did not get the CUDA provider: no NVIDIA driver is loaded "
                         "on this machine; use the cpu device", argument="device")
    return device


def create_session(model_bytes, *, device="auto", threads=None, device_id=None) -> ort.InferenceSession:
    """An InferenceSession on CUDA when asked for (or, with ``auto``, when a GPU is present),
    on CUDA device ``device_id`` (default: CUDA's, 0).

    Raises
    ------
    InputError
        ``device="cuda"`` but the session did not get the CUDA provider.
    """
    check_device(device)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle onnxruntime threads sleep instead of spinning: the worker's other task thread
    # reads, decompresses and cuts on the same cores between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model_bytes, options, providers=providers_for(device, device_id))
    return require_device(session, device)


def providers_for(device, device_id=None) -> list:
    """The execution providers to ask for: CUDA first for ``cuda`` (and ``auto`` with a GPU present),
    on device ``device_id`` when given."""
    if device == "cuda" or (device == "auto" and gpu_present()):
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries from the nvidia-* wheels, when installed
        options = CUDA_OPTIONS if device_id is None else {**CUDA_OPTIONS, "device_id": str(int(device_id))}
        return [(CUDA, options), CPU]
    return [CPU]


def require_device(session, device) -> ort.InferenceSession:
    """``session`` itself, unless ``device`` is ``cuda`` and the session did not get CUDA.

    Raises
    ------
    InputError
        The one check that a session runs where it was asked to.
    """
    obtained = session.get_providers()
    if device == "cuda" and CUDA not in obtained:
        raise InputError(
            f"device cuda: onnxruntime did not get the CUDA provider (got {', '.join(obtained)}; available "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu with CUDA 12/13 and cuDNN 9 "
            "libraries, or use the cpu device",
            argument="device",
        )
    return session


def build_scoring_session(model_path, crop_spatial, convention, device, threads, methods=("gradcam",), crop_cam=False,
                          device_id=None) -> ort.InferenceSession:
    """A new session of a model file with the Grad-CAMO head appended (:mod:`gradcamo.scorer.head`);
    with ``crop_cam``, also each row's crop-resolution CAM (:func:`~gradcamo.scorer.head.expose_crop_cam`)."""
    model = onnx.load(model_path)
    headed = append_score_head(model, crop_spatial=tuple(crop_spatial), convention=convention, methods=methods)
    if crop_cam:
        headed = expose_crop_cam(headed)
    session = create_session(headed.SerializeToString(), device=device, threads=threads, device_id=device_id)
    LOGGER.info("onnxruntime session on %s (pid %d)", session.get_providers()[0], os.getpid())
    return session


ONNX_TENSOR_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
"""numpy types of the graph inputs gradcamo's graphs take."""


def run_in_batches(session, output_names, feed, batch_size, advance=None, run=None) -> list[np.ndarray]:
    """Run ``session`` on arrays held in memory, ``batch_size`` rows at a time.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    output_names : sequence of str
    feed : dict of str to ndarray
        Inputs with the same number of rows, sliced together; each batch is cast to the
        graph's input type (float32 or int64) as it is run, so e.g. bool masks stay bool here.
    batch_size : int
    advance : callable, optional
        Called with the rows of each batch run (progress).
    run : callable, optional
        ``run(output_names, batch) -> outputs`` instead of ``session.run`` (the engine's:
        :meth:`gradcamo.scorer.engine.Inference.run`).

    Returns
    -------
    list of ndarray
        Each output, the batches' rows concatenated.
    """
    types = {graph_input.name: ONNX_TENSOR_TYPES[graph_input.type] for graph_input in session.get_inputs()}
    rows = len(next(iter(feed.values())))
    parts = []
    for begin in range(0, rows, batch_size):
        batch = {name: np.ascontiguousarray(value[begin:begin + batch_size], dtype=types[name])
                 for name, value in feed.items()}
        parts.append((run or session.run)(list(output_names), batch))
        if advance is not None:
            advance(len(next(iter(batch.values()))))
    return parts[0] if len(parts) == 1 else [np.concatenate(column) for column in zip(*parts)]


class SessionCache:
    """Sessions built on first use and kept until :meth:`close`, keyed by builder and arguments: what a
    run's worker plugin holds (:class:`gradcamo.scorer.worker.ScorerPlugin`), and what ``cams`` or
    ``report`` holds for one command (``with SessionCache() as sessions:``). Nothing outlives its
    owner, so a later run or command in the same process reads the model file as it is then."""

    def __init__(self) -> None:
        self._sessions: dict[tuple, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "SessionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, build, *arguments, **options) -> ort.InferenceSession:
        """The session ``build(*arguments, **options)``, built on first use; the builder, the arguments and
        the options are the key (a model file's sha256 among the arguments keys it by content)."""
        key = (build, *arguments, *sorted(options.items()))
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = build(*arguments, **options)
            return self._sessions[key]

    def close(self) -> None:
        """Drop every session."""
        with self._lock:
            self._sessions.clear()


def scoring_session(model_path, model_sha256, crop_spatial, convention, methods=("gradcam",), crop_cam=False, *,
                    device, threads, device_id=None) -> ort.InferenceSession:
    """A new headed session of a model file, built once per run and worker by the engine
    (:meth:`gradcamo.scorer.engine.Inference.session`), which keeps it until the run ends.

    ``model_sha256`` is part of the worker's key only (the file scored is the file the run checked).
    """
    return build_scoring_session(model_path, crop_spatial, convention, device, threads, methods, crop_cam, device_id)
