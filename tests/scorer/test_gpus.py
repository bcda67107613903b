"""`score --gpus`: one local worker process per GPU, bound to its device; refused without GPUs.

This machine has no GPU: the listing of two GPUs is given (``list_gpus``, what ``nvidia-smi -L``
would say), the run is real: two worker processes, each bound to its device number, whose
sessions fall back to the CPU (``device="auto"`` without a driver).
"""

import io
import json

import duckdb
import numpy as np
import onnxruntime
import pytest
from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_plate
from gradcamo.scorer import resources
from gradcamo.scorer.pipeline import score
from gradcamo.progress import RunProgress
from gradcamo.scorer.session import CUDA, gpu_present
from rich.console import Console
from rich.progress import Progress
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D

TWO_GPUS = [resources.Gpu(0, "NVIDIA H100 80GB HBM3", "GPU-aaaa"),
            resources.Gpu(1, "NVIDIA H100 80GB HBM3", "GPU-bbbb")]


@pytest.fixture
def plate(tmp_path):
    fields = {("A", 1): [make_cells((40, 40), 4, n_channels=3, radius=5, seed=s) for s in (1, 2)],
              ("B", 2): [make_cells((40, 40), 5, n_channels=3, radius=5, seed=s) for s in (3, 4)]}
    return write_plate(tmp_path / "plate.zarr", fields, name="P", chunks=(20, 20)), fields


@pytest.mark.skipif(gpu_present(), reason="the sessions would take the real GPUs")
@pytest.mark.skipif(CUDA not in onnxruntime.get_available_providers(),
                    reason="several GPUs are used by default only with onnxruntime-gpu")
def test_every_visible_gpu_gets_its_own_worker_process(tmp_path, plate, model_2d, monkeypatch):
    store, fields = plate
    monkeypatch.setattr(resources, "list_gpus", lambda environ=None: TWO_GPUS)
    summary = score([store], model_2d, tmp_path / "scores", threads=1)
    manifest = json.loads((tmp_path / "scores" / "_gradcamo.json").read_text())
    assert [g["worker"] for g in manifest["resources"]["gpus"]] == ["gpu0", "gpu1"]
    workers = manifest["workers"]
    assert {w["worker"]: w["device_id"] for w in workers}.items() <= {"gpu0": 0, "gpu1": 1}.items()
    assert all(w["device"] == "cpu" for w in workers)  # no driver here: onnxruntime took the CPU
    assert sum(w["cells"] for w in workers) == summary.cells == sum(len(np.unique(lab)) - 1
                                                                    for pairs in fields.values() for _, lab in pairs)
    frame = duckdb.sql(f"select * from read_parquet('{tmp_path}/scores/*.parquet') "
                                     "where Metadata_Well = 'B02' and Metadata_Site = 1").df()
    assert_matches(frame, reference_rows(model_2d, *fields[("B", 2)][1], CROP_2D, [-1]))


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU")
def test_gpus_without_a_gpu_is_refused_in_one_line(tmp_path, plate, model_2d, capsys):
    code = main(["score", str(plate[0]), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--gpus", "all"])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus: no NVIDIA GPU is visible" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["foo", "0,x", " ", "²"])
def test_a_gpus_value_that_is_none_is_refused_by_its_syntax_first(tmp_path, plate, model_2d, capsys, value):
    """Named as what it is, whether or not GPUs are visible, and before the options it may not go with."""
    for extra in ([], ["--device", "cpu"]):
        code = main(["score", str(plate[0]), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--gpus", value, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.strip() == (f"error: --gpus: expected all or comma-separated device numbers such as "
                                             f"0,1,3, got {value.strip()!r}")
    assert not (tmp_path / "s").exists()


def test_gpus_with_cpu_device_or_a_scheduler_is_refused(tmp_path, plate, model_2d, capsys):
    for extra in (["--device", "cpu"], ["--scheduler", "tcp://127.0.0.1:1"], ["--workers", "2"]):
        code = main(["score", str(plate[0]), "-m", str(model_2d), "-o", str(tmp_path / "s"), "--gpus", "0", *extra])
        assert code == 2 and f"--gpus: not with {extra[0]}" in capsys.readouterr().err


def test_progress_has_a_line_per_device_with_several_gpus():
    with Progress(console=Console(file=io.StringIO())) as bar:
        shown = RunProgress(bar, "scored", ["cuda:0", "cuda:1"])
        for cells, device in ((100, "cuda:0"), (50, "cuda:1"), (30, "cuda:0")):
            shown.advance(cells, 400, device)
        assert [(t.description.strip(), t.completed) for t in bar.tasks] == [
            ("scored", 180), ("cuda:0", 130), ("cuda:1", 50)]
        assert bar.tasks[0].total == 400
    with Progress(console=Console(file=io.StringIO())) as bar:
        RunProgress(bar, "scored", ["cuda:0"]).advance(10, None, "cuda:0")
        assert [t.completed for t in bar.tasks] == [10]  # one device: the run's line only
