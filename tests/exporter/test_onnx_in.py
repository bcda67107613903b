"""A forward-only ONNX classifier as MODEL: a channels-last graph scores as its torch twin, its target tensor in
any layout; `gradcamo layers` lists its tensors; bad input refused.

The ONNX file is a small torch CNN exported forward-only with ``torch.onnx.export``, in the
shape tf2onnx gives Keras models: channels-last input, a Transpose to channels-first around
each Conv, a channels-last ReLU between them. The torch twin is the same network taking
channels-first crops, exported by gradcamo as a torch model.
"""


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import gradcamo
from gradcamo.cam import crop_cam, gradcamo_score
from gradcamo.cli import main
from gradcamo.exporter.layout import decide_layout
from gradcamo.exporter.onnx_in import load_onnx_classifier
from gradcamo.scorer.head import CAM_INSIDE, CAM_TOTAL, MASK, append_score_head
from tests.reference import torch_gradcamo
from tests.refusals import assert_refused, written
from tests.test_pytorch_grad_cam import _library

SHAPE = (3, 16, 16)


class Twin(nn.Module):
    """The torch twin: channels-first in; ``channels_last=True`` is the Keras-like graph."""

    def __init__(self, channels_last):
        super().__init__()
        torch.manual_seed(5)
        self.channels_last = channels_last
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        if self.channels_last:  # x is (N, H, W, C), as tf2onnx graphs take it
            x = self.conv1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).relu().permute(0, 3, 1, 2)
        else:
            x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        return self.head(x.mean(dim=(2, 3)))


def _tensor(proto, op_type, occurrence=0):
    return [n.output[0] for n in proto.graph.node if n.op_type == op_type][occurrence]


def _export_twin(path, dynamic_axes, softmax=False):
    twin = Twin(channels_last=True).eval()
    torch.onnx.export(
        nn.Sequential(twin, nn.Softmax(dim=1)) if softmax else twin, (torch.zeros(2, 16, 16, 3),), str(path), input_names=["input_1"],
        output_names=["dense"], dynamic_axes=dynamic_axes, opset_version=17, dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def keras_like(tmp_path_factory):
    return _export_twin(tmp_path_factory.mktemp("onnx_in") / "keras_like.onnx", {"input_1": {0: "batch"}})


def _fixed_batch(path):
    return _export_twin(path, None)


def _run(path, image, target):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image, "target": target})


