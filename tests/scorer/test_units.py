"""Work units: vectorised cutting, the chunk cache, and whole-image vs blocked scoring."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer import head
from gradcamo.scorer.crops import crop_starts, cut_cells, cut_window
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.regions import ChunkCache
from gradcamo.scorer.sink import read_scores
from gradcamo.scorer.engine import _padded_to
from tests.tiny_models import CROP_2D


@settings(max_examples=40, deadline=None)
@given(
    centroids=st.lists(st.tuples(st.floats(-3, 25), st.floats(-3, 30)), min_size=1, max_size=6),
    crop=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_cut_cells_equals_one_window_per_cell(centroids, crop):
    rng = np.random.default_rng(0)
    image = rng.integers(1, 1000, (2, 22, 27)).astype(np.uint16)
    labels = rng.integers(0, 4, (22, 27)).astype(np.uint32)
    ids = np.arange(1, len(centroids) + 1) % 4
    crops, masks, pads = cut_cells(image, labels, ids, np.asarray(centroids), crop)
    for n, start in enumerate(crop_starts(centroids, crop)):
        window, pad = cut_window(image, start, crop)
        label_window, _ = cut_window(labels, start, crop)
        np.testing.assert_array_equal(crops[n], window.astype(np.float32))
        np.testing.assert_array_equal(masks[n], label_window == ids[n])
        assert pads[n] == pad
    assert crops.dtype == np.float32 and masks.dtype == bool


def test_chunk_cache_reads_what_zarr_reads_and_each_chunk_once(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(3, 37, 41), chunks=(1, 10, 7), dtype="uint16")
    data = np.random.default_rng(1).integers(0, 1000, array.shape).astype(np.uint16)
    array[...] = data
    cache = ChunkCache(max_bytes=10**6)
    for index in [(slice(None), slice(3, 30), slice(0, 41)), (1, slice(9, 11), slice(6, 8)),
                  (0, slice(0, 37), slice(40, 41))]:
        np.testing.assert_array_equal(cache.read(array, index), data[index])
    assert cache.reads == 3 * 3 * 6 + 0 + 1  # the chunks the reads touch, each once


@pytest.mark.parametrize("block_shape", [None, (16, 16)], ids=["whole image, one pass", "blocks, two passes"])
def test_whole_image_and_blocked_units_give_the_same_rows(tmp_path, model_2d, block_shape):
    image, labels = make_cells((48, 40), 8, n_channels=3, radius=5, seed=12)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    reference = score([store], model_2d, tmp_path / "reference", target="all", batch_size=7, block_shape=(48, 40))
    summary = score([store], model_2d, tmp_path / "scores", target="all", batch_size=3, block_shape=block_shape)
    assert summary.units == (1 if block_shape is None else 9) and reference.units == 1
    key = ["Metadata_ObjectNumber", "target_class"]
    expected = read_scores(tmp_path / "reference").to_pandas().sort_values(key).reset_index(drop=True)
    frame = read_scores(tmp_path / "scores").to_pandas().sort_values(key).reset_index(drop=True)
    assert frame.equals(expected)
    assert set(summary.stage_seconds) == {"read", "measure", "cut", "wait", "infer", "table", "write"}


def test_a_batch_padded_to_one_shape_gives_each_sample_its_own_outputs(model_2d):
    """On CUDA a unit's short last batch is padded with repeats of its last crop (one input
    shape per session); the rows kept must be exactly those of the unpadded batch."""
    graph = head.append_score_head(onnx.load(str(model_2d)), crop_spatial=CROP_2D[1:])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    feed = {"image": rng.uniform(0, 500, (3, *CROP_2D)).astype(np.float32), "target": np.array([-1, 0, 2]),
            head.MASK: (rng.random((3, *CROP_2D[1:])) < 0.3).astype(np.float32)}
    padded = _padded_to(feed, 8)
    assert {name: len(value) for name, value in padded.items()} == dict.fromkeys(feed, 8)
    alone = session.run(list(head.HEAD_OUTPUTS), feed)
    kept = [output[:3] for output in session.run(list(head.HEAD_OUTPUTS), padded)]
    for got, expected in zip(kept, alone):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
