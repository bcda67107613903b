"""Faults: kill -9 and resume, a worker dying mid-run, odd data that must be scored or refused cleanly."""

import json
import os
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
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D

KEY = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "target_class"]
KILL_MOMENTS = ("lock taken", 1, 1, 2)
"""When each of the successive runs is killed: once it holds the output's lock (before any
part), or once it has written that many new part files."""
POLL_SECONDS = 0.002


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    fields = {(row, column): [make_cells((64, 64), 10, n_channels=3, radius=5, seed=10 * column + site + ord(row))
                              for site in range(4)] for row in "AB" for column in (1, 2)}
    return write_plate(tmp_path_factory.mktemp("plate") / "plate.zarr", fields, name="P", chunks=(16, 16))


def _score_command(plate, model, output, *extra):
    return [sys.executable, "-m", "gradcamo", "score", str(plate), "-m", str(model), "-o", str(output),
            "--target", "all", "--batch-size", "2", "--workers", "2", "--threads", "1", "--quiet", *extra]


def _sorted_rows(output):
    frame = read_scores(output).to_pandas().sort_values(KEY).reset_index(drop=True)
    return frame


def _parts(output):
    return {name for name in os.listdir(output) if name.startswith("part-")} if output.exists() else set()


def _finished(output):
    manifest = output / "_gradcamo.json"
    return manifest.exists() and bool(json.loads(manifest.read_text()).get("finished"))


def _freeze_at(process, output, moment):
    """Poll ``output`` until ``moment`` is reached, then stop (SIGSTOP) the run's whole process
    group where it stands; False when the run ended before that moment."""
    before = _parts(output)
    while process.poll() is None:
        reached = (output / "_gradcamo.lock").exists() if moment == "lock taken" else len(_parts(output) - before) >= moment
        if reached:
            os.killpg(process.pid, signal.SIGSTOP)
            return True
        time.sleep(POLL_SECONDS)
    return False


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_rows(tmp_path, plate, model_2d):
    """Each run is frozen at a moment read off the output directory, checked to be mid-run
    (not finished, parts missing), then killed with SIGKILL; the resumed run must give
    exactly the uninterrupted run's rows. No sleeps: nothing depends on the machine's speed."""
    subprocess.run(_score_command(plate, model_2d, tmp_path / "clean"), check=True)
    clean = _sorted_rows(tmp_path / "clean")
    all_parts = _parts(tmp_path / "clean")
    output = tmp_path / "killed"
    for moment in KILL_MOMENTS:
        process = subprocess.Popen(_score_command(plate, model_2d, output), start_new_session=True)
        try:
            assert _freeze_at(process, output, moment), f"the run ended before {moment!r}: {process.returncode}"
            assert not _finished(output) and len(_parts(output)) < len(all_parts), "frozen after the run's end"
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert len(_parts(output)) < len(all_parts)
    subprocess.run(_score_command(plate, model_2d, output), check=True)
    resumed = _sorted_rows(output)
    assert not resumed.duplicated(KEY).any()
    assert resumed.equals(clean)
    assert _parts(output) == all_parts
    assert not [n for n in os.listdir(output) if n.startswith(".") or n.endswith(".lock")]
    assert _finished(output)


def _freeze_first_busy_worker(client, scorer, worker_pids):
    """Stop (SIGSTOP) the first worker seen processing a task of ``scorer``; its address, or None
    when the run ended first. A stopped worker cannot finish its task: the kill lands mid-task."""
    while scorer.poll() is None:
        for worker, keys in client.processing().items():
            if keys:
                os.kill(worker_pids[worker], signal.SIGSTOP)
                if client.processing().get(worker):
                    return worker
                os.kill(worker_pids[worker], signal.SIGCONT)  # it finished between the two looks
        time.sleep(POLL_SECONDS)
    return None


def test_a_worker_killed_mid_task_on_a_distributed_cluster_is_retried_exactly(tmp_path, model_2d, dask_cluster):
    image, labels = make_cells((192, 192), 60, n_channels=3, radius=5, seed=31)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    with Client(dask_cluster) as client:
        worker_pids = client.run(os.getpid)
        scorer = subprocess.Popen(_score_command(store, model_2d, tmp_path / "scores", "--scheduler", dask_cluster,
                                                 "--batch-size", "1"))
        victim = _freeze_first_busy_worker(client, scorer, worker_pids)
        assert victim is not None, f"the run ended before any task was seen running: {scorer.returncode}"
        os.kill(worker_pids[victim], signal.SIGKILL)
    assert scorer.wait(timeout=300) == 0
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