def test_a_channels_last_onnx_classifier_scores_as_its_torch_twin(keras_like, tmp_path):
    proto = onnx.load(str(keras_like))
    conv2 = _tensor(proto, "Conv", 1)
    relu = _tensor(proto, "Relu", 1)  # conv2 -> relu: channels-first, as every ONNX Conv output
    twin = Twin(channels_last=False).eval()
    twin.load_state_dict(Twin(channels_last=True).state_dict())
    shape = ",".join(map(str, SHAPE))
    assert main(["export", str(keras_like), "-l", relu, "--input-layout", "nhwc", "-s", shape,
                 "-o", str(tmp_path / "from_onnx.onnx")]) == 0
    gradcamo.export_model(twin, "conv2", SHAPE, tmp_path / "torch_conv2.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "from_onnx.onnx")).metadata_props}
    assert metadata["gradcamo.target_layer"] == relu and conv2 != relu
    generator = np.random.default_rng(2)
    image = generator.standard_normal((4, *SHAPE)).astype(np.float32)
    mask = generator.random((4, *SHAPE[1:])) < 0.3
    target = np.array([-1, 0, 1, 3])
    logits, activations, gradients = _run(tmp_path / "from_onnx.onnx", image, target)
    t_logits, t_activations, t_gradients = _run(tmp_path / "torch_conv2.onnx", image, target)
    np.testing.assert_allclose(logits, t_logits, atol=1e-5)
    # the twin's layer is conv2 before its ReLU: the same gradients where the ReLU passes, the ReLU'd activations
    np.testing.assert_allclose(activations, np.maximum(t_activations, 0), atol=1e-5)
    passes = t_activations > 0
    np.testing.assert_allclose(gradients[passes], t_gradients[passes], atol=1e-6)
    with torch.no_grad():
        reference = twin(torch.from_numpy(image))
    np.testing.assert_allclose(logits, reference.numpy(), atol=1e-5)
    assert main(["export", str(keras_like), "-l", conv2, "--input-layout", "nhwc", "-s", shape,
                 "-o", str(tmp_path / "from_onnx_conv2.onnx")]) == 0
    c_logits, c_activations, c_gradients = _run(tmp_path / "from_onnx_conv2.onnx", image, target)
    np.testing.assert_allclose(c_activations, t_activations, atol=1e-5)
    np.testing.assert_allclose(c_gradients, t_gradients, atol=1e-6)
    expected = gradcamo_score(crop_cam(t_activations, t_gradients, SHAPE[1:]), mask)[2]
    assert np.isfinite(expected).sum() >= 3
    np.testing.assert_allclose(gradcamo_score(crop_cam(c_activations, c_gradients, SHAPE[1:]), mask)[2], expected, atol=1e-5)


def _squeeze_excite(path):
    """A hand-built channels-last classifier: Transpose, Conv, a squeeze-excite gate (Flatten, Reshape,
    Sigmoid: layouts the graph does not decide), Mul, Transpose back to channels-last, ReLU, mean, MatMul."""
    rng = np.random.default_rng(3)
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32)),
        helper.make_tensor("gate_shape", TensorProto.INT64, [4], [-1, 4, 1, 1]),
        helper.make_tensor("fc", TensorProto.FLOAT, [4, 2], rng.standard_normal(8).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["squeezed"]),
        helper.make_node("Flatten", ["squeezed"], ["flat"]),
        helper.make_node("Reshape", ["flat", "gate_shape"], ["gate_in"]),
        helper.make_node("Sigmoid", ["gate_in"], ["gate"]),
        helper.make_node("Mul", ["conv", "gate"], ["excited"]),
        helper.make_node("Transpose", ["excited"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["nhwc"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize(("tensor", "shape", "layout", "decided_by"), [
    ("nchw", (2, 3, 8, 8), "nchw", "ONNX graph"), ("conv", (2, 4, 8, 8), "nchw", "ONNX graph"),
    ("excited", (2, 4, 8, 8), "nchw", "ONNX graph"), ("relu", (2, 8, 8, 4), "nhwc", "ONNX graph"),
    ("gate", (2, 4, 1, 1), "nchw", "shape"),  # after a Reshape the graph does not decide: (4, 1, 1) fits one way
])
def test_the_target_layout_is_read_from_the_graph(tensor, shape, layout, decided_by, tmp_path):
    path = _squeeze_excite(tmp_path / "se.onnx")
    model, layer = load_onnx_classifier(path, tensor, (3, 8, 8), input_layout="nhwc")
    seen = []
    model.get_submodule(layer).register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    model(torch.zeros(2, 3, 8, 8))
    assert seen == [shape]
    decided = decide_layout(shape, (8, 8), model=model, layer_name=layer, layer=model.get_submodule(layer))
    assert (decided.layout, decided.decided_by) == (layout, decided_by)


class ChannelsLastNet(nn.Module):
    """A Keras-like network: its conv stack works channels-last, each Conv between permutes.

    Targets: ``act``, a channels-last ReLU (N, 16, 16, 6) the graph defines as such (a Relu
    after a Transpose to NHWC); ``mix``, a Dense layer on the channels-last (N, 8, 8, 8) maps,
    MatMul and Add nodes whose layout the graph does not decide and whose shape fits a 16x16
    crop either way. ``nhwc_input``: the graph to export to ONNX takes (N, H, W, C), as tf2onnx
    graphs do; the torch twin takes channels-first crops.
    """

    def __init__(self, nhwc_input):
        super().__init__()
        torch.manual_seed(7)
        self.nhwc_input = nhwc_input
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        if not self.nhwc_input:
            x = x.permute(0, 2, 3, 1)
        x = self.act(self.conv1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        x = self.mix(self.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)).relu()
        return self.head(x.mean(dim=(1, 2)).reshape(-1, 8))  # a Reshape node, as Keras' Flatten makes


@pytest.fixture(scope="module")
def channels_last_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_in") / "channels_last.onnx"
    torch.onnx.export(ChannelsLastNet(nhwc_input=True).eval(), (torch.zeros(2, 16, 16, 3),), str(path),
                      input_names=["input_1"], output_names=["dense"], dynamic_axes={"input_1": {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    assert "Reshape" in {node.op_type for node in proto.graph.node}
    tensors = {"act": _tensor(proto, "Relu", 0), "mix": _tensor(proto, "Add", 0)}
    return path, tensors, ChannelsLastNet(nhwc_input=False).eval()


def _head_scores(path, image, mask, targets, convention):
    headed = append_score_head(onnx.load(str(path)), crop_spatial=image.shape[2:], convention=convention)
    session = ort.InferenceSession(headed.SerializeToString(), providers=["CPUExecutionProvider"])
    inside, total = session.run([CAM_INSIDE, CAM_TOTAL], {"image": image, "target": targets,
                                                          MASK: mask.astype(np.float32)})
    return inside / total


@pytest.mark.parametrize(("layer", "flags", "layout"), [
    ("act", [], "nhwc (from the ONNX graph)"),  # channels-last: converted in the graph, as a Swin stage
    ("mix", ["--target-layout", "nhwc"], "nhwc (from the flag)"),  # undecided by the graph: the flag says
])
def test_an_onnx_tensor_in_any_layout_scores_as_its_torch_twin(layer, flags, layout, channels_last_net, tmp_path,
                                                              capsys):
    path, tensors, twin = channels_last_net
    output = tmp_path / "exported.onnx"
    assert main(["export", str(path), "-l", tensors[layer], "--input-layout", "nhwc", "-s", "3,16,16", "-o",
                 str(output), *flags]) == 0
    assert f"read as {layout}" in capsys.readouterr().out
    generator = np.random.default_rng(4)
    image = generator.standard_normal((4, *SHAPE)).astype(np.float32)
    mask = generator.random((4, *SHAPE[1:])) < 0.3
    targets = np.array([0, 1, 3, -1])
    reshape = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731 (pytorch-grad-cam's reshape_transform for NHWC maps)
    predicted = twin(torch.from_numpy(image)).argmax(1).numpy()
    library = _library("gradcam", twin, image, np.where(targets < 0, predicted, targets), layer,
                       reshape_transform=reshape)[0]
    expected = gradcamo_score(library, mask)[2]
    ours = _head_scores(output, image, mask, targets, "pytorch-grad-cam")
    assert np.isfinite(expected).sum() >= 3
    print(f"{layer}: pytorch-grad-cam Grad-CAMO max |diff| {np.nanmax(np.abs(ours - expected)):.1e}")
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    reference = torch_gradcamo(twin, layer, image, mask, targets, reshape=reshape)[2]
    raw = _head_scores(output, image, mask, targets, "raw")
    print(f"{layer}: raw Grad-CAMO max |diff| from the torch reference {np.nanmax(np.abs(raw - reference)):.1e}")
    np.testing.assert_allclose(raw, reference, atol=1e-5)


def test_an_undecidable_onnx_tensor_is_refused_naming_the_flag(channels_last_net, tmp_path, capsys):
    path, tensors, _ = channels_last_net
    argv = ["export", str(path), "-l", tensors["mix"], "--input-layout", "nhwc", "-s", "3,16,16", "--quiet",
            "-o", str(tmp_path / "m.onnx")]
    assert_refused(argv, rf"--target-layer: {tensors['mix']!r} outputs \(N, 8, 8, 8\), which fits a 16x16 crop "
                   r"both as channels-first .* give --target-layout nchw or nhwc", capsys, tmp_path)


def test_layers_lists_an_onnx_graphs_tensors(channels_last_net, capsys):
    path, tensors, _ = channels_last_net
    assert main(["layers", str(path), "-s", "3,16,16", "--input-layout", "nhwc"]) == 0
    rows = {line.lstrip("* ").split()[0]: " ".join(line.split()) for line in capsys.readouterr().out.splitlines()}
    assert rows[tensors["act"]] == f"{tensors['act']} (N, 16, 16, 6) nhwc (from the ONNX graph) non-zero"
    assert rows[tensors["mix"]] == f"{tensors['mix']} (N, 8, 8, 8) refused: nchw or nhwc (--target-layout) -"
    proto = onnx.load(str(path))
    conv2, to_nhwc = _tensor(proto, "Conv", 1), _tensor(proto, "Transpose", 3)  # conv2's output, then as NHWC
    assert rows[conv2] == f"{conv2} (N, 8, 8, 8) nchw (from the ONNX graph) non-zero"
    assert rows[to_nhwc] == f"* {to_nhwc} (N, 8, 8, 8) nhwc (from the ONNX graph) non-zero"
    assert rows["suggested"] == f"suggested target layer: {to_nhwc}"
    assert "input_1" not in rows and "dense" not in rows  # the graph's input and logits are no candidates


def test_a_graph_ending_in_softmax_is_said_to_explain_probabilities(tmp_path, caplog):
    path = _export_twin(tmp_path / "softmax.onnx", {"input_1": {0: "batch"}}, softmax=True)
    with caplog.at_level("WARNING", logger="gradcamo"):
        load_onnx_classifier(path, "/0/conv2/Conv_output_0", SHAPE, input_layout="nhwc")
    assert "comes from Softmax node" in caplog.text and "explain probabilities, not logits" in caplog.text


def _unconvertible(path):
    """A hand-built classifier whose activation, Mish, onnx2torch cannot convert."""
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.full(108, 0.1, dtype=np.float32)),
        helper.make_tensor("fc", TensorProto.FLOAT, [4, 2], np.ones(8, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mish", ["conv"], ["mish"], name="stem_mish"),
        helper.make_node("GlobalAveragePool", ["mish"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


class ComputedReshape(nn.Module):
    """A classifier whose Reshape takes a shape computed in the graph (Shape, Gather, Concat nodes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        x = self.conv(x).relu()
        return self.head(x.reshape(x.shape[0], -1))


def _computed_reshape(path):
    torch.onnx.export(ComputedReshape().eval(), (torch.zeros(2, 3, 16, 16),), str(path), input_names=["input_1"],
                      output_names=["dense"], dynamic_axes={"input_1": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


BAD_INPUT = [
    ("unknown tensor", lambda p, t: [str(p), "-l", "/conv2/Conv_output"],
     r"--target-layer: .*keras_like.onnx' has no intermediate tensor '/conv2/Conv_output'; close names: /conv2/Conv_output_0"),
    ("a layout flag the graph contradicts", lambda p, t: [str(p), "-l", "/Relu_output_0", "--target-layout", "nchw"],
     r"--target-layout nchw: the ONNX graph defines '/Relu_output_0' as \(N,H,W,C\), i.e. nhwc"),
    ("not maps", lambda p, t: [str(p), "-l", _tensor(onnx.load(str(p)), "ReduceMean")],
     r"--target-layer: '/ReduceMean_output_0' outputs shape \(N, 8\): not 2D maps"),
    ("channels-first crops for a channels-last graph", lambda p, t: [str(p), "-l", "/Relu_1_output_0", "--input-layout", "nchw"],
     r"--input-shape: 3,16,16 read channels-first is \(N,3,16,16\) but the graph's input 'input_1' is \(\?,16,16,3\); for a channels-last graph add --input-layout nhwc"),
    ("bad input layout", lambda p, t: [str(p), "-l", "/Relu_1_output_0", "--input-layout", "nwhc"],
     r"--input-layout: expected one of nchw, nhwc, got 'nwhc'"),
    ("weights for an ONNX model", lambda p, t: [str(p), "-l", "/Relu_1_output_0", "--input-layout", "nhwc", "-w", "w.pt"],
     r"--weights: an ONNX MODEL holds its weights"),
    ("unconvertible operator", lambda p, t: [str(_unconvertible(t / "mish.onnx")), "-l", "conv"],
     r"the ONNX graph's node 'stem_mish' uses operator Mish at opset 18, which onnx2torch cannot convert"),
    ("fixed batch", lambda p, t: [str(_fixed_batch(t / "fixed.onnx")), "-l", "/Relu_1_output_0"],
     r"MODEL: the graph's input 'input_1' has a fixed batch of 2; .* dynamic_axes=\{'input_1': \{0: 'batch'\}\}"),
    ("a shape computed in the graph", lambda p, t: [str(_computed_reshape(t / "computed.onnx")), "-l",
                                                    "/Relu_output_0"],
     r"the model cannot be traced for export \(it branches on tensor values or computes shapes from them\): "),
    ("not an ONNX file", lambda p, t: [str(written(t / "x.onnx", b"\x00garbage")), "-l", "a"], r"MODEL: .*x.onnx' is not an ONNX model"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_onnx_input(case, keras_like, tmp_path, capsys):
    _, make_args, pattern = case
    spec, *extra = make_args(keras_like, tmp_path)
    argv = ["export", spec, "-s", ",".join(map(str, SHAPE)), "-o", str(tmp_path / "out" / "m.onnx"), "-q", *extra]
    if "--input-layout" not in extra and "keras_like" in spec:
        argv += ["--input-layout", "nhwc"]
    (tmp_path / "out").mkdir()
    assert_refused(argv, pattern, capsys, tmp_path / "out")
