"""The worker plugin owns the run's onnxruntime sessions: none outlives the run, and a second run in the same
process (the default local worker runs in-process) scores with the model file as it is then."""

import gc
import shutil

import onnxruntime as ort
import pytest
import torch

import gradcamo
from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.sink import read_scores
from tests.reference import assert_matches, reference_rows
from tests.tiny_models import CROP_2D, tiny_classifier


def _live_sessions():
    gc.collect()
    return sum(type(thing) is ort.InferenceSession for thing in gc.get_objects())


@pytest.fixture(scope="module")
def cells():
    return make_cells((40, 36), 5, n_channels=3, radius=5, seed=21)


def test_a_second_run_with_a_changed_model_file_builds_a_new_session(tmp_path, cells, model_2d):
    store = write_image_store(tmp_path / "cells.zarr", *cells, chunks=(20, 18))
    model = tmp_path / "model.onnx"
    shutil.copy(model_2d, model)
    before = _live_sessions()
    assert main(["score", str(store), "-m", str(model), "-o", str(tmp_path / "first"), "--target", "all",
                 "--quiet"]) == 0
    assert _live_sessions() == before  # the run's sessions went with its plugin

    changed = tiny_classifier(2)
    with torch.no_grad():
        changed[0].weight.neg_()  # another classifier, the same file name
    gradcamo.export_model(changed, "2", CROP_2D, model, mean=[100.0] * 3, std=[300.0] * 3)
    assert main(["score", str(store), "-m", str(model), "-o", str(tmp_path / "second"), "--target", "all",
                 "--quiet"]) == 0
    assert _live_sessions() == before
    first = read_scores(tmp_path / "first").to_pandas()
    second = read_scores(tmp_path / "second").to_pandas()
    assert_matches(first, reference_rows(model_2d, *cells, CROP_2D, [0, 1, 2]))
    assert_matches(second, reference_rows(model, *cells, CROP_2D, [0, 1, 2]))
    assert not (first.sort_values(["Metadata_ObjectNumber", "target_class"]).grad_camo.to_numpy()
                == second.sort_values(["Metadata_ObjectNumber", "target_class"]).grad_camo.to_numpy()).all()
