"""`gradcamo score` on the command line: bad input, empty labels, URLs, axes, a real distributed cluster."""

import os

import numpy as np
import onnx
import pytest
import zarr
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_image, write_labels

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.session import gpu_present
from gradcamo.scorer.sink import read_scores
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D


@pytest.fixture(scope="module")
def cells():
    return make_cells((40, 36), 5, n_channels=3, radius=5, seed=21)


@pytest.fixture(scope="module")
def store(tmp_path_factory, cells):
    return write_image_store(tmp_path_factory.mktemp("in") / "cells.zarr", *cells, chunks=(20, 18))


def _write_raw(path, image, labels, *, axes=("c", "y", "x"), label_axes=("y", "x"), label_names=("cells",)):
    """An OME-Zarr image written with ome-zarr-py but without gradcamo's writer's guarantees."""
    fmt = format_from_version("0.5")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(image, root, axes=list(axes), fmt=fmt, scale_factors=[])
    for name in label_names:
        write_labels(labels, root, name=name, axes=list(label_axes), fmt=fmt, scale_factors=[], scaler=None)
    return path


def _plain_zarr(path):
    zarr.open_group(str(path), mode="w").create_array("data", shape=(4, 4), dtype="u1")
    return path


def run_score(capsys, *args):
    code = main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_model(tmp_path, kind):
    path = tmp_path / f"{kind}.onnx"
    if kind == "text":
        path.write_text("not a model")
    else:
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([node], "g", [value], [onnx.helper.make_tensor_value_info("y", 1, [1])])
        onnx.save(onnx.helper.make_model(graph), path)
    return path


BAD_INPUTS = {
    "missing path": (lambda t, c, s, m: ([t / "nope.zarr", "-m", m], "nope.zarr: no such file")),
    "plain directory": (lambda t, c, s, m: ([t.joinpath("plain").mkdir() or t / "plain", "-m", m], "plain")),
    "zarr but not OME": (
        lambda t, c, s, m: ([_plain_zarr(t / "z.zarr"), "-m", m], "not OME-Zarr")
    ),
    "no labels": (
        lambda t, c, s, m: ([_write_raw(t / "n.zarr", c[0], c[1], label_names=()), "-m", m], "no label images")
    ),
    "several labels": (
        lambda t, c, s, m: ([_write_raw(t / "s.zarr", *c, label_names=("a", "b")), "-m", m], "--labels")
    ),
    "unknown --labels": (lambda t, c, s, m: ([s, "-m", m, "--labels", "nuclei"], "no label image 'nuclei'")),
    "label shape mismatch": (
        lambda t, c, s, m: ([_write_raw(t / "x.zarr", c[0], c[1][:, :30]), "-m", m], "spatial shape")
    ),
    "float labels": (
        lambda t, c, s, m: ([_write_raw(t / "f.zarr", c[0], c[1].astype("f4")), "-m", m], "must be integers")
    ),
    "channel count": (lambda t, c, s, m: ([_write_raw(t / "c.zarr", c[0][:2], c[1]), "-m", m], "channels")),
    "channel out of range": (lambda t, c, s, m: ([s, "-m", m, "--channels", "0,1,7"], "--channels: [7]")),
    "text model": (lambda t, c, s, m: ([s, "-m", _bad_model(t, "text")], "text.onnx")),
    "model without contract": (lambda t, c, s, m: ([s, "-m", _bad_model(t, "plain")], "plain.onnx")),
    "missing model": (lambda t, c, s, m: ([s, "-m", t / "absent.onnx"], "absent.onnx")),
    "batch size 0": (lambda t, c, s, m: ([s, "-m", m, "--batch-size", "0"], "--batch-size")),
    "negative workers": (lambda t, c, s, m: ([s, "-m", m, "--workers", "-1"], "--workers")),
    "unknown target": (lambda t, c, s, m: ([s, "-m", m, "--target", "zebra"], "'zebra'")),
    "unknown device": (lambda t, c, s, m: ([s, "-m", m, "--device", "tpu"], "--device")),
    "unknown convention": (lambda t, c, s, m: ([s, "-m", m, "--convention", "fancy"], "--convention")),
    "timepoint out of range": (lambda t, c, s, m: ([s, "-m", m, "--timepoint", "3"], "--timepoint")),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, cells, store, model_2d, case):
    arguments, expected = BAD_INPUTS[case](tmp_path, cells, store, model_2d)
    code, _, err = run_score(capsys, *arguments, "-o", tmp_path / "scores")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "scores").exists()


