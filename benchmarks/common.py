"""Shared helpers of the gradcamo benchmarks (not part of the package; not run by CI).

Everything here is deliberately small and explicit: the benchmark scripts print ratios
measured in one run, so the helpers only build models, sessions and a timer.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("cpu", "cuda")

# Per model: target layer (the last conv block), an earlier block, the full crop shape and
# the --quick one, (C, H, W) / (C, D, H, W).
MODELS = {
    "resnet18": {"layer": "layer4", "early_layer": "layer2", "shape": (5, 96, 96), "quick": (5, 64, 64)},
    "r3d_18": {"layer": "layer4", "early_layer": "layer2", "shape": (5, 32, 64, 64), "quick": (5, 8, 32, 32)},
    "efficientnet3d": {"layer": "head", "early_layer": "blocks.3", "shape": (5, 32, 64, 64),
                       "quick": (5, 8, 32, 32)},
}
SHAPES = {name: case["shape"] for name, case in MODELS.items()}
QUICK_SHAPES = {name: case["quick"] for name, case in MODELS.items()}
N_CLASSES = 4


# --------------------------------------------------------------------------- environment

def machine_record(sessions=()):
    """Platform and package versions, plus the providers the given sessions actually got."""
    import onnx
    import torchvision

    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ort_available_providers": ort.get_available_providers(),
        "cuda_available_torch": torch.cuda.is_available(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    record["session_providers"] = sorted({tuple(s.get_providers()) for s in sessions})
    return record


def format_record(record):
    keys = ["date", "platform", "cpu_count", "load_average", "python", "torch", "torchvision", "onnx",
            "onnxruntime", "session_providers"]
    if "gpu" in record:
        keys.append("gpu")
    return "\n".join(f"  {k}: {record[k]}" for k in keys if k in record)


def finish_record(result, output=None):
    """Print ``result["machine"]`` (:func:`format_record`); write ``result`` as JSON to ``output`` (a path), if any."""
    print(format_record(result["machine"]))
    if output:
        output.write_text(json.dumps(result, indent=1, default=str))


# --------------------------------------------------------------------------- models

def _randomise_batchnorm(model, seed):
    """Give BatchNorm layers non-trivial running statistics so activations are not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) * 0.5 + 0.75)


def build_model(name, channels=5, n_classes=N_CLASSES, seed=0):
    """A randomly initialised benchmark model (see ``MODELS``) with ``channels`` inputs.

    Returns ``(model, target_layer_name)`` with the model in eval mode. No weights are
    downloaded: timings do not depend on the weight values.
    """
    import torchvision

    from gradcamo.models import EfficientNet3dSmall, adapt_first_conv

    torch.manual_seed(seed)
    if name == "resnet18":
        model = adapt_first_conv(torchvision.models.resnet18(weights=None, num_classes=n_classes), channels)
    elif name == "r3d_18":
        model = adapt_first_conv(torchvision.models.video.r3d_18(weights=None, num_classes=n_classes), channels)
    elif name == "efficientnet3d":
        model = EfficientNet3dSmall(in_channels=channels, num_classes=n_classes)
    else:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    _randomise_batchnorm(model, seed)
    return model.eval(), MODELS[name]["layer"]


def get_layer(model, name):
    return dict(model.named_modules())[name]


# --------------------------------------------------------------------------- onnxruntime

def session_options(*, opt_level="all", threads=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options.graph_optimization_level = levels[opt_level]
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def create_session(path, *, device="cpu", opt_level="all", threads=None):
    """An ORT session on ``device``; raises if CUDA was asked for and not obtained."""
    from gradcamo.scorer.session import providers_for, require_device

    if device not in DEVICES:
        raise ValueError(f"--device: expected one of {DEVICES}, got {device!r}")
    session = ort.InferenceSession(
        str(path), session_options(opt_level=opt_level, threads=threads), providers=providers_for(device)
    )
    return require_device(session, device)


def export_forward_only(model, input_shape, path, *, opset=18):
    """Export the plain model (image -> logits) with the dynamo exporter and a dynamic batch."""
    example = torch.randn((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=opset,
        input_names=["image"], output_names=["logits"],
        dynamic_shapes=({0: batch},), verbose=False,
    )
    program.save(str(path))
    return path


# --------------------------------------------------------------------------- torch reference

def torch_grad_cam_inputs(model, layer, image, target=None):
    """Eager forward + backward: (logits, activations, gradients) the usual way.

    A forward hook keeps the layer's output; ``torch.autograd.grad`` of the sum of each
    sample's selected logit (argmax where ``target`` is None or -1) gives the gradients.
    """
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(image)
    finally:
        handle.remove()
    activations = captured[-1]
    if target is None:
        target = torch.full((image.shape[0],), -1, dtype=torch.long)
    target = torch.where(target < 0, logits.argmax(1), target)
    selected = logits.gather(1, target[:, None]).sum()
    (gradients,) = torch.autograd.grad(selected, activations)
    return logits, activations, gradients


def torch_device(device):
    return torch.device("cuda" if device == "cuda" else "cpu")


# --------------------------------------------------------------------------- timing

def interleaved_median_times(fns, repeats=5, warmup=1, sync=None):
    """Median seconds of each ``fns[name]()``, measured round-robin in one run.

    Each round calls every function once, so slow drifts of a noisy machine (other
    processes, thermal state) affect all candidates alike. Returns ``{name: (median, times)}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            if sync:
                sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def check_device_available(device):
    """Fail before any work when ``device="cuda"`` cannot be served by ORT and torch."""
    if device != "cuda":
        return
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    probe.ir_version = min(probe.ir_version, 10)
    onnx.checker.check_model(probe)
    from gradcamo.errors import InputError
    from gradcamo.scorer.session import providers_for, require_device

    session = ort.InferenceSession(probe.SerializeToString(), providers=providers_for("cuda"))
    try:
        require_device(session, "cuda")
    except InputError as error:
        raise RuntimeError(f"--{error}") from None
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch.cuda.is_available() is False; use --device cpu")
