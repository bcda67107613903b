"""A run that meets damage or a stop: corrupt chunks fail their unit only (exit 3, retried on
re-run), --max-failures, Ctrl-C/SIGTERM (exit 130, resumable), a write refused for want of
space (exit 2, parts whole, resumable). Damage is made by overwriting chunk files of stores
written by the standard writer; the moments are read off the output directory, never timed."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import zarr
from distributed import Client

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.sink import read_scores
from tests.scorer.test_reliability import _freeze_first_busy_worker

KEY = ["Metadata_Image", "Metadata_ObjectNumber", "target_class"]
NOT_ZSTD = b"\x00these bytes are no zstd frame\xff" * 8
"""What a damaged chunk holds instead of its compressed bytes."""
POLL_SECONDS = 0.002


def overwrite_chunk(array_path, position, data=NOT_ZSTD):
    """Replace the stored bytes of the chunk at grid ``position`` of the Zarr array at
    ``array_path``; returns the bytes it held, to put them back."""
    array = zarr.open_array(str(array_path), mode="r")
    path = array_path / array.metadata.encode_chunk_key(tuple(position))
    before = path.read_bytes()
    path.write_bytes(data)
    return before


WELLS = {("A", 1): 2, ("A", 2): 9, ("B", 1): 9, ("B", 2): 9}
"""Cells per well: A01 holds few, so its part file is the smallest."""


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    fields = {well: [make_cells((48, 48), n, n_channels=3, radius=5, seed=3 * n + ord(well[0]) + well[1])]
              for well, n in WELLS.items()}
    return write_plate(tmp_path_factory.mktemp("plate") / "plate.zarr", fields, name="P", chunks=(24, 24))


def _argv(plate, model, output, *extra):
    return ["score", str(plate), "-m", str(model), "-o", str(output), "--target", "all", "-q", *extra]


def _rows(output):
    return read_scores(output).to_pandas().sort_values(KEY).reset_index(drop=True)


def _assert_same_rows(output, expected):
    """The rows of ``output`` are ``expected``'s; floats to 1e-6: float32 sums made in another
    process (by the command-line runs) may differ in the last bit."""
    pd.testing.assert_frame_equal(_rows(output), expected.reset_index(drop=True), check_exact=False, rtol=1e-6)


def _manifest(output):
    return json.loads((output / "_gradcamo.json").read_text())


def _parts(output):
    return sorted(p.name for p in output.glob("part-*.parquet")) if output.exists() else []


def _leftovers(output):
    """Temporary files and the lock: none may outlive a run, however it ended."""
    return [name for name in os.listdir(output) if name.startswith(".") or name.endswith(".lock")]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, plate, model_2d):
    output = tmp_path_factory.mktemp("clean") / "scores"
    assert main(_argv(plate, model_2d, output)) == 0
    return output


@pytest.mark.parametrize("array", ["s0", "labels/cells/s0"], ids=["image chunk", "label chunk"])
def test_a_corrupt_chunk_fails_its_unit_only_and_a_rerun_retries_it(tmp_path, plate, clean, model_2d, capsys, array):
    path = plate / "A/2/0" / array
    position = (0, 1, 0) if array == "s0" else (1, 0)
    original = overwrite_chunk(path, position)
    try:
        code = main(_argv(plate, model_2d, tmp_path / "scores"))
        captured = capsys.readouterr()
    finally:
        overwrite_chunk(path, position, original)
    assert code == 3
    lines = captured.err.splitlines()
    cause = ("RuntimeError: Zstd decompression error: invalid input data (unreadable chunk: "
             f"plate.zarr/A/2/0/{array}/{'c/0/1/0' if array == 's0' else 'c/1/0'})")
    assert lines[0] == f"failed: plate.zarr/A/2/0 (whole image): {cause}"
    assert lines[1].startswith("error: 1 of 4 work units failed") and "run the same command again" in lines[1]
    assert len(lines) == 2
    manifest = _manifest(tmp_path / "scores")
    assert [(f["image"], f["block"], f["cause"]) for f in manifest["failures"]] == [
        ("plate.zarr/A/2/0", "whole image", cause)]
    expected = _rows(clean)
    written = _rows(tmp_path / "scores")
    assert written.equals(expected[expected.Metadata_Image != "plate.zarr/A/2/0"].reset_index(drop=True))
    assert not _leftovers(tmp_path / "scores")
    _assert_shown_incomplete(tmp_path, capsys, "1 of 4 work units failed (first: plate.zarr/A/2/0 (whole image): "
                                               "RuntimeError: Zstd decompression error")

    before = {name: (tmp_path / "scores" / name).stat().st_mtime_ns for name in _parts(tmp_path / "scores")}
    assert main(_argv(plate, model_2d, tmp_path / "scores")) == 0
    assert "(3 of 4 work units resumed" in capsys.readouterr().out
    after = {name: (tmp_path / "scores" / name).stat().st_mtime_ns for name in _parts(tmp_path / "scores")}
    assert {name: after[name] for name in before} == before and len(after) == 4
    assert _rows(tmp_path / "scores").equals(expected)
    assert _manifest(tmp_path / "scores")["failures"] == []


def _assert_shown_incomplete(tmp_path, capsys, why):
    """``summary`` warns and ``report`` says so at the top and in the provenance."""
    assert main(["summary", str(tmp_path / "scores")]) == 0
    assert f"incomplete: {why}" in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(tmp_path / "scores"), "-o", str(tmp_path / "report.html"), "--gallery", "0", "-q"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("is incomplete: " + why) == 1 and "<th class='key'>complete</th>" in page


def test_a_corrupt_label_chunk_of_a_blocked_image_fails_that_image_only(tmp_path, model_2d):
    image, labels = make_cells((64, 64), 12, n_channels=3, radius=5, seed=8)
    first = write_image_store(tmp_path / "one.zarr", image, labels, chunks=(16, 16))
    second = write_image_store(tmp_path / "two.zarr", image, labels, chunks=(16, 16))
    overwrite_chunk(second / "labels/cells/s0", (2, 1))
    summary = score([first, second], model_2d, tmp_path / "scores", block_shape=(32, 32))
    (failure,) = summary.failures
    assert (failure.image, failure.block) == ("two.zarr", "measuring, y 32:64, x 0:32")
    assert failure.cause.endswith("(unreadable chunk: two.zarr/labels/cells/s0/c/2/1)")
    table = read_scores(tmp_path / "scores")
    assert set(table["Metadata_Image"].to_pylist()) == {"one.zarr"} and table.num_rows == labels.max()


def test_max_failures_stops_the_run_early(tmp_path, plate, model_2d, capsys):
    damaged = [plate / f"{well}/0/s0" for well in ("A/2", "B/1", "B/2")]
    originals = [overwrite_chunk(path, (0, 0, 0)) for path in damaged]
    try:
        code = main(_argv(plate, model_2d, tmp_path / "scores", "--max-failures", "0", "--workers", "1"))
        err = capsys.readouterr().err
    finally:
        for path, original in zip(damaged, originals):
            overwrite_chunk(path, (0, 0, 0), original)
    assert code == 3
    assert "stopped after 1 failed work unit (--max-failures 0)" in err
    manifest = _manifest(tmp_path / "scores")
    assert len(manifest["failures"]) == 1 and manifest["stopped_early"] is True
    assert not _leftovers(tmp_path / "scores")


def test_max_failures_must_be_a_whole_number(tmp_path, plate, model_2d, capsys):
    assert main(_argv(plate, model_2d, tmp_path / "scores", "--max-failures", "-1")) == 2
    assert "--max-failures: expected a whole number >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()


def test_rerunning_a_complete_run_says_there_is_nothing_to_do(plate, clean, model_2d, capsys):
    assert main(_argv(plate, model_2d, clean)) == 0
    assert capsys.readouterr().out == f"nothing to do: {clean} already holds the scores of all 4 work units of 4 images\n"


@pytest.fixture
def strict_cluster(monkeypatch, request):
    """The test cluster, its scheduler failing a task after two worker deaths, as gradcamo's
    local clusters do (LOCAL_ALLOWED_FAILURES)."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "1")
    return request.getfixturevalue("dask_cluster")


