"""``gradcamo demo --exaggerate`` end to end: the classifier's "high" probability and the cells' arms and rim grow
along the LDA direction, measured from trajectories.parquet with numpy."""

import json

import duckdb
import numpy as np
import pytest

from gradcamo.cli import main
from gradcamo.demo.exaggerate import CROP_SHAPE, LATENT_SIZE, make_fields
from gradcamo.demo.train import cell_crops
from gradcamo.exaggerate.autoencoder import open_encoder, read_autoencoder

pytestmark = pytest.mark.slow  # 15 s on two idle cores, up to a minute on busy ones


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--exaggerate", "--out", str(out), "--quiet"]) == 0
    return out


def _by_cell(demo_dir, column, run="exaggerate"):
    """(cells, steps) values of a column, steps in increasing order."""
    rows = duckdb.sql(f"select cell_index, step, {column} as v from "
                      f"read_parquet('{demo_dir / run / 'trajectories.parquet'}') order by cell_index, step")
    frame = rows.df()
    return frame.v.to_numpy().reshape(frame.cell_index.nunique(), -1)


def _rises(values, tolerance_share=0.01):
    """Non-decreasing within 1% of the column's range, and up by more than that from the first step to the last."""
    tolerance = tolerance_share * (np.nanmax(values) - np.nanmin(values))
    return (np.diff(values, axis=1) >= -tolerance).all(axis=1) & (values[:, -1] - values[:, 0] > tolerance)


def test_layout_and_codes_of_every_cell(demo_dir):
    assert {p.name for p in demo_dir.iterdir()} == {"plate.zarr", "models", "autoencoder", "latents", "exaggerate",
                                                   "latent-shift", "demo.json"}
    assert {p.name for p in (demo_dir / "exaggerate").iterdir()} == {"direction.json", "trajectories.parquet",
                                                                   "images.zarr", "report.html"}
    fields = make_fields(0)
    crops = {}
    for (row, column), wells in fields.items():
        for site, field in enumerate(wells):
            cut = cell_crops([field], CROP_SHAPE)[0]
            crops |= {(f"{row}{column:02d}", site, k + 1): crop for k, crop in enumerate(cut)}
    latents = duckdb.sql(f"select * from read_parquet('{demo_dir / 'latents'}/part-*.parquet')").df()
    assert len(latents) == len(crops) == 256
    keys = list(zip(latents.Metadata_Well, latents.Metadata_Site, latents.Metadata_ObjectNumber))
    (codes,) = open_encoder(read_autoencoder(demo_dir / "autoencoder"), device="cpu").run(
        ["z"], {"image": np.stack([crops[k] for k in keys])})
    stored = latents[[f"z_{i}" for i in range(LATENT_SIZE)]].to_numpy()
    np.testing.assert_allclose(stored, codes, rtol=1e-5, atol=1e-5 * np.abs(codes).max())


def test_the_direction_separates_the_wells(demo_dir):
    record = json.loads((demo_dir / "exaggerate" / "direction.json").read_text())
    assert record["folds"]["scheme"] == "leave-one-well-out" and record["folds"]["folds"] == 8
    assert record["auroc"] > 0.85


@pytest.mark.parametrize("run", ["exaggerate", "latent-shift"])
def test_the_probability_of_high_rises_monotonically_in_nine_cells_of_ten(demo_dir, run):
    assert _rises(_by_cell(demo_dir, "prob_high", run)).mean() >= 0.9


def test_arms_and_rim_grow_along_the_direction(demo_dir):
    protrusion = _by_cell(demo_dir, "protrusion")
    change = protrusion[:, -1] - protrusion[:, 0]
    assert np.median(change) > 0.05 and (change > 0).mean() >= 0.7
    assert _rises(_by_cell(demo_dir, "intensity_rim_c1")).mean() >= 0.9
