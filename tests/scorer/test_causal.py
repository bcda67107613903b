"""score --ablation / --deletion-steps against an independent torch reference.

The reference cuts each crop from the whole image padded with label -1 (so padding is told
apart from background), computes the fill with ``torch.quantile``, ranks the pixels by the
torch autograd CAM with ``torch.sort(stable=True)`` and runs plain float64 torch forward
passes of the classifier; it shares no code with ``gradcamo.scorer.causal``.
"""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.results.causal import BOTH, CELL, CONTEXT, NEITHER, verdict
from gradcamo.results.summary import summarize
from gradcamo.scorer.pipeline import score
from gradcamo.scorer.sink import read_scores
from tests.reference import torch_gradcam, torch_method_cam, torch_resize
from tests.tiny_models import CROP_2D, CROP_3D, tiny_classifier

MEAN, STD = 100.0, 300.0
TOLERANCE = 1e-4


def _reference_crops(image, labels, crop_shape):
    """(cell id, crop (C, *S) float64, label window with -1 outside the image), cut by the crop rule."""
    crop = np.asarray(crop_shape[1:])
    pad = [(int(c), int(c)) for c in crop]
    padded_image = np.pad(image.astype(np.float64), [(0, 0)] + pad)
    padded_labels = np.pad(labels.astype(np.int64), pad, constant_values=-1)
    for cell in np.unique(labels)[1:]:
        centroid = np.argwhere(labels == cell).mean(axis=0)
        start = np.floor(centroid + 0.5).astype(int) - crop // 2 + crop
        window = tuple(slice(s, s + c) for s, c in zip(start, crop))
        yield int(cell), torch.from_numpy(padded_image[(slice(None),) + window]), torch.from_numpy(padded_labels[window])


class _Reference:
    """The causal numbers of one crop under the torch model (float64)."""

    def __init__(self, model, crop, window, cell):
        self.model, self.crop = model, crop
        self.mask, self.in_image = window == cell, window >= 0
        background = window == 0
        self.fill = torch.stack([
            torch.quantile(channel[background], 0.5) if background.any() else torch.tensor(0.0, dtype=torch.float64)
            for channel in crop
        ])

    def filled(self, replace):
        view = self.fill.reshape(-1, *([1] * (self.crop.dim() - 1)))
        return torch.where(replace & self.in_image, view, self.crop)

    def logits(self, crop):
        with torch.no_grad():
            return self.model(((crop - MEAN) / STD)[None])[0]

    def prob(self, crop, target):
        return float(torch.softmax(self.logits(crop), 0)[target])

    def ablation(self, target):
        cell_only, context_only = self.logits(self.filled(~self.mask)), self.logits(self.filled(self.mask))
        return {
            "prob_target_cell_only": float(torch.softmax(cell_only, 0)[target]),
            "logit_target_cell_only": float(cell_only[target]),
            "predicted_class_cell_only": int(cell_only.argmax()),
            "prob_target_context_only": float(torch.softmax(context_only, 0)[target]),
            "logit_target_context_only": float(context_only[target]),
            "predicted_class_context_only": int(context_only.argmax()),
        }

    def curves(self, cam, target, steps):
        order = torch.sort(torch.as_tensor(cam).flatten(), descending=True, stable=True).indices
        voxels = order.numel()
        deletion, insertion = [], []
        for i in range(steps + 1):
            chosen = torch.zeros(voxels, dtype=torch.bool)
            chosen[order[:math.floor(i * voxels / steps + 0.5)]] = True
            chosen = chosen.reshape(self.mask.shape)
            deletion.append(self.prob(self.filled(chosen), target))
            insertion.append(self.prob(self.filled(~chosen), target))
        return deletion, insertion


def _torch_model(spatial_dims):
    return tiny_classifier(spatial_dims).double().eval()


def _check(frame, model, image, labels, crop_shape, steps):
    checked = 0
    for cell, crop, window in _reference_crops(image, labels, crop_shape):
        reference = _Reference(model, crop, window, cell)
        rows = frame[frame.Metadata_ObjectNumber == cell]
        assert len(rows)
        for row in rows.itertuples():
            target = row.target_class
            for name, value in reference.ablation(target).items():
                assert getattr(row, name) == pytest.approx(value, abs=TOLERANCE), (cell, name)
            gradcam = torch_gradcam(model, "2", crop[None].numpy(), [target], mean=[MEAN] * 3, std=[STD] * 3)
            cam = torch_resize(torch_method_cam(gradcam.activations, gradcam.gradients, row.method), crop_shape[1:])[0]
            deletion, insertion = reference.curves(cam, target, steps)
            np.testing.assert_allclose(row.deletion_curve, deletion, atol=TOLERANCE, err_msg=str(cell))
            np.testing.assert_allclose(row.insertion_curve, insertion, atol=TOLERANCE, err_msg=str(cell))
            assert row.deletion_auc == pytest.approx(float(torch.trapezoid(torch.tensor(deletion), dx=1 / steps)),
                                                     abs=TOLERANCE)
            assert row.insertion_auc == pytest.approx(float(torch.trapezoid(torch.tensor(insertion), dx=1 / steps)),
                                                      abs=TOLERANCE)
            checked += 1
    assert checked == len(frame)


