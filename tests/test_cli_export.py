"""The export and inspect commands, in-process: happy paths and every bad input (exit 2, one line, no file)."""

import json
import re
import subprocess
import sys
import textwrap

import onnx
import pytest
import torch

from gradcamo import contract
from gradcamo.cli import main

FACTORY_SOURCE = textwrap.dedent(
    """
    from torch import nn

    def small(num_classes=3):
        return nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("no GPU here")
    """
)


@pytest.fixture()
def factory(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(FACTORY_SOURCE)
    return path


def run_export(factory, output, *extra):
    return main(["export", f"{factory}:small", "-l", "2", "-s", "2,16,16", "-o", str(output), *extra])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("exported")
    (directory / "nets.py").write_text(FACTORY_SOURCE)
    output = directory / "model.onnx"
    assert run_export(directory / "nets.py", output, "--classes", "a,b,c", "--mean", "1,2", "--std", "2,4") == 0
    return output


def test_export_writes_a_contract_model(exported):
    model = onnx.load(str(exported))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert [i.name for i in model.graph.input] == list(contract.INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(contract.OUTPUT_NAMES)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == contract.BATCH_AXIS
    assert json.loads(metadata[contract.META_CLASS_NAMES]) == ["a", "b", "c"]
    assert json.loads(metadata[contract.META_INPUT_SHAPE]) == [2, 16, 16]
    assert json.loads(metadata[contract.META_PREPROCESSING]) == {"mean": [1.0, 2.0], "std": [2.0, 4.0]}
    assert json.loads(metadata[contract.META_VALIDATION])["cam_max_rel_error"] < 1e-4
    assert metadata[contract.META_TARGET_LAYER] == "2"
    assert metadata[contract.META_SPATIAL_DIMS] == "2"


def test_weights_are_loaded_and_hashed(factory, tmp_path, exported):
    namespace = {}
    exec(FACTORY_SOURCE, namespace)
    torch.manual_seed(7)
    state = namespace["small"]().state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    output = tmp_path / "weighted.onnx"
    assert run_export(factory, output, "-w", str(tmp_path / "w.pt")) == 0
    hashes = [
        {p.key: p.value for p in onnx.load(str(path)).metadata_props}[contract.META_WEIGHTS_SHA256]
        for path in (output, exported)
    ]
    assert hashes[0] != hashes[1]


def test_inspect_prints_the_contract(exported, capsys):
    assert main(["inspect", str(exported), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["class_names"] == ["a", "b", "c"]
    assert shown["input_shape"] == [2, 16, 16]
    assert shown["target_layer"] == "2"
    assert shown["outputs"]["gradients"]["shape"] == ["batch", 8, 16, 16]
    assert main(["inspect", str(exported)]) == 0
    assert "target layer" in capsys.readouterr().out


EXPORT_ERRORS = [
    ("missing factory", lambda f, t: [f"{f}:nope"], r"MODEL: .* has no callable 'nope'; callables there: .*small"),
    ("missing file", lambda f, t: [f"{t}/absent.py:small"], r"MODEL: file .*absent.py' not found"),
    ("missing module", lambda f, t: ["no_such_module_xyz:small"], r"MODEL: cannot import module 'no_such_module_xyz'"),
    ("missing pt2 file", lambda f, t: [f"{t}/model.pt2"], r"MODEL: file .*model.pt2' not found"),
    ("malformed spec", lambda f, t: [str(f)], r"MODEL: expected 'package.module:factory', 'path/to/file.py:factory', 'timm:NAME' or a model file"),
    ("not a module", lambda f, t: [f"{f}:not_a_module"], r"returned int, not a torch.nn.Module"),
    ("factory raises", lambda f, t: [f"{f}:broken"], r"factory .* raised RuntimeError: no GPU here"),
    ("unknown layer", lambda f, t: [f"{f}:small", "-l", "20"], r"--target-layer: the model has no layer '20'; `gradcamo layers MODEL --input-shape \.\.\.` lists the candidate layers"),
    ("unknown layer, none close", lambda f, t: [f"{f}:small", "-l", "layer4"], r"no layer 'layer4'; .*; top-level layers: 0 \(Conv2d\), 1 \(ReLU\), 2 \(Conv2d\), 3 \(ReLU\), 4 \(AdaptiveAvgPool2d\), 5 \(Flatten\), 6 \(Linear\)$"),
    ("non-spatial layer", lambda f, t: [f"{f}:small", "-l", "6"], r"--target-layer: '6' outputs shape \(N, 3\): not 2D maps"),
    ("wrong rank", lambda f, t: [f"{f}:small", "-s", "2,16"], r"--input-shape: expected C,H,W .* got \(2, 16\)"),
    ("3D shape for 2D model", lambda f, t: [f"{f}:small", "-s", "2,4,16,16"], r"--input-shape: 2,4,16,16 is 3D but the model's first convolution '0' is 2D"),
    ("wrong channels", lambda f, t: [f"{f}:small", "-s", "3,16,16"], r"--input-shape: 3 channels but the model's first convolution '0' takes 2"),
    ("non-numeric shape", lambda f, t: [f"{f}:small", "-s", "2,x,16"], r"--input-shape: expected comma-separated ints, got '2,x,16'"),
    ("unwritable dir", lambda f, t: [f"{f}:small", "-o", f"{t}/missing/m.onnx"], r"-o: directory .*missing' does not exist"),
    ("output is dir", lambda f, t: [f"{f}:small", "-o", str(t)], r"-o: .* is a directory"),
    ("class count", lambda f, t: [f"{f}:small", "--classes", "a,b"], r"--classes: the model has 3 outputs, got 2 class names"),
    ("duplicate classes", lambda f, t: [f"{f}:small", "--classes", "a,a,b"], r"--classes: names must be unique"),
    ("mean length", lambda f, t: [f"{f}:small", "--mean", "1,2,3"], r"--mean: expected 2 values \(one per channel\), got 3"),
    ("std zero", lambda f, t: [f"{f}:small", "--std", "1,0"], r"--std: every value must be > 0"),
    ("factory kwargs", lambda f, t: [f"{f}:small", "--factory-kwargs", "{oops"], r"--factory-kwargs: not valid JSON"),
    ("factory kwargs type", lambda f, t: [f"{f}:small", "--factory-kwargs", "[1]"], r"--factory-kwargs: expected a JSON object"),
    ("missing weights", lambda f, t: [f"{f}:small", "-w", f"{t}/none.pt"], r"--weights: file .*none.pt' not found"),
]


def _export_argv(factory, tmp_path, overrides):
    argv = {"-l": "2", "-s": "2,16,16", "-o": str(tmp_path / "out" / "m.onnx")}
    spec, *rest = overrides
    argv.update(dict(zip(rest[::2], rest[1::2])))
    return ["export", spec] + [item for pair in argv.items() for item in pair]


@pytest.mark.parametrize("case", EXPORT_ERRORS, ids=[c[0] for c in EXPORT_ERRORS])
def test_export_bad_input(case, factory, tmp_path, capsys):
    _, make_args, pattern = case
    (tmp_path / "out").mkdir()
    code = main(_export_argv(factory, tmp_path, make_args(factory, tmp_path)))
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1, error
    assert "Traceback" not in error
    assert re.search(pattern, error), error
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("quiet", [[], ["--quiet"]], ids=["default", "quiet"])
def test_export_without_torchvision_prints_no_exporter_chatter(factory, tmp_path, quiet):
    """As installed with the [export] extra alone: torch's ONNX exporter would log one
    "torchvision is not installed. Skipping torchvision::..." line per torchvision op."""
    argv = ["export", f"{factory}:small", "-l", "2", "-s", "2,16,16", "-o", str(tmp_path / "m.onnx"), *quiet]
    code = f"import sys; sys.modules['torchvision'] = None; from gradcamo.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr and "Skipping" not in result.stderr, result.stderr
    assert result.stdout.startswith("wrote ")
    if quiet:
        assert result.stderr == ""


def test_weights_that_do_not_fit(factory, tmp_path, capsys):
    namespace = {}
    exec(FACTORY_SOURCE, namespace)
    torch.save(namespace["small"](num_classes=4).state_dict(), tmp_path / "w4.pt")
    assert run_export(factory, tmp_path / "m.onnx", "-w", str(tmp_path / "w4.pt")) == 2
    error = capsys.readouterr().err
    assert "--weights: " in error and "2 wrong shape (file vs model): 6.weight (4, 8) vs (3, 8)" in error
    assert not (tmp_path / "m.onnx").exists()


def test_weights_that_are_not_weights_only(factory, tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(b"not a torch file at all")
    assert run_export(factory, tmp_path / "m.onnx", "-w", str(tmp_path / "w.pt")) == 2
    assert "is not a weights-only torch file" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_debug_shows_the_traceback(factory, tmp_path, capsys):
    assert main(["--debug", "export", f"{factory}:small", "-l", "20", "-s", "2,16,16", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "Traceback" in capsys.readouterr().err


def _with_metadata(source, target, **changes):
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        props.pop(key)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


INSPECT_ERRORS = [
    ("missing", lambda src, t: t / "absent.onnx", r"model file .*absent.onnx' not found"),
    ("not onnx", lambda src, t: _write(t / "x.onnx", b"\x00garbage\xff" * 10), r"not an ONNX model"),
    ("truncated", lambda src, t: _write(t / "x.onnx", src.read_bytes()[: len(src.read_bytes()) // 3]), r"not an ONNX model"),
    ("no contract", lambda src, t: _with_metadata(src, t / "x.onnx", **{contract.META_TARGET_LAYER: None}), r"not a gradcamo model \(metadata lacks gradcamo.target_layer\)"),
    ("newer format", lambda src, t: _with_metadata(src, t / "x.onnx", **{contract.META_FORMAT_VERSION: "2"}), r"format version '2' is newer than this gradcamo reads \(1\)"),
]


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", INSPECT_ERRORS, ids=[c[0] for c in INSPECT_ERRORS])
def test_inspect_bad_input(case, exported, tmp_path, capsys):
    import re

    _, make_file, pattern = case
    code = main(["inspect", str(make_file(exported, tmp_path))])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and re.search(pattern, error), error


def test_inspect_refuses_custom_op_domains(exported, tmp_path, capsys):
    model = onnx.load(str(exported))
    model.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
    onnx.save(model, str(tmp_path / "custom.onnx"))
    assert main(["inspect", str(tmp_path / "custom.onnx")]) == 2
    assert "custom operator domains com.example.custom" in capsys.readouterr().err