def test_a_unit_whose_worker_dies_twice_is_a_failed_unit(tmp_path, model_2d, strict_cluster):
    """The worker running the unit is frozen mid-task, the other one too, and the first killed;
    once the scheduler has handed the unit to the other (frozen: it cannot finish it), that one
    is killed as well. The unit fails with KilledWorker and the run ends with exit 3."""
    image, labels = make_cells((192, 192), 60, n_channels=3, radius=5, seed=31)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    command = [sys.executable, "-m", "gradcamo", *_argv(store, model_2d, tmp_path / "scores", "--scheduler",
                                                           strict_cluster, "--batch-size", "1")]
    scorer = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    with Client(strict_cluster) as client:
        worker_pids = client.run(os.getpid)
        first = _freeze_first_busy_worker(client, scorer, worker_pids)
        assert first is not None, f"the run ended before its task was seen running: {scorer.returncode}"
        (second,) = set(worker_pids) - {first}
        os.kill(worker_pids[second], signal.SIGSTOP)
        os.kill(worker_pids[first], signal.SIGKILL)
        while not client.processing().get(second):
            time.sleep(POLL_SECONDS)
        os.kill(worker_pids[second], signal.SIGKILL)
    _, err = scorer.communicate(timeout=300)
    assert scorer.returncode == 3, err
    assert err.startswith("failed: cells.zarr (whole image): KilledWorker: ")
    assert _manifest(tmp_path / "scores")["failures"][0]["cause"].startswith("KilledWorker")


