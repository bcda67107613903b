"""What this process may use: its CPUs (affinity, cgroup quota, SLURM allocation) and its GPUs.

Defaults of workers and threads follow :func:`usable_cpus`, not the machine's core count: a
SLURM job given 8 of a node's 64 cores, or a container limited to 2 CPUs, starts threads for
8 or 2. GPUs are listed without torch (``nvidia-smi -L``), in the order CUDA numbers them in
this process (``CUDA_VISIBLE_DEVICES`` applied); :func:`gpu_workers` maps the chosen ones to
local worker processes, one per GPU.
"""

import dataclasses
import functools
import math
import os
import pathlib
import re
import shutil
import subprocess

from gradcamo.errors import InputError

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
SELF_CGROUP = pathlib.Path("/proc/self/cgroup")
MAX_TASK_THREADS_PER_GPU = 8
"""CPU helper threads (reading, decompressing, cutting) of one GPU worker at most: past this,
one process's threads contend for the GIL more than they add."""
NVIDIA_SMI_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class CpuAllocation:
    """The CPUs this process may use: ``cpus`` is the smallest of the ``limits`` found.

    ``limits`` names each source that was found: ``machine`` (``os.cpu_count()``), ``affinity``
    (``os.sched_getaffinity``, where it exists), ``cgroup`` (the CPU quota, rounded up) and
    ``slurm`` (``SLURM_CPUS_PER_TASK``).
    """

    cpus: int
    limits: dict

    def to_json(self) -> dict:
        return {"usable_cpus": self.cpus, "cpu_limits": dict(self.limits)}


def _quota_cpus(quota, period):
    """CPUs of a CFS quota: ``quota / period`` rounded up; None for no limit."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_v2_limit(directory):
    """``cpu.max`` ("max 100000" or "200000 100000") of one cgroup v2 directory, in CPUs."""
    path = directory / "cpu.max"
    if not path.is_file():
        return None
    fields = path.read_text().split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _quota_cpus(int(fields[0]), int(fields[1]))


def _read_v1_limit(directory):
    """``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of one cgroup v1 cpu directory, in CPUs (-1: none)."""
    quota, period = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    if not (quota.is_file() and period.is_file()):
        return None
    return _quota_cpus(int(quota.read_text().strip()), int(period.read_text().strip()))


def _up_to(base, relative):
    """``base / relative`` and each of its parents down to ``base`` (a quota anywhere above applies)."""
    parts = [p for p in relative.strip("/").split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root=CGROUP_ROOT, self_cgroup=SELF_CGROUP) -> int | None:
    """The CPU quota of this process's cgroup and its parents, in whole CPUs; None without one.

    Reads ``/proc/self/cgroup`` for the process's cgroup path, then ``cpu.max`` (cgroup v2)
    or ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (v1, under ``cpu`` or ``cpu,cpuacct``) in
    that directory and every parent; the smallest quota wins. In a container the path may not
    exist under the mounted hierarchy: its root, the container's own cgroup, is read then.
    """
    root, self_cgroup = pathlib.Path(root), pathlib.Path(self_cgroup)
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    candidates = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            candidates += [(_read_v2_limit, d) for d in _up_to(root, path)]
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys([controllers, "cpu,cpuacct", "cpu"]):
                candidates += [(_read_v1_limit, d) for d in _up_to(root / mount, path)]
    if not lines:
        candidates = [(_read_v2_limit, root), (_read_v1_limit, root / "cpu,cpuacct"), (_read_v1_limit, root / "cpu")]
    limits = []
    for read, directory in candidates:
        try:
            limit = read(directory)
        except (OSError, ValueError):
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def usable_cpus(*, environ=None, cgroup_root=CGROUP_ROOT, self_cgroup=SELF_CGROUP) -> CpuAllocation:
    """The CPUs this process may use, and where each limit came from.

    The smallest of: the machine's CPUs, the process's affinity (``os.sched_getaffinity``
    where it exists: Linux; not macOS or Windows), the cgroup CPU quota
    (:func:`cgroup_cpu_limit`) and ``SLURM_CPUS_PER_TASK``; at least 1.

    Returns
    -------
    CpuAllocation
    """
    environ = os.environ if environ is None else environ
    limits = {"machine": os.cpu_count() or 1}
    if hasattr(os, "sched_getaffinity"):
        limits["affinity"] = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_limit(cgroup_root, self_cgroup)
    if quota is not None:
        limits["cgroup"] = quota
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits["slurm"] = int(slurm)
    return CpuAllocation(max(1, min(limits.values())), limits)


@functools.lru_cache(maxsize=1)
def process_cpus() -> int:
    """``usable_cpus().cpus`` of this process, found once (workers ask for every unit)."""
    return usable_cpus().cpus


def task_threads(cpus) -> int:
    """Tasks a local CPU worker runs at once, from the CPUs it may use.

    1 on one CPU (nothing to overlap with); else 2 to 4, so that reading, decompressing and
    cutting overlap inference (TinyCNN2d on a 16-core machine: 1 thread 6.4k cells/s,
    2 threads 9.1k, 4 threads 10.9k).
    """
    return 1 if cpus <= 1 else min(4, max(2, cpus // 4))


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU as this process sees it: ``ordinal`` is CUDA's device number here (``device_id``)."""

    ordinal: int
    name: str
    uuid: str

    @property
    def label(self) -> str:
        return f"cuda:{self.ordinal}"