@pytest.fixture(scope="module")
def scored_2d(tmp_path_factory, model_2d):
    """Blocks with halos, edge cells, two methods, every target, every check."""
    tmp_path = tmp_path_factory.mktemp("causal")
    image, labels = make_cells((50, 44), 5, n_channels=3, radius=5, seed=4)
    store = write_image_store(tmp_path / "cells.zarr", image, labels, chunks=(16, 16))
    score([store], model_2d, tmp_path / "scores", target="all", methods=("gradcam", "layercam"), batch_size=5,
          block_shape=(16, 16), workers=1, threads=1, ablation=True, deletion_steps=3, deletion_curves=True)
    return tmp_path / "scores", image, labels


def test_2d_every_column_matches_torch(scored_2d):
    scores, image, labels = scored_2d
    frame = read_scores(scores).to_pandas()
    assert frame.edge_padded.any()
    _check(frame, _torch_model(2), image, labels, CROP_2D, 3)


def test_summary_aggregates_and_verdict(scored_2d):
    scores, _, _ = scored_2d
    frame = read_scores(scores).to_pandas()
    summary = summarize(scores, by=["target_name", "method"]).to_pandas()
    assert len(summary) == 6
    for row in summary.itertuples():
        rows = frame[(frame.target_name == row.target_name) & (frame.method == row.method)]
        for kind in ("cell_only", "context_only"):
            lost = (rows.prob_target - rows[f"prob_target_{kind}"]).to_numpy(np.float64)
            assert getattr(row, f"median_confidence_lost_{kind}") == pytest.approx(np.median(lost), abs=1e-7)
            assert getattr(row, f"mean_confidence_lost_{kind}") == pytest.approx(np.mean(lost), abs=1e-7)
            flipped = np.mean(rows[f"predicted_class_{kind}"] != rows.predicted_class)
            assert getattr(row, f"share_flipped_{kind}") == pytest.approx(flipped)
        assert row.median_deletion_auc == pytest.approx(np.median(rows.deletion_auc))
        assert row.median_insertion_auc == pytest.approx(np.median(rows.insertion_auc))
        assert row.verdict == verdict(row.mean_confidence_lost_cell_only, row.mean_confidence_lost_context_only)


@pytest.mark.parametrize("cell_only, context_only, expected", [
    (0.01, 0.049, NEITHER), (0.0, 0.08, CELL), (-0.1, 0.06, CELL), (0.1, 0.2, CELL), (0.12, 0.0, CONTEXT),
    (0.3, 0.4, BOTH), (None, 0.4, None),
])
def test_verdict_thresholds(cell_only, context_only, expected):
    assert verdict(cell_only, context_only) == expected


def test_cams_writes_what_the_ablation_fed(scored_2d, tmp_path):
    scores, image, labels = scored_2d
    assert main(["cams", str(scores), "-o", str(tmp_path / "cams"), "--ablated", "--limit", "4", "--quiet"]) == 0
    rows = pq.read_table(tmp_path / "cams" / "cams.parquet").to_pandas()
    arrays = zarr.open_group(str(tmp_path / "cams" / "cams.zarr"), mode="r")
    crops = {cell: (crop, window) for cell, crop, window in _reference_crops(image, labels, CROP_2D)}
    for row in rows.itertuples():
        crop, window = crops[row.Metadata_ObjectNumber]
        reference = _Reference(_torch_model(2), crop, window, row.Metadata_ObjectNumber)
        np.testing.assert_allclose(arrays["cell_only"][row.index], reference.filled(~reference.mask).numpy(), rtol=1e-6)
        np.testing.assert_allclose(arrays["context_only"][row.index], reference.filled(reference.mask).numpy(),
                                   rtol=1e-6)
        for kind in ("cell_only", "context_only"):
            assert (tmp_path / "cams" / "png" / f"{row.index}_{kind}.png").read_bytes().startswith(b"\x89PNG")


