"""Models and weights as users saved them: checkpoint formats, saved model files, factories with sibling imports.

Each checkpoint format must load exactly the plain state dict's weights (the export is a
function of the weights, so equal weights give equal graphs and scores; one format is also
exported end to end and its graph's outputs compared bit for bit with the plain one's).
"""

import json
import re
import textwrap
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from gradcamo.cli import main
from tests.refusals import assert_refused, written
from gradcamo.errors import InputError
from gradcamo.exporter.loading import hash_weights, load_model, load_weights

BLOCKS_SOURCE = textwrap.dedent(
    """
    from torch import nn

    class Stem(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU())
    """
)
NETS_SOURCE = textwrap.dedent(
    """
    from torch import nn
    from blocks import Stem

    def small(num_classes=3):
        return nn.Sequential(
            Stem(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )
    """
)
SHAPE = "2,12,12"


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """``nets.py:small``, which imports ``Stem`` from the sibling module ``blocks.py``."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "blocks.py").write_text(BLOCKS_SOURCE)
    (folder / "nets.py").write_text(NETS_SOURCE)
    return f"{folder / 'nets.py'}:small"


@pytest.fixture(scope="module")
def plain(factory):
    torch.manual_seed(3)
    return load_model(factory).state_dict()


def test_a_factory_file_imports_its_sibling_module(factory):
    import sys

    model = load_model(factory)
    assert type(model[0]).__name__ == "Stem"
    assert not any(entry.endswith("models0") for entry in sys.path)


def _lightning(state):
    """A dict shaped as PyTorch Lightning saves a checkpoint: the net under the LightningModule's
    attribute ``net.``, another attribute's buffer, and training state beside the state dict."""
    return {
        "epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": {**{f"net.{k}": v for k, v in state.items()}, "criterion.pos_weight": torch.ones(3)},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}], "hyper_parameters": {"lr": 0.01},
    }


class HyperParameters:
    """A custom class in a checkpoint's hyper-parameters (Lightning's save_hyperparameters of a config object)."""

    def __init__(self, lr):
        self.lr = lr


class AttributeDict(dict):
    """A dict subclass, as Lightning's own ``AttributeDict``."""


class Milestones(list):
    """A list subclass."""


def _lightning_with_objects(state):
    """As Lightning saves one whose hyper-parameters and callbacks hold Python objects that
    ``weights_only=True`` refuses: they are read as inert stand-ins, the state dict as saved."""
    import argparse

    checkpoint = _lightning(state)
    checkpoint["hyper_parameters"] = {"args": argparse.Namespace(lr=0.01), "config": HyperParameters(0.01),
                                      "attributes": AttributeDict(lr=0.01), "milestones": Milestones([3, 6])}
    checkpoint["callbacks"] = {"ModelCheckpoint": {"best_k_models": {"a.ckpt": np.float64(0.3)}, "ranks": np.arange(3)}}
    return checkpoint


CHECKPOINTS = {
    "plain.pt": lambda s: s,
    "wrapped-state_dict.pt": lambda s: {"state_dict": s, "epoch": 1},
    "wrapped-model.pt": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "wrapped-model_state_dict.pt": lambda s: {"model_state_dict": s, "epoch": 1},
    "lightning.ckpt": _lightning,
    "lightning-with-objects.ckpt": _lightning_with_objects,
    "ddp.pt": lambda s: {f"module.{k}": v for k, v in s.items()},
    "ddp-in-lightning.ckpt": lambda s: {"state_dict": {f"module.model.{k}": v for k, v in s.items()}},
    "weights.safetensors": lambda s: s,
}


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_every_checkpoint_format_loads_the_plain_weights(name, factory, plain, tmp_path):
    path = _save(CHECKPOINTS[name](plain), tmp_path / name)
    model = load_weights(load_model(factory), path)
    loaded = model.state_dict()
    assert list(loaded) == list(plain)
    assert all(torch.equal(loaded[k], plain[k]) for k in plain)
    reference = load_model(factory)
    reference.load_state_dict(plain)
    assert hash_weights(model) == hash_weights(reference)


def _outputs(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image, "target": np.array([-1, 0, 2])})


