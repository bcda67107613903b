"""CPUs and GPUs this process may use: cgroup quotas, affinity, SLURM, CUDA_VISIBLE_DEVICES, workers per GPU."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from gradcamo.errors import InputError
from gradcamo.scorer.resources import (
    cgroup_cpu_limit, gpu_workers, parse_gpu_list, select_gpus, task_threads, usable_cpus, visible_gpus,
)

SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa1111-0000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb2222-0000)
GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-cccc3333-0000)
  MIG 1g.5gb      Device  0: (UUID: MIG-dddd4444-0000)
GPU 3: NVIDIA H100 80GB HBM3 (UUID: GPU-eeee5555-0000)
"""


def _write(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)


def test_cgroup_v2_quota_is_rounded_up_and_the_smallest_up_the_tree_wins(tmp_path):
    _write(tmp_path / "slurm" / "job_7", cpu__max="250000 100000\n")
    _write(tmp_path / "slurm", cpu__max="800000 100000\n")
    (tmp_path / "self").write_text("0::/slurm/job_7\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "self") == 3
    _write(tmp_path / "slurm", cpu__max="100000 100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "self") == 1


def test_cgroup_v2_without_a_quota(tmp_path):
    _write(tmp_path / "user", cpu__max="max 100000\n")
    (tmp_path / "self").write_text("0::/user\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "self") is None


def test_cgroup_v1_cfs_quota_and_a_container_that_sees_only_its_own_root(tmp_path):
    (tmp_path / "self").write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    _write(tmp_path / "cpu,cpuacct", cpu__cfs_quota_us="400000\n", cpu__cfs_period_us="100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "self") == 4  # /docker/abc is not mounted here: the root is ours
    _write(tmp_path / "cpu,cpuacct", cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "self") is None


def test_usable_cpus_takes_the_smallest_limit(tmp_path):
    _write(tmp_path, cpu__max="200000 100000\n")
    (tmp_path / "self").write_text("0::/\n")
    allocation = usable_cpus(environ={"SLURM_CPUS_PER_TASK": "1"}, cgroup_root=tmp_path, self_cgroup=tmp_path / "self")
    assert allocation.cpus == 1 and allocation.limits["slurm"] == 1 and allocation.limits["cgroup"] == 2
    assert allocation.limits["machine"] == os.cpu_count()
    assert usable_cpus(environ={}, cgroup_root=tmp_path / "none", self_cgroup=tmp_path / "none").limits.keys() <= {
        "machine", "affinity"}


@pytest.mark.skipif(shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"),
                    reason="needs taskset and os.sched_getaffinity (Linux)")
def test_under_taskset_one_cpu_the_scorer_runs_one_thread(tmp_path, model_2d):
    from gradcamo.data.synthetic import make_cells
    from gradcamo.data.write import write_image_store

    image, labels = make_cells((40, 40), 3, n_channels=3, radius=5, seed=1)
    store = write_image_store(tmp_path / "cells.zarr", image, labels)
    output = tmp_path / "scores"
    code = ("import sys; from gradcamo.scorer.pipeline import score; "
            f"score([{str(store)!r}], {str(model_2d)!r}, {str(output)!r}, device='cpu')")
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    first_cpu = str(min(os.sched_getaffinity(0)))  # `taskset -c 0` where CPU 0 is ours
    subprocess.run(["taskset", "-c", first_cpu, sys.executable, "-c", code], check=True, env=environment,
                   timeout=300)
    manifest = json.loads((output / "_gradcamo.json").read_text())
    assert manifest["resources"]["usable_cpus"] == 1 and manifest["resources"]["cpu_limits"]["affinity"] == 1
    (worker,) = manifest["workers"]
    assert worker["device"] == "cpu" and worker["task_threads"] == 1 and worker["onnxruntime_threads"] == 1
    assert worker["cells"] == manifest["counts"]["cells"] == 3


def test_task_threads_follow_the_cpus():
    assert [task_threads(n) for n in (1, 2, 8, 16, 64)] == [1, 2, 2, 4, 4]


def test_visible_gpus_follow_cuda_visible_devices():
    physical = parse_gpu_list(SMI)
    assert [g[0] for g in physical] == [0, 1, 2, 2, 3]
    everything = visible_gpus(physical, None)
    assert [(g.ordinal, g.uuid) for g in everything] == [
        (0, "GPU-aaaa1111-0000"), (1, "GPU-bbbb2222-0000"), (2, "GPU-cccc3333-0000"), (3, "GPU-eeee5555-0000")]
    assert [g.uuid[:8] for g in visible_gpus(physical, "3,1")] == ["GPU-eeee", "GPU-bbbb"]
    assert [g.ordinal for g in visible_gpus(physical, "3,1")] == [0, 1]  # CUDA numbers them anew
    assert [g.uuid for g in visible_gpus(physical, "GPU-bbbb,MIG-dddd")] == ["GPU-bbbb2222-0000", "MIG-dddd4444-0000"]
    assert visible_gpus(physical, "") == []
    assert [g.uuid[:8] for g in visible_gpus(physical, "0,7,1")] == ["GPU-aaaa"]  # stops at the first unknown entry
    assert visible_gpus(physical, "-1") == []


def test_select_gpus_and_one_worker_per_gpu():
    visible = visible_gpus(parse_gpu_list(SMI), None)
    assert select_gpus(None, visible) == select_gpus("all", visible) == visible
    chosen = select_gpus("0,1,3", visible)
    workers = gpu_workers(chosen, cpus=16)
    assert [(w.name, w.gpu.ordinal, w.gpu.label) for w in workers] == [
        ("gpu0", 0, "cuda:0"), ("gpu1", 1, "cuda:1"), ("gpu3", 3, "cuda:3")]
    assert {(w.task_threads, w.cpu_threads) for w in workers} == {(5, 5)}
    assert [(w.task_threads, w.cpu_threads) for w in gpu_workers(visible, cpus=2)] == [(2, 1)] * 4
    assert gpu_workers(visible[:1], cpus=64)[0].task_threads == 8


@pytest.mark.parametrize(("request_", "visible", "message"), [
    ("all", [], "no NVIDIA GPU is visible"),
    ("0,5", None, "no GPU 5 here; visible: 0 "),
    ("0,0", None, "device given twice"),
    ("first", None, "expected all or comma-separated"),
    ("foo", [], r"expected all or comma-separated device numbers such as 0,1,3, got 'foo'"),  # before "no GPU"
    ("0,-1", [], r"got '0,-1'"),
    ("1,1", [], "device given twice in '1,1'"),
])
def test_select_gpus_refuses(request_, visible, message):
    visible = visible_gpus(parse_gpu_list(SMI), None) if visible is None else visible
    with pytest.raises(InputError, match=message):
        select_gpus(request_, visible)