def _freeze_when_first_part_appears(process, output):
    """Stop (SIGSTOP) the run's process group once its first part file exists; False if it ended first."""
    while process.poll() is None:
        if _parts(output):
            os.killpg(process.pid, signal.SIGSTOP)
            return True
        time.sleep(POLL_SECONDS)
    return False


STOPS = {
    "Ctrl-C in a terminal": (signal.SIGINT, os.killpg, ["--workers", "2"]),
    "SIGTERM to the scorer": (signal.SIGTERM, os.kill, []),
}
"""A terminal sends SIGINT to the whole process group (the worker processes too); kill(1) one process."""


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_an_interrupted_run_exits_130_keeps_its_parts_and_resumes(tmp_path, plate, clean, model_2d, stop):
    """Frozen once the first part is written and checked to be mid-run, sent the signal, then
    let go: it must stop with 130 and one message, leave whole parts and no temp or lock file,
    and resume."""
    number, send, extra = STOPS[stop]
    output = tmp_path / "scores"
    command = [sys.executable, "-m", "gradcamo", *_argv(plate, model_2d, output, *extra)]
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        assert _freeze_when_first_part_appears(process, output), process.stderr.read()
        assert not _manifest(output)["finished"] and len(_parts(output)) < len(_parts(clean))
        send(process.pid, number)
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"interrupted: {len(_parts(output))} of 4 work units done, kept in {output}; "
                          "run the same command again to resume")
    assert not _leftovers(output)
    assert main(_argv(plate, model_2d, output)) == 0
    _assert_same_rows(output, _rows(clean))


def test_a_full_disk_stops_the_run_with_whole_parts_and_it_resumes(tmp_path, plate, clean, model_2d):
    """The kernel refuses writes past RLIMIT_FSIZE (EFBIG), as a full disk refuses them (ENOSPC):
    the limit lets the smallest part file through and no other."""
    sizes = sorted((clean / name).stat().st_size for name in _parts(clean))
    limit = (sizes[0] + sizes[1]) // 2
    assert (clean / "_gradcamo.json").stat().st_size < limit < sizes[1]

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    output = tmp_path / "scores"
    result = subprocess.run([sys.executable, "-m", "gradcamo", *_argv(plate, model_2d, output)],
                            preexec_fn=limited, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: cannot write the output: ") and "File too large" in result.stderr
    assert result.stderr.count("\n") == 1 and "run the same command again" in result.stderr
    assert not _leftovers(output)
    kept = _rows(output)  # the smallest part at most, whole
    assert len(_parts(output)) <= 1 and set(kept.Metadata_Image) <= {"plate.zarr/A/1/0"}
    expected = _rows(clean)
    _assert_same_rows(output, expected[expected.Metadata_Image.isin(kept.Metadata_Image)])
    assert main(_argv(plate, model_2d, output)) == 0
    _assert_same_rows(output, _rows(clean))
