"""The numpy shrinkage LDA and its grouped cross-validation against scikit-learn."""

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gradcamo.errors import InputError
from gradcamo.exaggerate.direction import (
    auroc, cross_validated_auroc, feature_direction, fit_discriminant, group_folds, lda_direction, ledoit_wolf,
    parse_direction,
)


def _codes(seed, n=120, latent=12, wells=6):
    """Correlated codes with feature scales from 0.1 to 10 and a group shift in a few features."""
    generator = np.random.default_rng(seed)
    mixing = generator.normal(size=(latent, latent))
    is_high = np.arange(n) % 2 == 1
    codes = generator.normal(size=(n, latent)) @ mixing * np.geomspace(0.1, 10, latent)
    codes[is_high, :3] += 1.5 * np.geomspace(0.1, 10, latent)[:3]
    well_of = np.where(is_high, 2 * (np.arange(n) % wells // 2) + 1, 2 * (np.arange(n) % wells // 2))
    return codes.astype(np.float32), is_high, np.array([f"B{w:02d}" for w in well_of])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ledoit_wolf_equals_sklearn(seed):
    x = np.random.default_rng(seed).normal(size=(40, 9)) * np.arange(1, 10)
    covariance, shrinkage = ledoit_wolf(x)
    expected, expected_shrinkage = sklearn_ledoit_wolf(x)
    np.testing.assert_allclose(covariance, expected, rtol=1e-12, atol=1e-12)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discriminant_equals_sklearn_lsqr_auto_on_zscored_codes(seed):
    codes, is_high, _ = _codes(seed)
    ours = fit_discriminant(codes, is_high)
    x = StandardScaler().fit_transform(codes.astype(np.float64))
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, is_high)
    np.testing.assert_allclose(ours.coef, reference.coef_[0], rtol=1e-9, atol=1e-12)
    assert ours.intercept == pytest.approx(reference.intercept_[0], rel=1e-9)
    np.testing.assert_allclose(ours.decision(codes), reference.decision_function(x), rtol=1e-9, atol=1e-9)


def test_auroc_equals_sklearn_with_ties():
    generator = np.random.default_rng(3)
    scores = generator.integers(0, 5, 200).astype(float)  # many ties
    labels = generator.random(200) < 0.4
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def _sklearn_oof_auroc(codes, is_high, splits):
    scores = np.empty(len(codes))
    for train, test in splits:
        pipeline = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
        scores[test] = pipeline.fit(codes[train], is_high[train]).decision_function(codes[test])
    return roc_auc_score(is_high, scores), scores


def test_leave_one_well_out_auroc_equals_sklearn():
    codes, is_high, wells = _codes(4)
    folds = group_folds(wells)
    splits = list(LeaveOneGroupOut().split(codes, is_high, wells))
    assert [sorted(f) for f in folds] == [sorted(test) for _, test in splits]
    ours, our_scores = cross_validated_auroc(codes.astype(np.float64), is_high, folds)
    expected, expected_scores = _sklearn_oof_auroc(codes.astype(np.float64), is_high, splits)
    np.testing.assert_allclose(our_scores, expected_scores, rtol=1e-8, atol=1e-8)
    assert ours == pytest.approx(expected, rel=1e-12) and 0.6 < ours < 1.0


def test_grouped_k_fold_auroc_equals_sklearn_on_its_folds():
    codes, is_high, _ = _codes(5, n=240, wells=24)
    wells = np.array([f"W{i % 24}" for i in range(240)])
    splits = list(GroupKFold(n_splits=10).split(codes, is_high, wells))
    ours, _ = cross_validated_auroc(codes.astype(np.float64), is_high, [test for _, test in splits])
    assert ours == pytest.approx(_sklearn_oof_auroc(codes.astype(np.float64), is_high, splits)[0], rel=1e-12)
    folds = group_folds(wells)  # more groups than MAX_FOLDS: 10 folds, no well split between folds
    assert len(folds) == 10 and sorted(np.concatenate(folds)) == list(range(240))
    assert all(len(set(wells[f]) & set(wells[g])) == 0 for i, f in enumerate(folds) for g in folds[i + 1:])


def test_one_well_per_group_gives_no_cross_validated_auroc():
    codes, is_high, _ = _codes(6)
    wells = np.where(is_high, "B02", "B01")
    direction = lda_direction(codes, is_high, [None] * len(codes), wells)
    assert direction.summary["auroc"] is None and "two wells" in direction.summary["auroc_note"]


def test_lda_step_is_one_sd_of_the_projected_codes_towards_high():
    codes, is_high, wells = _codes(7)
    direction = lda_direction(codes, is_high, ["P"] * len(codes), wells)
    x = StandardScaler().fit_transform(codes.astype(np.float64))
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, is_high).coef_[0]
    unit = reference / np.linalg.norm(reference)
    projected = x @ unit
    # the step, mapped to z-scored units, is the sklearn axis scaled by the projections' SD
    np.testing.assert_allclose(direction.step / codes.astype(np.float64).std(axis=0), unit * projected.std(),
                               rtol=1e-9, atol=1e-12)
    assert projected[is_high].mean() > projected[~is_high].mean()
    assert direction.summary["folds"] == {"scheme": "leave-one-well-out", "grouped_by": "well", "groups": 6, "folds": 6}


def test_several_plates_are_the_groups():
    codes, is_high, wells = _codes(8)
    plates = np.where(np.arange(len(codes)) % 4 < 2, "P1", "P2")
    summary = lda_direction(codes, is_high, plates, wells).summary
    assert summary["folds"]["grouped_by"] == "plate" and summary["folds"]["folds"] == 2


def test_feature_direction_is_one_sd_of_that_feature():
    codes, is_high, _ = _codes(9)
    direction = feature_direction(codes, is_high, 2)
    expected = np.zeros(codes.shape[1])
    expected[2] = codes[:, 2].astype(np.float64).std()
    np.testing.assert_allclose(direction.step, expected)
    assert direction.summary["auroc"] == pytest.approx(roc_auc_score(is_high, codes[:, 2]))


@pytest.mark.parametrize("text", ["feature:12", "feature:-1", "feature:x", "pca"])
def test_bad_direction_is_refused(text):
    with pytest.raises(InputError, match="^direction: "):
        parse_direction(text, 12)
    assert parse_direction("feature:11", 12) == ("feature", 11) and parse_direction("lda", 12) == ("lda", None)