_SMI_LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: ([^)]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: ([^)]+)\)\s*$")


def parse_gpu_list(text) -> list[tuple[int, str, str]]:
    """``nvidia-smi -L`` output -> [(index, name, uuid)] in the driver's order.

    The MIG instances of a GPU split into them follow it, with its index and name and their
    own ``MIG-`` UUIDs (a process reaches one by naming it in ``CUDA_VISIBLE_DEVICES``).
    """
    gpus = []
    for line in text.splitlines():
        match = _SMI_LINE.match(line)
        if match:
            gpus.append((int(match[1]), match[2], match[3]))
            continue
        mig = _MIG_LINE.match(line)
        if mig and gpus:
            gpus.append((gpus[-1][0], gpus[-1][1], mig[1]))
    return gpus


def visible_gpus(physical, cuda_visible_devices) -> list[Gpu]:
    """The GPUs CUDA shows this process, in its order, numbered 0.. as ``device_id``.

    Parameters
    ----------
    physical : list of (index, name, uuid)
        As :func:`parse_gpu_list`.
    cuda_visible_devices : str or None
        ``CUDA_VISIBLE_DEVICES``: None shows every (whole) GPU; otherwise comma-separated
        indices or GPU/MIG UUIDs (a unique prefix is enough), as CUDA reads it: an empty
        value shows none, and the list stops at the first entry that names no GPU (CUDA
        ignores the rest).

    Returns
    -------
    list of Gpu
    """
    whole = [g for g in physical if not g[2].startswith("MIG-")]
    if cuda_visible_devices is None:
        chosen = whole
    else:
        chosen = []
        for entry in (e.strip() for e in cuda_visible_devices.split(",")):
            if entry.isdigit():
                found = [g for g in whole if g[0] == int(entry)]
            else:
                found = [g for g in physical if entry and g[2].startswith(entry)]
            if len(found) != 1 or found[0] in chosen:
                break
            chosen.append(found[0])
    return [Gpu(ordinal, name, uuid) for ordinal, (_, name, uuid) in enumerate(chosen)]


def list_gpus(environ=None) -> list[Gpu]:
    """The GPUs this process may use (:func:`visible_gpus` of ``nvidia-smi -L``); [] without the tool."""
    environ = os.environ if environ is None else environ
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return visible_gpus(parse_gpu_list(listed.stdout), environ.get("CUDA_VISIBLE_DEVICES"))


