"""Fixtures shared across the test tree: tiny exported models and a real dask.distributed cluster."""

import json
import subprocess
import sys
import time

import pytest
from distributed import Client

from tests.tiny_models import export_tiny

CLUSTER_START_TIMEOUT = 60


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("m2") / "m.onnx", 2, class_names=["a", "b", "c"])


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("m3") / "m.onnx", 3)


def _start(*command):
    return subprocess.Popen([sys.executable, "-m", *map(str, command)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded worker processes (``dask-scheduler``/``dask-worker``,
    as a user starts them); yields the scheduler's address once both workers are connected."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = [_start("distributed.cli.dask_scheduler", "--scheduler-file", scheduler_file, "--port", "0",
                        "--no-dashboard")]
    try:
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        processes.append(_start("distributed.cli.dask_worker", "--scheduler-file", scheduler_file,
                                "--nworkers", "2", "--nthreads", "1", "--no-dashboard"))
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address) as client:
            client.wait_for_workers(2, timeout=CLUSTER_START_TIMEOUT)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
