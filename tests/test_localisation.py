"""gradcamo.localisation: analytic cases and a per-voxel formulation of rank accuracy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradcamo.cam import gradcamo_score, score_ratio
from gradcamo.localisation import localisation_metrics, peak_values, rank_counts


def _metrics(cam, mask):
    inside, total, score = gradcamo_score(cam, mask)
    k = mask.reshape(len(mask), -1).sum(axis=1)
    return localisation_metrics(score, score_ratio(inside, total)[1], k, mask[0].size, rank_counts(cam, mask),
                                peak_values(cam, mask))


def test_cam_on_the_cell_only():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1:3, 1:3] = True
    m = _metrics(np.where(mask, 2.0, 0.0), mask)
    assert (m.mask_fraction[0], m.enrichment[0], m.rank_accuracy[0]) == (0.25, 4.0, 1.0)
    assert m.pointing_known[0] and m.pointing_hit[0]


def test_uniform_cam_ranks_like_chance_and_points_nowhere():
    mask = np.zeros((1, 3, 4), dtype=bool)
    mask[0, 0] = True
    m = _metrics(np.ones((1, 3, 4)), mask)
    assert m.enrichment[0] == pytest.approx(1.0) and m.rank_accuracy[0] == pytest.approx(4 / 12)
    assert not m.pointing_known[0] and not m.pointing_hit[0]


def test_ties_at_the_kth_value_count_by_their_share():
    # K = 2; values 3 > 1 = 1 = 1: the top-2 are the 3 and one of three 1s, two of which are in the mask
    cam = np.array([[3.0, 1.0, 1.0, 1.0]])
    mask = np.array([[False, True, True, False]])
    np.testing.assert_array_equal(rank_counts(cam, mask), [[0, 1, 2, 3]])
    assert _metrics(cam, mask).rank_accuracy[0] == pytest.approx((0 + 1 * 2 / 3) / 2)
    np.testing.assert_array_equal(peak_values(cam, mask), [[1.0, 3.0]])
    assert _metrics(cam, mask).pointing_known[0] and not _metrics(cam, mask).pointing_hit[0]


def test_empty_cam_and_empty_mask_are_undefined():
    cam = np.array([[0.0, 0.0], [0.0, 1.0]])
    mask = np.array([[True, False], [False, False]])
    m = _metrics(cam, mask)
    assert np.isnan(m.rank_accuracy).all() and np.isnan(m.enrichment[1]) and m.mask_fraction[1] == 0
    assert not m.pointing_known[0] and m.pointing_known[1] and not m.pointing_hit[1]


@st.composite
def _cam_and_mask(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    cam = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5])))
    return cam, draw(hnp.arrays(np.bool_, shape))


@settings(max_examples=100, deadline=None)
@given(_cam_and_mask())
def test_rank_accuracy_is_the_mean_chance_of_mask_voxels_to_be_in_the_top_k(cam_mask):
    """P(voxel in top K) = clip((K - #greater) / #equal, 0, 1) under random tie-breaking, averaged over the mask."""
    cam, mask = cam_mask
    m = _metrics(cam, mask)
    for n in range(len(cam)):
        values, inside = cam[n].ravel(), mask[n].ravel()
        k = inside.sum()
        if k == 0 or not values.any():
            assert np.isnan(m.rank_accuracy[n])
            continue
        chance = [np.clip((k - (values > v).sum()) / (values == v).sum(), 0, 1) for v in values[inside]]
        assert m.rank_accuracy[n] == pytest.approx(np.mean(chance), abs=1e-12)
        assert 0.0 <= m.rank_accuracy[n] <= 1.0
        at_max = values == values.max()
        assert m.pointing_known[n] == (inside[at_max].all() or not inside[at_max].any())
        assert m.pointing_hit[n] == (m.pointing_known[n] and inside[at_max].all())