def parse_gpu_request(request) -> tuple[int, ...] | None:
    """``--gpus`` read before any GPU is looked for: ``all`` (or None) -> None, ``0,1,3`` -> ``(0, 1, 3)``.

    Raises
    ------
    InputError
        Neither ``all`` nor a comma-separated list of device numbers (integers >= 0); a number given twice.
    """
    text = "all" if request is None else str(request).strip()
    if text == "all":
        return None
    entries = [e.strip() for e in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", e) for e in entries):
        raise InputError(f"--gpus: expected all or comma-separated device numbers such as 0,1,3, got {text!r}",
                         argument="gpus")
    numbers = tuple(int(e) for e in entries)
    if len(set(numbers)) != len(numbers):
        raise InputError(f"--gpus: device given twice in {text!r}", argument="gpus")
    return numbers


def select_gpus(request, visible) -> list[Gpu]:
    """The GPUs ``--gpus`` asks for: ``all`` (or None) -> every visible GPU, ``0,1,3`` -> those.

    Raises
    ------
    InputError
        As :func:`parse_gpu_request` (checked first); no GPU visible; a number that is not a visible ordinal.
    """
    numbers = parse_gpu_request(request)
    if not visible:
        raise InputError("--gpus: no NVIDIA GPU is visible to this process (nvidia-smi -L lists none, or "
                         "CUDA_VISIBLE_DEVICES hides them); use --device cpu", argument="gpus")
    if numbers is None:
        return list(visible)
    by_ordinal = {gpu.ordinal: gpu for gpu in visible}
    missing = [n for n in numbers if n not in by_ordinal]
    if missing:
        raise InputError(f"--gpus: no GPU {missing[0]} here; visible: "
                         f"{', '.join(f'{g.ordinal} ({g.name})' for g in visible)}", argument="gpus")
    return [by_ordinal[n] for n in numbers]


@dataclasses.dataclass(frozen=True)
class GpuWorker:
    """One local worker process bound to one GPU: its Dask name, CUDA ``device_id``, task threads
    (one at a time runs a batch on the GPU; the others read, decompress and cut) and CPU threads
    for onnxruntime's CPU-side work (``OMP_NUM_THREADS``)."""

    name: str
    gpu: Gpu
    task_threads: int
    cpu_threads: int


def gpu_workers(gpus, cpus) -> list[GpuWorker]:
    """One worker per GPU, the ``cpus`` shared among them.

    Each gets ``cpus // len(gpus)`` CPU threads (at least 1) and that many task threads,
    2 to :data:`MAX_TASK_THREADS_PER_GPU` (2 even on one CPU: a GPU batch waits on the
    device, not the CPU).
    """
    share = max(1, cpus // max(1, len(gpus)))
    return [GpuWorker(f"gpu{gpu.ordinal}", gpu, min(MAX_TASK_THREADS_PER_GPU, max(2, share)), share) for gpu in gpus]




DEVICE_ID_ENV = "GRADCAMO_CUDA_DEVICE_ID"
"""Set by the scorer for each local GPU worker process: the CUDA ``device_id`` its sessions use."""


def worker_device_id() -> int | None:
    """The CUDA ``device_id`` this worker process was bound to (:data:`DEVICE_ID_ENV`); None: CUDA's default, 0."""
    value = os.environ.get(DEVICE_ID_ENV, "").strip()
    return int(value) if value.isdigit() else None


def describe_worker(provider, onnxruntime_threads) -> dict:
    """What the manifest records of the worker running the calling task: its Dask name, the
    device its session runs on (``cuda:N`` or ``cpu``), the CUDA ``device_id`` it was bound to
    (None: not bound), its task threads and onnxruntime threads."""
    from distributed import get_worker

    from gradcamo.scorer.session import CUDA

    try:
        worker = get_worker()
        name, tasks = str(worker.name), worker.state.nthreads
    except ValueError:  # outside a Dask worker
        name, tasks = "local", 1
    bound = worker_device_id()
    device = f"cuda:{bound or 0}" if provider == CUDA else "cpu"
    return {"worker": name, "device": device, "device_id": bound, "task_threads": tasks,
            "onnxruntime_threads": onnxruntime_threads}


def choose_gpu_workers(request, *, device, scheduler, workers, cpus) -> list[GpuWorker] | None:
    """The local GPU workers of a run: one per GPU, or None for the usual local cluster.

    ``request`` is ``--gpus`` (``all`` or ``0,1,3``). Without it: every visible GPU when there
    are several, onnxruntime has the CUDA provider, the device is ``auto`` or ``cuda`` and
    neither ``--scheduler`` nor ``--workers`` is given (one GPU: the in-process worker, on
    device 0, starts faster).

    Raises
    ------
    InputError
        A ``request`` that is no ``--gpus`` value (:func:`parse_gpu_request`, checked first); ``--gpus``
        with ``--device cpu``, ``--scheduler`` or ``--workers``; as :func:`select_gpus`.
    """
    if request is None:
        import onnxruntime

        from gradcamo.scorer.session import CUDA

        if scheduler or workers or device == "cpu" or CUDA not in onnxruntime.get_available_providers():
            return None
        visible = list_gpus()
        return gpu_workers(visible, cpus) if len(visible) > 1 else None
    parse_gpu_request(request)
    for given, option in ((device == "cpu", "--device cpu"), (scheduler, "--scheduler"), (workers, "--workers")):
        if given:
            raise InputError(f"--gpus: not with {option} (--gpus starts one local worker process per GPU; "
                             "a cluster's workers choose their own GPU)", argument="gpus")
    return gpu_workers(select_gpus(request, list_gpus()), cpus)


__all__ = [
    "DEVICE_ID_ENV", "CpuAllocation", "Gpu", "GpuWorker", "cgroup_cpu_limit", "choose_gpu_workers", "describe_worker",
    "gpu_workers", "list_gpus", "parse_gpu_list", "parse_gpu_request", "process_cpus", "select_gpus", "task_threads",
    "usable_cpus", "visible_gpus", "worker_device_id",
]
