"""Faults: kill -9 and resume, a worker dying mid-run, odd data that must be scored or refused cleanly."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pytest
import zarr
from distributed import Client

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.scorer.sink import read_scores
from tests.scorer.test_pipeline import assert_matches, reference_rows
from tests.scorer.tiny_models import CROP_2D

KILLS = 4
KEY = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "target_class"]


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    fields = {(row, column): [make_cells((64, 64), 10, n_channels=3, radius=5, seed=10 * column + site + ord(row))
                              for site in range(2)] for row in "AB" for column in (1, 2)}
    return write_plate(tmp_path_factory.mktemp("plate") / "plate.zarr", fields, name="P", chunks=(16, 16))


def _score_command(plate, model, output, *extra):
    return [sys.executable, "-m", "gradcamo", "score", str(plate), "-m", str(model), "-o", str(output),
            "--target", "all", "--batch-size", "2", "--workers", "2", "--threads", "1", "--quiet", *extra]


def _sorted_rows(output):
    frame = read_scores(output).to_pandas().sort_values(KEY).reset_index(drop=True)
    return frame


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_rows(tmp_path, plate, model_2d):
    subprocess.run(_score_command(plate, model_2d, tmp_path / "clean"), check=True)
    clean = _sorted_rows(tmp_path / "clean")
    chooser = random.Random(7)
    killed = 0
    for _ in range(KILLS):
        process = subprocess.Popen(_score_command(plate, model_2d, tmp_path / "killed"), start_new_session=True)
        time.sleep(chooser.uniform(1.0, 6.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            killed += 1
        process.wait()
    assert killed >= 2, "the runs finished before they could be killed; make the plate bigger"
    subprocess.run(_score_command(plate, model_2d, tmp_path / "killed"), check=True)
    resumed = _sorted_rows(tmp_path / "killed")
    assert not resumed.duplicated(KEY).any()
    assert resumed.equals(clean)
    assert not [n for n in os.listdir(tmp_path / "killed") if n.startswith(".") or n.endswith(".lock")]
    assert json.loads((tmp_path / "killed" / "_gradcamo.json").read_text())["finished"]


def _first_worker_scoring(client, scorer):
    """Address of the first worker seen running a scoring task while ``scorer`` runs, else None."""
    while scorer.poll() is None:
        for worker, keys in client.processing().items():
            if any(str(key).startswith("score_unit") for key in keys):
                return worker
        time.sleep(0.02)
    return None


def test_a_worker_killed_mid_run_on_a_distributed_cluster_is_retried_exactly(tmp_path, model_2d):
    image, labels = make_cells((192, 192), 60, n_channels=3, radius=5, seed=31)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    scheduler_file = tmp_path / "scheduler.json"
    started = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                                 str(scheduler_file), "--port", "0", "--no-dashboard"], stderr=subprocess.DEVNULL)]
    try:
        while not scheduler_file.exists():
            time.sleep(0.2)
        started.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                         str(scheduler_file), "--nworkers", "2", "--nthreads", "1",
                                         "--no-dashboard"], stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            worker_pids = client.run(os.getpid)
            scorer = subprocess.Popen(_score_command(store, model_2d, tmp_path / "scores", "--scheduler", address,
                                                     "--batch-size", "1"))
            victim = _first_worker_scoring(client, scorer)
            assert victim is not None, "scoring finished before a worker could be killed mid-task"
            os.kill(worker_pids[victim], signal.SIGKILL)
        assert scorer.wait(timeout=300) == 0
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
    frame = read_scores(tmp_path / "scores").to_pandas()
    assert_matches(frame, reference_rows(model_2d, image, labels, CROP_2D, [0, 1, 2]))


def test_nan_and_inf_intensities_are_scored_and_flagged(tmp_path, model_2d, capsys):
    image, labels = make_cells((40, 40), 4, n_channels=3, radius=5, seed=2)
    image = image.astype(np.float32)
    image[:, :20, :20] = np.nan
    image[:, 20:, 20:] = np.inf
    store = write_image_store(tmp_path / "nan.zarr", image, labels)
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--quiet"]) == 0
    table = read_scores(tmp_path / "s")
    assert table.num_rows == labels.max()
    empty = table["cam_empty"].to_numpy(zero_copy_only=False)
    assert empty.any()
    assert np.isnan(table.filter(pc.field("cam_empty"))["grad_camo"].to_numpy()).all()


def test_an_object_larger_than_the_crop_is_scored(tmp_path, model_2d, capsys):
    image, _ = make_cells((48, 48), 1, n_channels=3, seed=1)
    labels = np.zeros((48, 48), np.uint16)
    labels[2:46, 2:46] = 1
    store = write_image_store(tmp_path / "big.zarr", image, labels)
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--quiet"]) == 0
    table = read_scores(tmp_path / "s")
    row = table.to_pylist()[0]
    assert row["pad_fraction"] == 0 and row["cam_inside"] == row["cam_total"]


def test_negative_label_ids_are_refused_and_leave_nothing(tmp_path, model_2d, capsys):
    image, labels = make_cells((40, 40), 4, n_channels=3, radius=5, seed=2)
    signed = labels.astype(np.int32)
    signed[signed == 2] = -2
    store = write_image_store(tmp_path / "neg.zarr", image, signed)
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "negative ids" in err and "neg.zarr" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_plate_well_paths_that_escape_the_store_are_refused(tmp_path, capsys, model_2d):
    store = write_plate(tmp_path / "p.zarr", {("A", 1): [make_cells((32, 32), 2, n_channels=3, seed=1)]})
    root = zarr.open_group(str(store), mode="r+")
    attributes = root.attrs.asdict()
    attributes["ome"]["plate"]["wells"][0]["path"] = "../../etc"
    root.attrs.put(attributes)
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s")]) == 2
    assert "leaves the store" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_output_from_another_model_is_refused_without_overwrite(tmp_path, capsys, model_2d, model_3d):
    image, labels = make_cells((40, 40), 3, n_channels=3, radius=5, seed=4)
    store = write_image_store(tmp_path / "c.zarr", image, labels)
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "-q"]) == 0
    capsys.readouterr()
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "-q",
                 "--convention", "pytorch-grad-cam"]) == 2
    err = capsys.readouterr().err
    assert "other parameters (convention)" in err and "--overwrite" in err
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "s"), "-q",
                 "--convention", "pytorch-grad-cam", "--overwrite"]) == 0
    assert set(read_scores(tmp_path / "s")["convention"].to_pylist()) == {"pytorch-grad-cam"}