def test_report_shows_the_causal_checks(scored_2d, tmp_path):
    scores, _, _ = scored_2d
    assert main(["report", str(scores), "-o", str(tmp_path / "report.html"), "--gallery", "0", "--quiet"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert '<section id="causal">' in page and "flipped: context only" in page
    expected = summarize(scores, by=["dataset"], method="gradcam").to_pylist()[0]
    assert f'data-field="share_flipped_context_only" data-value="{expected["share_flipped_context_only"]!r}"' in page
    assert expected["verdict"] in page


def test_3d_every_column_matches_torch(tmp_path, model_3d):
    image, labels = make_cells((6, 30, 28), 4, n_channels=3, radius=5, seed=8)
    store = write_image_store(tmp_path / "vol.zarr", image, labels, chunks=(3, 10, 10))
    score([store], model_3d, tmp_path / "scores", workers=1, threads=1, batch_size=3, ablation=True,
          deletion_steps=2, deletion_curves=True)
    frame = read_scores(tmp_path / "scores").to_pandas()
    _check(frame, _torch_model(3), image, labels, CROP_3D, 2)


def test_deletion_ranks_by_the_crop_cam_of_the_convention(tmp_path, model_3d):
    """pytorch-grad-cam's convention in 3D (a cubic spline resize, then ReLU and min-max) ranks the voxels
    otherwise than the linear resize of ``raw``: the curves follow the convention's own map."""
    image, labels = make_cells((6, 30, 28), 3, n_channels=3, radius=5, seed=8)
    store = write_image_store(tmp_path / "vol.zarr", image, labels)
    score([store], model_3d, tmp_path / "scores", workers=1, threads=1, convention="pytorch-grad-cam",
          deletion_steps=4, deletion_curves=True)
    frame = read_scores(tmp_path / "scores").to_pandas()
    model = _torch_model(3)
    for cell, crop, window in _reference_crops(image, labels, CROP_3D):
        row = frame[frame.Metadata_ObjectNumber == cell].iloc[0]
        cam = torch_gradcam(model, "2", crop[None].numpy(), [row.target_class], mean=[MEAN] * 3, std=[STD] * 3,
                            convention="pytorch-grad-cam").upsampled[0]
        deletion, insertion = _Reference(model, crop, window, cell).curves(cam, row.target_class, 4)
        np.testing.assert_allclose(row.deletion_curve, deletion, atol=TOLERANCE)
        np.testing.assert_allclose(row.insertion_curve, insertion, atol=TOLERANCE)


def test_one_step_goes_from_the_full_to_the_fully_filled_crop(tmp_path, model_2d):
    """K = 1: deletion is (full crop, every in-image pixel filled), insertion the reverse."""
    image, labels = make_cells((40, 36), 4, n_channels=3, radius=5, seed=21)
    store = write_image_store(tmp_path / "cells.zarr", image, labels)
    score([store], model_2d, tmp_path / "scores", workers=1, threads=1, deletion_steps=1, deletion_curves=True)
    frame = read_scores(tmp_path / "scores").to_pandas()
    model = _torch_model(2)
    for cell, crop, window in _reference_crops(image, labels, CROP_2D):
        row = frame[frame.Metadata_ObjectNumber == cell].iloc[0]
        reference = _Reference(model, crop, window, cell)
        empty = reference.prob(reference.filled(torch.ones_like(reference.mask)), row.target_class)
        assert row.prob_target == pytest.approx(reference.prob(crop, row.target_class), abs=TOLERANCE)
        np.testing.assert_allclose(row.deletion_curve, [row.prob_target, empty], atol=TOLERANCE)
        np.testing.assert_allclose(row.insertion_curve, [empty, row.prob_target], atol=TOLERANCE)
        assert row.deletion_auc == pytest.approx((row.prob_target + empty) / 2, abs=TOLERANCE)
    assert "prob_target_cell_only" not in frame  # only the checks asked for


@pytest.mark.parametrize("arguments, message", [
    (["--deletion-steps", "0"], "--deletion-steps: expected a whole number >= 1"),
    (["--deletion-steps", "-2"], "--deletion-steps: expected a whole number >= 1"),
    (["--deletion-curves"], "--deletion-curves: needs deletion_steps"),
])
def test_bad_options_are_refused(tmp_path, model_2d, capsys, arguments, message):
    image, labels = make_cells((24, 24), 2, n_channels=3, radius=4, seed=1)
    store = write_image_store(tmp_path / "cells.zarr", image, labels)
    code = main(["score", str(store), "-m", str(model_2d), "-o", str(tmp_path / "scores"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()


def test_the_encode_pass_refuses_deletion_steps(tmp_path, capsys):
    code = main(["encode", str(tmp_path / "in.zarr"), "-a", str(tmp_path / "ae"), "-o", str(tmp_path / "latents"),
                 "--deletion-steps", "4"])
    assert code == 2
    assert "--deletion-steps" in capsys.readouterr().err
    assert not (tmp_path / "latents").exists()
