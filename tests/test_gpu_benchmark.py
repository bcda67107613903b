"""benchmarks/gpu.py's smoke run on the CPU (the script is run unmodified on a GPU machine).

The issue asks for ``--cells 20000 --device cpu``: :func:`test_gpu_benchmark_20000_cells_on_cpu`
runs it with the tiny model (TinyCNN2d at 5x96x96: resnet18's gradient graph runs at ~300 cells/s
on 2 cores, over a minute for 20,000 cells), marked slow: 59 s on the 2 shared cores at load
average ~4.7 (plate 5 s, export 9 s, scoring 32 s, bare onnxruntime 5 s, Python start-up), 209 s
at load ~10. The default suite scores one plate of two fields (2,178 cells) through the same flags.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def smoke_run(tmp_path, cells):
    """Run gpu.py on the CPU with the tiny model for ``cells`` cells; check and return its record."""
    output = tmp_path / "record.json"
    subprocess.run([sys.executable, str(SCRIPT), "--cells", str(cells), "--device", "cpu", "--model", "tiny",
                    "--scratch", str(tmp_path), "--output", str(output)], check=True, timeout=600,
                   capture_output=True)
    record = json.loads(output.read_text())
    assert record["cells"] >= cells and record["providers"] == ["CPUExecutionProvider"]
    assert [w["cells"] for w in record["workers"]] == [record["cells"]]
    assert record["steady_cells_per_s"] > 0 and record["bare_ort_cells_per_s"] > 0
    assert record["ratio_steady_vs_min_bare_ort_cpu_side"] > 0
    assert set(record["stage_ms_per_1000_cells"]) >= {"read", "measure", "cut", "infer", "table", "write"}
    if shutil.which("nvidia-smi") is None:
        assert record["gpu_utilisation_steady"] == {}
    assert not any(tmp_path.glob("gradcamo-gpu-*"))  # the plate is removed
    return record


def test_gpu_benchmark_smoke_run_on_cpu(tmp_path):
    assert smoke_run(tmp_path, 2000)["fields"] == 2


@pytest.mark.slow
def test_gpu_benchmark_20000_cells_on_cpu(tmp_path):
    record = smoke_run(tmp_path, 20000)
    assert record["fields"] == 19  # 1,089 cells per 1080x1080 field at a pitch of 32