def test_a_lightning_checkpoint_exports_the_plain_state_dicts_graph(factory, plain, tmp_path):
    for name in ("plain.pt", "lightning-with-objects.ckpt"):
        weights = _save(CHECKPOINTS[name](plain), tmp_path / name)
        assert main(["export", factory, "-l", "2", "-s", SHAPE, "-w", str(weights), "-o", str(tmp_path / f"{name}.onnx")]) == 0
    image = np.random.default_rng(0).standard_normal((3, 2, 12, 12)).astype(np.float32)
    for ours, expected in zip(_outputs(tmp_path / "lightning-with-objects.ckpt.onnx", image),
                              _outputs(tmp_path / "plain.pt.onnx", image)):
        np.testing.assert_array_equal(ours, expected)


def test_a_pickled_module_loads_only_with_trust_pickle(factory, plain, tmp_path, caplog):
    model = load_model(factory)
    model.load_state_dict(plain)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(InputError, match=r"holds Python objects beyond tensors \(torch.nn.modules.container.Sequential\)"):
        load_model(str(tmp_path / "whole.pt"))
    with caplog.at_level("WARNING", logger="gradcamo"):
        loaded = load_model(str(tmp_path / "whole.pt"), trust_pickle=True)
    assert "executes code from the file" in caplog.text
    assert hash_weights(loaded) == hash_weights(model)
    # as --weights, the pickled module's own state dict is taken
    assert hash_weights(load_weights(load_model(factory), tmp_path / "whole.pt", trust_pickle=True)) == hash_weights(model)


def test_layers_lists_a_pickled_module_with_trust_pickle(factory, tmp_path, capsys):
    """The refusal says "pass --trust-pickle": `layers` takes it as export does, and lists what the factory lists."""
    path = str(_save_module(factory, tmp_path / "whole.pt"))
    assert main(["layers", factory, "--input-shape", "2,12,12"]) == 0
    from_factory = capsys.readouterr().out
    assert main(["layers", path, "--input-shape", "2,12,12"]) == 2
    assert "pass --trust-pickle" in capsys.readouterr().err
    assert main(["layers", path, "--input-shape", "2,12,12", "--trust-pickle"]) == 0
    assert capsys.readouterr().out == from_factory


