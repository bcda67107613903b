"""A model file whose declared shapes contradict each other, or that the scorer's head cannot be built for,
is refused up front (exit 2, nothing written), naming what disagrees."""

import json

import onnx
import pytest

from gradcamo import contract
from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store
from gradcamo.errors import ContractError
from gradcamo.model_file import read_model_info


def _dynamic_activations(model):
    for output in model.graph.output:
        if output.name in (contract.ACTIVATIONS, contract.GRADIENTS):
            for dim, name in zip(output.type.tensor_type.shape.dim[2:], ("h", "w")):
                dim.dim_param = name  # clears dim_value: the graph still runs, its outputs declare no size


def _metadata(key, value):
    def change(model):
        next(prop for prop in model.metadata_props if prop.key == key).value = value
    return change


CASES = {
    "dynamic activations": (_dynamic_activations,
                            r"activations: the graph declares no static 2-D spatial shape \(got \['h', 'w'\]\)"),
    "spatial_dims vs image rank": (_metadata(contract.META_SPATIAL_DIMS, "3"),
                                   r"gradcamo.spatial_dims is 3 but the graph's image input has rank 4 "
                                   r"\(2 spatial dims\)"),
    "spatial_dims not 2 or 3": (_metadata(contract.META_SPATIAL_DIMS, "two"),
                                r"gradcamo.spatial_dims is 'two'; expected 2 or 3"),
    "spatial_dims vs crop shape": (_metadata(contract.META_INPUT_SHAPE, json.dumps([3, 4, 16, 16])),
                                   r"gradcamo.spatial_dims is 2 but gradcamo.input_shape \[3, 4, 16, 16\] has 3 "
                                   r"spatial dims"),
}


def _changed(model_2d, tmp_path, case):
    model = onnx.load(str(model_2d))
    CASES[case][0](model)
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_image_store(tmp_path_factory.mktemp("in") / "cells.zarr",
                             *make_cells((40, 36), 3, n_channels=3, radius=5, seed=2))


def test_the_exported_model_agrees_with_itself(model_2d):
    info = read_model_info(model_2d)
    assert info.spatial_dims == 2 and len(info.input_shape) == 3


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_model_info_refuses(model_2d, tmp_path, case):
    with pytest.raises(ContractError, match=CASES[case][1]):
        read_model_info(_changed(model_2d, tmp_path, case))


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_refuses_up_front(model_2d, store, tmp_path, capsys, case):
    code = main(["score", str(store), "-m", str(_changed(model_2d, tmp_path, case)), "-o", str(tmp_path / "scores")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "changed.onnx" in err, err
    assert not (tmp_path / "scores").exists()
