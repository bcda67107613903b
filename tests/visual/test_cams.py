"""`gradcamo cams`: the written arrays against the recorded scores, naive crops and an independent torch CAM."""

import gc
import json
import shutil

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from PIL import Image

import gradcamo
from gradcamo.cli import main
from gradcamo.data.write import write_image_store
from gradcamo.scorer.pipeline import score
from tests.reference import torch_gradcam
from tests.tiny_models import CROP_2D, CROP_3D, tiny_classifier


def run_cams(capsys, scored, output, *args):
    code = main(["cams", str(scored.scores), "-o", str(output), "-m", str(scored.model), *map(str, args)])
    return code, capsys.readouterr()


def read_cams(output):
    group = zarr.open_group(str(output / "cams.zarr"), mode="r")
    rows = pq.read_table(output / "cams.parquet").to_pandas()
    return rows, group["image"][:], group["mask"][:], group["cam"][:]


def naive_crop(image, labels, cell, crop_shape):
    """Crop and mask cut from the zero-padded whole image, around the rounded centroid."""
    crop = np.asarray(crop_shape[1:])
    pad = [(0, 0)] + [(int(c), int(c)) for c in crop]
    start = np.floor(np.argwhere(labels == cell).mean(axis=0) + 0.5).astype(int) - crop // 2 + crop
    window = tuple(slice(s, s + c) for s, c in zip(start, crop))
    return np.pad(image.astype(np.float32), pad)[(slice(None),) + window], np.pad(labels, pad[1:])[window] == cell


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("convention", ["raw", "pytorch-grad-cam"])
def test_arrays_reproduce_the_scores_and_torch(tmp_path, capsys, datasets, dims, convention):
    scored = datasets[(dims, convention)]
    code, captured = run_cams(capsys, scored, tmp_path / "cams", "--limit", 500)
    assert code == 0, captured.err
    rows, image, mask, cam = read_cams(tmp_path / "cams")
    crop_shape = CROP_2D if dims == 2 else CROP_3D
    assert image.dtype == np.float32 and mask.dtype == bool and cam.dtype == np.float32
    assert image.shape == (len(rows), *crop_shape) and mask.shape == cam.shape == (len(rows), *crop_shape[1:])
    assert list(rows["index"]) == list(range(len(rows)))
    if dims == 2:
        assert rows.edge_padded.any() and (rows.groupby("Metadata_ObjectNumber").size() == 3).all()

    axes = tuple(range(1, cam.ndim))
    share = (cam.astype(np.float64) * mask).sum(axis=axes) / cam.astype(np.float64).sum(axis=axes)
    np.testing.assert_allclose(share, rows["grad_camo"], rtol=0, atol=1e-6)

    for k, row in rows.iterrows():
        expected_image, expected_mask = naive_crop(scored.image, scored.labels, row.Metadata_ObjectNumber, crop_shape)
        np.testing.assert_array_equal(image[k], expected_image)
        np.testing.assert_array_equal(mask[k], expected_mask)

    reference = torch_gradcam(
        tiny_classifier(dims), "2", image, rows["target_class"].to_numpy(),
        mean=[100.0] * 3, std=[300.0] * 3, convention=convention,
    )
    np.testing.assert_array_equal(reference.targets, rows["target_class"])
    for k in range(len(rows)):
        peak = np.abs(reference.upsampled[k]).max()
        np.testing.assert_allclose(cam[k], reference.upsampled[k], rtol=0, atol=1e-4 * peak)


def test_rows_in_order_with_an_overlay_each(tmp_path, capsys, datasets):
    scored = datasets[(3, "raw")]
    args = ("--where", "grad_camo > 0.1", "--order-by", "grad_camo desc", "--limit", 3)
    code, captured = run_cams(capsys, scored, tmp_path / "cams", *args)
    assert code == 0, captured.err
    assert "wrote the CAMs of 3 rows" in captured.out
    rows, _, mask, _ = read_cams(tmp_path / "cams")
    assert list(rows["grad_camo"]) == sorted(rows["grad_camo"], reverse=True) and (rows["grad_camo"] > 0.1).all()
    assert sorted(p.name for p in (tmp_path / "cams" / "png").iterdir()) == ["0.png", "1.png", "2.png"]
    with Image.open(tmp_path / "cams" / "png" / "0.png") as overlay:
        overlay.load()
        assert overlay.width > 2 * mask.shape[-1]  # max projection and central slice side by side


def test_several_targets_share_crop_and_mask(tmp_path, capsys, datasets):
    scored = datasets[(2, "raw")]
    code, captured = run_cams(capsys, scored, tmp_path / "cams", "--where", "Metadata_ObjectNumber = 2")
    assert code == 0, captured.err
    rows, image, mask, cam = read_cams(tmp_path / "cams")
    assert list(rows["target_class"]) == [0, 1, 2]
    np.testing.assert_array_equal(image[0], image[2])
    np.testing.assert_array_equal(mask[0], mask[1])
    assert not np.array_equal(cam[0], cam[1])


