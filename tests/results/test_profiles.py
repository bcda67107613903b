"""`gradcamo profiles`: one row per cell in CellProfiler naming, read by pycytominer and copairs as they are."""

import numpy as np
import pandas as pd
import pytest
from pycytominer import aggregate, feature_select, normalize
from pycytominer.cyto_utils import infer_cp_features

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_plate
from gradcamo.errors import InputError
from gradcamo.results.profiles import profile_table
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.sink import part_files

FEATURES = [f"Cells_DeepProfile_{k}" for k in range(6)]  # the tiny 2D model's target layer has 6 channels


@pytest.fixture(scope="module")
def scores(tmp_path_factory, model_2d):
    tmp = tmp_path_factory.mktemp("profiles")
    fields = {(row, column): [make_cells((40, 40), 5, n_channels=3, radius=5, seed=10 * column + site)
                              for site in range(2)] for row, column in (("A", 1), ("B", 2))}
    store = write_plate(tmp / "plate.zarr", fields, name="P1")
    score([store], model_2d, tmp / "scores", target="all", methods="gradcam,hirescam", features=True, workers=1,
          threads=1)
    return tmp / "scores"


def score_rows(scores):
    return pd.concat([pd.read_parquet(path) for path in part_files(scores)])


def test_profiles_are_one_row_per_cell_in_cellprofiler_naming(tmp_path, capsys, scores):
    output = tmp_path / "profiles.parquet"
    assert main(["profiles", str(scores), "-o", str(output), "--method", "hirescam"]) == 0
    profiles = pd.read_parquet(output)
    rows = score_rows(scores)
    rows = rows[rows["method"] == "hirescam"]
    assert f"wrote {len(profiles)} cell profiles to {output}" in capsys.readouterr().out
    assert len(profiles) == rows.groupby(["Metadata_Image", "Metadata_ObjectNumber"]).ngroups == len(rows) / 3
    assert not profiles.duplicated(["Metadata_Image", "Metadata_ObjectNumber"]).any()
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "Metadata_Image"} \
        <= set(profiles.columns)
    assert set(profiles.Metadata_Well) == {"A01", "B02"} and set(profiles.Metadata_Site) == {0, 1}
    inferred = infer_cp_features(profiles)
    assert inferred == [c for c in profiles.columns if not c.startswith("Metadata_")]
    assert set(FEATURES) <= set(inferred)
    for name in ("a", "b", "c"):
        assert {f"Cells_GradCAMO_grad_camo_{name}", f"Cells_GradCAMO_prob_target_{name}"} <= set(inferred)
    # values: the score rows of each target, the features of the cell
    for target, name in enumerate("abc"):
        expected = rows[rows.target_class == target].set_index(["Metadata_Image", "Metadata_ObjectNumber"])
        got = profiles.set_index(["Metadata_Image", "Metadata_ObjectNumber"]).loc[expected.index]
        np.testing.assert_array_equal(got[f"Cells_GradCAMO_grad_camo_{name}"], expected.grad_camo)
        np.testing.assert_array_equal(got[FEATURES].to_numpy(), expected[[f"feature_{k}" for k in range(6)]])
        assert (got.Metadata_PredictedClass == expected.predicted_class).all()


def test_pycytominer_and_copairs_read_the_profiles(tmp_path, scores):
    profiles = profile_table(scores, method="gradcam").to_pandas()
    per_site = aggregate(profiles, strata=["Metadata_Plate", "Metadata_Well", "Metadata_Site"], features="infer")
    assert set(FEATURES) <= set(per_site.columns) and len(per_site) == 4
    assert np.allclose(per_site.set_index(["Metadata_Well", "Metadata_Site"])[FEATURES].sort_index(),
                       profiles.groupby(["Metadata_Well", "Metadata_Site"])[FEATURES].median().sort_index())
    normalized = normalize(per_site, features="infer", meta_features="infer", method="standardize")
    assert np.allclose(normalized[FEATURES].mean(), 0, atol=1e-6)
    selected = feature_select(normalized, features="infer", operation=["variance_threshold"])
    assert any(c.startswith("Cells_DeepProfile_") for c in selected.columns)

    from copairs.map import average_precision

    meta = per_site[[c for c in per_site.columns if c.startswith("Metadata_")]].reset_index(drop=True)
    ap = average_precision(meta, per_site[FEATURES].to_numpy(), pos_sameby=["Metadata_Well"], pos_diffby=[],
                           neg_sameby=[], neg_diffby=["Metadata_Well"], progress_bar=False)
    assert len(ap) == 4 and ap.average_precision.between(0, 1).all()


def test_several_methods_need_one_chosen(scores):
    with pytest.raises(InputError, match=r"was scored with gradcam, hirescam; choose one with --method"):
        profile_table(scores)
    with pytest.raises(InputError, match=r"holds no 'layercam' rows \(scored with gradcam, hirescam\)"):
        profile_table(scores, method="layercam")


def test_one_target_gives_one_set_of_score_columns(tmp_path, model_2d):
    from gradcamo.data.write import write_image_store

    store = write_image_store(tmp_path / "cells.zarr", *make_cells((40, 36), 4, n_channels=3, radius=5, seed=3))
    score([store], model_2d, tmp_path / "scores", workers=1, threads=1)
    profiles = profile_table(tmp_path / "scores").to_pandas()
    rows = score_rows(tmp_path / "scores").sort_values("Metadata_ObjectNumber")
    assert not any(c.startswith("Cells_DeepProfile_") for c in profiles.columns)
    np.testing.assert_array_equal(profiles.Cells_GradCAMO_grad_camo, rows.grad_camo)
    np.testing.assert_array_equal(profiles.Cells_GradCAMO_pointing_hit, rows.pointing_hit.astype(float))
    assert profiles.Metadata_Plate.isna().all() and (profiles.Metadata_Site == 0).all()
    assert profiles.Metadata_MissingChunks.tolist() == rows.missing_chunks.tolist()