@pytest.mark.skipif(gpu_present(), reason="a GPU is present: --device cuda may work here")
def test_device_cuda_without_a_gpu_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, store, model_2d):
    code, _, err = run_score(capsys, store, "-m", model_2d, "-o", tmp_path / "scores", "--device", "cuda")
    assert code == 2 and err.startswith("error: --device cuda: onnxruntime did not get the CUDA provider")
    assert not (tmp_path / "scores").exists()


def test_output_holding_other_files_is_refused(tmp_path, capsys, store, model_2d):
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "results.csv").write_text("keep me")
    code, _, err = run_score(capsys, store, "-m", model_2d, "-o", tmp_path / "scores")
    assert code == 2 and "results.csv" in err
    assert os.listdir(tmp_path / "scores") == ["results.csv"]


def test_debug_shows_the_traceback(tmp_path, capsys, model_2d):
    code = main(["--debug", "score", str(tmp_path / "nope.zarr"), "-m", str(model_2d), "-o", str(tmp_path / "s")])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_empty_label_image_gives_a_valid_empty_dataset(tmp_path, capsys, cells, model_2d):
    path = write_image_store(tmp_path / "empty.zarr", cells[0], np.zeros_like(cells[1]))
    code, out, _ = run_score(capsys, path, "-m", model_2d, "-o", tmp_path / "scores", "--quiet")
    assert code == 0 and "wrote 0 rows" in out
    assert read_scores(tmp_path / "scores").num_rows == 0


def test_the_last_line_counts_in_the_singular_for_one(tmp_path, capsys, model_2d):
    """One cell of one image in one work unit: no "1 cells" in the run's last line, nor when nothing is left to do."""
    image, labels = make_cells((24, 24), 1, n_channels=3, radius=5, seed=3)
    path = write_image_store(tmp_path / "one.zarr", image, labels)
    output = tmp_path / "scores"
    code, out, _ = run_score(capsys, path, "-m", model_2d, "-o", output, "--quiet")
    assert code == 0 and out.startswith(f"wrote 1 row for 1 cell of 1 image to {output} (0 of 1 work unit resumed, ")
    code, out, _ = run_score(capsys, path, "-m", model_2d, "-o", output, "--quiet")
    assert code == 0 and out == f"nothing to do: {output} already holds the scores of all 1 work unit of 1 image\n"
    code, out, _ = run_score(capsys, path, "-m", model_2d, "-o", tmp_path / "all", "--target", "all", "--quiet")
    assert code == 0 and out.startswith("wrote 3 rows for 1 cell of 1 image to ")


def test_time_axis_channel_choice_and_file_url(tmp_path, capsys, model_2d):
    image, labels = make_cells((36, 36), 4, n_channels=4, radius=5, seed=5)
    timecourse = np.stack([np.zeros_like(image), image])  # t=0 is blank; t=1 holds the cells
    path = _write_raw(tmp_path / "tc.zarr", timecourse, labels, axes=("t", "c", "y", "x"))
    url = f"file://{path}"
    code, _, err = run_score(
        capsys, url, "-m", model_2d, "-o", tmp_path / "scores", "--timepoint", "1", "--channels", "3,0,2",
        "--target", "all", "--quiet",
    )
    assert code == 0, err
    frame = read_scores(tmp_path / "scores").to_pandas()
    assert set(frame.Metadata_Image) == {"tc.zarr"}
    assert_matches(frame, reference_rows(model_2d, image[[3, 0, 2]], labels, CROP_2D, [0, 1, 2]))


def test_an_existing_distributed_cluster_scores_exactly(tmp_path, capsys, cells, store, model_2d, dask_cluster):
    code, _, err = run_score(capsys, store, "-m", model_2d, "-o", tmp_path / "scores",
                             "--scheduler", dask_cluster, "--target", "all", "--quiet")
    assert code == 0, err
    frame = read_scores(tmp_path / "scores").to_pandas()
    assert_matches(frame, reference_rows(model_2d, *cells, CROP_2D, [0, 1, 2]))
