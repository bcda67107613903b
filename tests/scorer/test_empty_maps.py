"""A run whose maps are mostly empty says so: in its last line, in ``_gradcamo.json`` and in ``summary``."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from gradcamo import export_model
from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.scorer.empty import empty_maps_warning

CROP = (3, 16, 16)


def _always_empty():
    """Constant maps (a zero-weight conv with bias 1) read by a head with negative weights:
    every channel's weight alpha is negative, so ReLU(sum alpha A) is zero everywhere, yet the
    gradient is not zero (export accepts it)."""
    conv = nn.Conv2d(3, 2, 1)
    head = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(1.0)
        head.weight.fill_(-1.0)
        head.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("empty")
    model = export_model(_always_empty(), "0", CROP, root / "m.onnx").path
    store = write_image_store(root / "cells.zarr", *make_cells((40, 36), 4, n_channels=3, radius=5, seed=3))
    return model, store, root


def test_score_says_so_in_its_last_line_and_in_the_manifest(scored, capsys):
    model, store, root = scored
    assert main(["score", str(store), "-m", str(model), "-o", str(root / "scores"), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = pq.read_table(root / "scores").num_rows
    assert rows > 0
    assert out[-1] == empty_maps_warning(rows, rows)
    manifest = json.loads((root / "scores" / "_gradcamo.json").read_text())
    assert manifest["counts"]["empty_maps"] == rows
    assert manifest["warnings"] == [out[-1]]
    assert main(["summary", str(root / "scores"), "-f", "csv", "--by", ""]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == out[-1]
    assert f",{rows},{rows}," in captured.out  # cells, nan_scores, empty_maps


def test_the_rule_is_more_than_half():
    assert empty_maps_warning(5, 10) is None
    assert empty_maps_warning(0, 0) is None
    assert empty_maps_warning(6, 10).startswith("warning: 6 of 10 maps are empty")