def test_moved_input_needs_input_mapping(tmp_path, capsys, datasets):
    scored = datasets[(2, "raw")]
    original = tmp_path / "before" / "cells.zarr"
    shutil.copytree(scored.store, original)
    score([original], scored.model, tmp_path / "scores", workers=1, threads=1)
    moved = tmp_path / "after" / "cells.zarr"
    original.parent.rename(moved.parent)
    capsys.readouterr()
    base = ["cams", str(tmp_path / "scores"), "-m", str(scored.model), "--limit", "2"]

    assert main([*base, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"input {original} not found" in err and "--input" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main([*base, "-o", str(tmp_path / "out"), "--input", f"{original.parent}={moved.parent}"]) == 0
    assert len(read_cams(tmp_path / "out")[0]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--where", "grad_camo > 2"], "selects no rows"),
        (["--where", "grad_camo >"], "Parser Error"),
        (["--where", "no_such_column = 1"], "no_such_column"),
        (["--limit", "0"], "--limit: expected a whole number >= 1"),
        (["--input", "nonsense"], "expected OLD=NEW"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, datasets, args, message):
    code, captured = run_cams(capsys, datasets[(2, "raw")], tmp_path / "out", *args)
    assert code == 2 and message in captured.err and captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_changed_or_missing_model_is_refused(tmp_path, capsys, datasets, models):
    scored = datasets[(2, "raw")]
    assert main(["cams", str(scored.scores), "-o", str(tmp_path / "out"), "-m", str(models[3])]) == 2
    err = capsys.readouterr().err
    assert "the model file changed since scoring" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    # without --model, the file the scorer recorded in _gradcamo.json is used
    assert main(["cams", str(scored.scores), "-o", str(tmp_path / "out"), "--limit", "1", "-q"]) == 0


def test_changed_labels_are_refused_and_nothing_is_left(tmp_path, capsys, datasets):
    scored = datasets[(2, "raw")]
    shifted = np.roll(scored.labels, 3, axis=1)
    changed = write_image_store(tmp_path / "changed.zarr", scored.image, shifted, chunks=(20, 18))
    code, captured = run_cams(capsys, scored, tmp_path / "out", "--input", f"{scored.store}={changed}")
    assert code == 2 and "changed since scoring" in captured.err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["changed.zarr"]


def test_output_is_replaced_only_with_overwrite(tmp_path, capsys, datasets):
    scored = datasets[(2, "raw")]
    assert run_cams(capsys, scored, tmp_path / "out", "--limit", 1)[0] == 0
    code, captured = run_cams(capsys, scored, tmp_path / "out", "--limit", 2)
    assert code == 2 and "--overwrite" in captured.err
    assert run_cams(capsys, scored, tmp_path / "out", "--limit", 2, "--overwrite")[0] == 0
    assert len(read_cams(tmp_path / "out")[0]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, captured = run_cams(capsys, scored, tmp_path / "other", "--overwrite")
    assert code == 2 and "did not write" in captured.err



def test_model_named_by_the_manifest_needs_no_option(tmp_path, capsys, datasets):
    scored = datasets[(2, "raw")]
    dataset = tmp_path / "scores"
    shutil.copytree(scored.scores, dataset)
    moved = tmp_path / "models" / "m.onnx"
    moved.parent.mkdir()
    shutil.copy(scored.model, moved)
    manifest = json.loads((dataset / "_gradcamo.json").read_text())
    (dataset / "_gradcamo.json").write_text(json.dumps({**manifest, "model": str(tmp_path / "gone" / "m.onnx")}))
    base = ["cams", str(dataset), "--limit", "1"]
    assert main([*base, "-o", str(tmp_path / "a")]) == 2
    assert "named in _gradcamo.json not found; pass --model" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b"), "--input", f"{tmp_path / 'gone'}={moved.parent}"]) == 0


def _live_sessions():
    gc.collect()
    return sum(type(thing) is ort.InferenceSession for thing in gc.get_objects())


def test_a_second_cams_in_one_process_uses_the_model_file_as_it_is_then_and_keeps_no_session(
        tmp_path, capsys, inputs, model_2d):
    """The command owns its sessions: none is left after it, and a changed model file (same path) is read again."""
    image, labels, store = inputs[2]
    model = tmp_path / "model.onnx"
    shutil.copy(model_2d, model)
    changed = tiny_classifier(2)
    with torch.no_grad():
        changed[0].weight.neg_()  # another classifier, the same file name
    before = _live_sessions()
    for name, classifier in (("first", tiny_classifier(2)), ("second", changed)):
        if name == "second":
            gradcamo.export_model(changed, "2", CROP_2D, model, mean=[100.0] * 3, std=[300.0] * 3)
        score([store], model, tmp_path / name, target="all", workers=1, threads=1)
        assert main(["cams", str(tmp_path / name), "-o", str(tmp_path / f"cams-{name}"), "-m", str(model),
                     "--limit", "500", "-q"]) == 0, capsys.readouterr().err  # each row's share checked on the way
        assert _live_sessions() == before
        rows, image_crops, _, cam = read_cams(tmp_path / f"cams-{name}")
        reference = torch_gradcam(classifier, "2", image_crops, rows["target_class"].to_numpy(),
                                  mean=[100.0] * 3, std=[300.0] * 3, convention="raw")
        for k in range(len(rows)):
            peak = np.abs(reference.upsampled[k]).max()
            np.testing.assert_allclose(cam[k], reference.upsampled[k], rtol=0, atol=1e-4 * peak)
