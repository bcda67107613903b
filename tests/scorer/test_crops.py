"""Crop planning against naive per-object loops, on block splits of every kind."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcamo.data.synthetic import make_cells
from gradcamo.scorer.crops import (
    CropCutter, crop_starts, cut_object_crops, cut_window, measure_objects, merge_measurements,
)


def naive_centroids(labels):
    return {int(i): np.argwhere(labels == i).mean(axis=0) for i in np.unique(labels) if i != 0}


@pytest.mark.parametrize("shape,block", [((40, 36), (16, 10)), ((5, 24, 20), (2, 7, 9))])
def test_block_sums_merge_to_whole_image_centroids(shape, block):
    _, labels = make_cells(shape, 8, n_channels=1, radius=5, seed=2)
    parts = []
    for corner in itertools.product(*[range(0, n, b) for n, b in zip(shape, block)]):
        window = tuple(slice(c, c + b) for c, b in zip(corner, block))
        parts.append(measure_objects(labels[window], offset=corner))
    merged = merge_measurements(parts, len(shape))
    expected = naive_centroids(labels)
    assert list(merged.ids) == sorted(expected)
    np.testing.assert_allclose(merged.centroids, np.stack([expected[i] for i in merged.ids]), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(merged.voxels, [np.count_nonzero(labels == i) for i in merged.ids])


@pytest.mark.parametrize("largest_id", [9, 2**31 + 7], ids=["dense ids, counted", "sparse ids, sorted"])
def test_measure_objects_matches_naive_sums_for_dense_and_sparse_ids(largest_id):
    rng = np.random.default_rng(3)
    ids = np.array([0, 1, 5, largest_id], dtype=np.uint64)
    labels = ids[rng.integers(0, 4, (6, 9, 7))]
    measured = measure_objects(labels, offset=(2, 0, 5))
    present = [int(i) for i in np.unique(labels) if i != 0]
    assert list(measured.ids) == present
    np.testing.assert_array_equal(measured.voxels, [np.count_nonzero(labels == i) for i in present])
    expected = [(np.argwhere(labels == i) + (2, 0, 5)).sum(axis=0) for i in present]
    np.testing.assert_allclose(measured.coordinate_sums, expected, rtol=1e-12)


def test_empty_labels_have_no_objects():
    merged = merge_measurements([measure_objects(np.zeros((4, 4), np.uint16))], 2)
    assert len(merged.ids) == 0 and len(merged.voxels) == 0 and merged.centroids.shape == (0, 2)


def test_crop_start_rounds_half_up_and_centres():
    starts = crop_starts([[10.5, 3.49], [0.0, -0.5]], (8, 5))
    np.testing.assert_array_equal(starts, [[11 - 4, 3 - 2], [0 - 4, 0 - 2]])


@settings(max_examples=60, deadline=None)
@given(
    start=st.tuples(st.integers(-12, 20), st.integers(-12, 20)),
    size=st.tuples(st.integers(1, 10), st.integers(1, 10)),
)
def test_cut_window_matches_padding_then_slicing(start, size):
    array = np.arange(3 * 9 * 11, dtype=np.int32).reshape(3, 9, 11) + 1
    window, pad_fraction = cut_window(array, start, size)
    margin = 30  # >= the largest start + size (20 + 10): every window lies inside the padded array
    padded = np.pad(array, ((0, 0), (margin, margin), (margin, margin)))
    expected = padded[:, start[0] + margin : start[0] + margin + size[0], start[1] + margin : start[1] + margin + size[1]]
    np.testing.assert_array_equal(window, expected)
    assert pad_fraction == pytest.approx(np.count_nonzero(expected[0] == 0) / expected[0].size)


def test_object_crops_are_cut_around_each_rounded_centroid_with_zero_padding():
    image, labels = make_cells((30, 26), 4, n_channels=2, radius=5, seed=9)
    ids, crops, masks = cut_object_crops(image, labels, (12, 10))
    pad = ((0, 0), (12, 12), (10, 10))
    padded_image, padded_labels = np.pad(image, pad), np.pad(labels, pad[1:])
    for cell, crop, mask in zip(ids, crops, masks):
        centre = np.floor(naive_centroids(labels)[cell] + 0.5).astype(int)
        y, x = centre - (6, 5) + (12, 10)
        np.testing.assert_array_equal(crop, padded_image[:, y : y + 12, x : x + 10].astype(np.float32))
        np.testing.assert_array_equal(mask, padded_labels[y : y + 12, x : x + 10] == cell)
    assert crops.dtype == np.float32 and len(ids) == labels.max()
    empty = cut_object_crops(image, np.zeros_like(labels), (12, 10))
    assert empty[1].shape == (0, 2, 12, 10) and empty[2].shape == (0, 12, 10)


def test_runs_that_would_wrap_from_one_row_to_the_next_are_split():
    labels = np.zeros((3, 4), np.uint16)
    labels[0, 2:] = 7  # ends row 0 ...
    labels[1, :3] = 7  # ... and starts row 1: one run in the flat array, two rows
    labels[2, 3] = 2
    measured = measure_objects(labels)
    assert list(measured.ids) == [2, 7] and list(measured.voxels) == [1, 5]
    np.testing.assert_array_equal(measured.coordinate_sums, [[2, 3], [0 + 0 + 1 + 1 + 1, 2 + 3 + 0 + 1 + 2]])


def test_cutter_writes_float_masks_equal_to_the_bool_ones():
    image, labels = make_cells((30, 34), 5, n_channels=2, radius=4, seed=5)
    objects = measure_objects(labels)
    cutter = CropCutter(image, labels, crop_starts(objects.centroids, (12, 10)), (12, 10))
    chosen = np.array([3, 0, 0, 4])
    crops, masks = cutter.cut(chosen, objects.ids[chosen])
    same_crops, float_masks = cutter.cut(chosen, objects.ids[chosen], mask_dtype=np.float32)
    assert float_masks.dtype == np.float32 and masks.dtype == bool and crops.dtype == np.float32
    np.testing.assert_array_equal(float_masks, masks.astype(np.float32))
    np.testing.assert_array_equal(crops, same_crops)
    _, expected_crops, expected_masks = cut_object_crops(image, labels, (12, 10))
    np.testing.assert_array_equal(crops, expected_crops[chosen])
    np.testing.assert_array_equal(masks, expected_masks[chosen])