def test_a_torch_export_file_exports_as_its_module(factory, plain, tmp_path):
    model = load_model(factory).eval()
    model.load_state_dict(plain)
    batch = torch.export.Dim.DYNAMIC
    program = torch.export.export(model, (torch.zeros(2, 2, 12, 12),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    assert main(["export", str(tmp_path / "model.pt2"), "-l", "2", "-s", SHAPE, "-o", str(tmp_path / "pt2.onnx")]) == 0
    torch.save(plain, tmp_path / "plain.pt")
    assert main(["export", factory, "-l", "2", "-s", SHAPE, "-w", str(tmp_path / "plain.pt"), "-o", str(tmp_path / "f.onnx")]) == 0
    image = np.random.default_rng(1).standard_normal((3, 2, 12, 12)).astype(np.float32)
    for ours, expected in zip(_outputs(tmp_path / "pt2.onnx", image), _outputs(tmp_path / "f.onnx", image)):
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_timm_models_take_factory_kwargs():
    model = load_model("timm:resnet10t", {"in_chans": 5, "num_classes": 4})
    assert model.conv1[0].in_channels == 5 and model.fc.out_features == 4


def _torchscript(factory, plain, path):
    model = load_model(factory).eval()
    model.load_state_dict(plain)
    with warnings.catch_warnings():  # torch.jit.script is deprecated: a FutureWarning on stderr
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(path))
    return path


def _class_with_custom_object(path):
    torch.save({"state_dict": {}, "config": re.compile("x")}, path)
    return path


BAD_INPUT = [
    ("pickle without --trust-pickle", lambda f, p, t: [str(_save_module(f, t / "m.pt"))],
     r"MODEL: .*m.pt' holds Python objects beyond tensors \(.*Sequential\); unpickling it runs code from the file: pass --trust-pickle"),
    ("pickled weights without --trust-pickle", lambda f, p, t: [f, "-w", str(_class_with_custom_object(t / "w.pt"))],
     r"--weights: .*w.pt' holds Python objects beyond tensors \(re\."),
    ("torchscript model", lambda f, p, t: [str(_torchscript(f, p, t / "ts.pt"))],
     r"MODEL: .*ts.pt' is TorchScript: its compiled layers take no forward hooks, so the target layer cannot be captured"),
    ("torchscript weights", lambda f, p, t: [f, "-w", str(_torchscript(f, p, t / "ts.pt"))],
     r"--weights: .*ts.pt' is TorchScript: save its weights with torch.save\(torch.jit.load"),
    ("missing and unexpected keys", lambda f, p, t: [f, "-w", str(_save({**{k.replace("0.0.", "stem.0."): v for k, v in p.items()}, "extra.weight": torch.ones(1)}, t / "w.pt"))],
     r"--weights: .*w.pt' does not fit the model: 2 missing: 0\.0\.weight, 0\.0\.bias; 3 unexpected: stem\.0\.weight, stem\.0\.bias, extra\.weight$"),
    ("several prefixes fit", lambda f, p, t: [f, "-w", str(_save({**{f"net.{k}": v for k, v in p.items()}, **{f"ema.{k}": v for k, v in p.items()}}, t / "w.ckpt"))],
     r"--weights: .*w.ckpt' holds the model's weights under several prefixes \('ema.', 'net.'\)"),
    ("no state dict", lambda f, p, t: [f, "-w", str(_save({"epoch": 3, "lr": 0.1}, t / "w.pt"))],
     r"--weights: .*w.pt' holds no state dict of tensors \(found epoch, lr\)"),
    ("damaged safetensors", lambda f, p, t: [f, "-w", str(written(t / "w.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"))],
     r"--weights: .*w.safetensors' is not a safetensors file"),
    ("unknown timm model", lambda f, p, t: ["timm:resnet1000"], r"MODEL: timm has no model 'resnet1000'; close names: .*resnet10"),
    ("bad timm kwargs", lambda f, p, t: ["timm:resnet10t", "--factory-kwargs", '{"no_such_arg": 1}'],
     r"MODEL: timm.create_model\('resnet10t'\) raised TypeError"),
    ("kwargs for a saved model", lambda f, p, t: [str(_save_module(f, t / "m.pt")), "--factory-kwargs", '{"a": 1}'],
     r"MODEL: --factory-kwargs apply to factories, not to the saved model"),
    ("pt2 with a fixed batch", lambda f, p, t: [str(_exported_program(f, t / "m.pt2"))],
     r"MODEL: .*m.pt2' was exported for a fixed batch of 2; export it with a dynamic batch"),
    ("damaged pt2", lambda f, p, t: [str(written(t / "m.pt2", b"garbage"))], r"MODEL: .*m.pt2' is not a torch.export .pt2 file"),
]


def _exported_program(factory, path):
    torch.export.save(torch.export.export(load_model(factory).eval(), (torch.zeros(2, 2, 12, 12),)), path)
    return path


def _save_module(factory, path):
    torch.save(load_model(factory), path)
    return path


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_models_and_weights(case, factory, plain, tmp_path, capsys):
    _, make_args, pattern = case
    spec, *extra = make_args(factory, plain, tmp_path)
    (tmp_path / "out").mkdir()
    assert_refused(["export", spec, "-l", "2", "-s", SHAPE, "-o", str(tmp_path / "out" / "m.onnx"), *extra],
                   pattern, capsys, tmp_path / "out")


def test_factory_kwargs_reach_a_file_factory(factory):
    assert load_model(factory, json.loads('{"num_classes": 5}'))[-1].out_features == 5


class _CopiesAFile:
    """Unpickled, it copies a file: the code a malicious checkpoint would run (``shutil``, which
    torch's weights-only unpickler does not block outright, unlike ``os``)."""

    def __init__(self, source, target):
        self.source, self.target = source, target

    def __reduce__(self):
        import shutil

        return shutil.copyfile, (self.source, self.target)


def test_objects_beside_the_state_dict_run_no_code(factory, plain, tmp_path):
    marker = tmp_path / "copied"
    payload = _CopiesAFile(str(written(tmp_path / "source", b"x")), str(marker))
    path = _save({"state_dict": plain, "hyper_parameters": {"payload": payload}}, tmp_path / "w.ckpt")
    model = load_weights(load_model(factory), path)
    assert not marker.exists()
    assert all(torch.equal(model.state_dict()[k], plain[k]) for k in plain)
    load_weights(load_model(factory), path, trust_pickle=True)  # a full unpickle runs it
    assert marker.read_bytes() == b"x"


def test_globals_torch_blocks_are_refused(factory, plain, tmp_path):
    class Blocked:
        def __reduce__(self):
            import os

            return os.getcwd, ()

    path = _save({"state_dict": plain, "payload": Blocked()}, tmp_path / "w.ckpt")
    with pytest.raises(InputError, match=r"holds Python objects beyond tensors \((os|posix)\.getcwd\)"):
        load_weights(load_model(factory), path)
