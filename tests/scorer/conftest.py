"""Tiny exported models shared by the scorer tests (exported once per session)."""

import pytest

from tests.scorer.tiny_models import export_tiny


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("m2") / "m.onnx", 2, class_names=["a", "b", "c"])


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("m3") / "m.onnx", 3)
