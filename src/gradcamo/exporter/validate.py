"""Check an exported graph against torch autograd before it is written."""

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import torch

from gradcamo import contract
from gradcamo.errors import ExportError, ValidationError, first_line
from gradcamo.cam import compute_cam

CAM_RTOL = 1e-3
"""Largest accepted CAM error, relative to the largest |pre-ReLU CAM| of the sample.

float32 graphs that compute the same thing in another op order differ by ~1e-6 of that
scale (measured 1e-7..1e-5 over the tested architectures); a wrong gradient graph differs
by order 1. 1e-3 leaves a 100x margin for deeper nets while changing no Grad-CAMO score by
more than ~1e-3 of the CAM's mass at the layer's resolution.
"""
LOGITS_RTOL = 1e-3
"""Largest accepted logits error, relative to the largest |logit| of the sample."""
N_SAMPLES = 4
SEED = 0


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Worst errors of the ORT graph against torch autograd over the validation inputs."""

    n_samples: int
    cam_max_abs_error: float
    cam_max_rel_error: float
    logits_max_rel_error: float
    cam_rtol: float = CAM_RTOL
    logits_rtol: float = LOGITS_RTOL

    @property
    def failures(self) -> list[str]:
        found = []
        if not self.cam_max_rel_error <= self.cam_rtol:
            found.append(f"CAM relative error {self.cam_max_rel_error:.3g} > {self.cam_rtol:g}")
        if not self.logits_max_rel_error <= self.logits_rtol:
            found.append(f"logits relative error {self.logits_max_rel_error:.3g} > {self.logits_rtol:g}")
        return found

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def make_validation_images(input_shape, *, mean=None, std=None) -> np.ndarray:
    """:data:`N_SAMPLES` seeded raw-intensity images whose normalised values are ~ N(0, 1)."""
    generator = np.random.default_rng(SEED)
    image = generator.standard_normal((N_SAMPLES, *input_shape)).astype(np.float32)
    view = (1, -1) + (1,) * (len(input_shape) - 1)
    if std is not None:
        image = image * np.asarray(std, dtype=np.float32).reshape(view)
    if mean is not None:
        image = image + np.asarray(mean, dtype=np.float32).reshape(view)
    return image


def make_validation_inputs(input_shape, n_classes, *, mean=None, std=None) -> tuple:
    """Seeded raw-intensity images (:func:`make_validation_images`) and two target passes."""
    image = make_validation_images(input_shape, mean=mean, std=std)
    predicted = np.full(N_SAMPLES, contract.PREDICTED_CLASS, dtype=np.int64)
    mixed = (np.arange(N_SAMPLES, dtype=np.int64) * 3 + 1) % n_classes
    return image, (predicted, mixed)


def _torch_one_by_one(wrapper, image, target):
    """Run the eager wrapper one sample at a time: torch autograd per sample."""
    outputs = [
        wrapper(torch.from_numpy(image[i : i + 1]), torch.from_numpy(target[i : i + 1]))
        for i in range(len(image))
    ]
    return [torch.cat(parts).numpy() for parts in zip(*outputs)]


def _signed_cam_scale(activations, gradients):
    spatial = tuple(range(2, activations.ndim))
    alpha = gradients.astype(np.float64).mean(axis=spatial)
    signed = np.einsum("nk,nk...->n...", alpha, activations.astype(np.float64))
    return np.abs(signed).reshape(len(signed), -1).max(axis=1)


def _relative(error, scale):
    return float(np.max(error / np.maximum(scale, np.finfo(np.float32).tiny)))


def max_relative_error(ours, reference) -> float:
    """The worst, over samples (axis 0), of max |ours - reference| / max |reference| within the sample."""
    error = np.abs(ours.astype(np.float64) - reference).reshape(len(reference), -1).max(axis=1)
    return _relative(error, np.abs(reference).reshape(len(reference), -1).max(axis=1))


def run_onnx(model_bytes, output_names, feeds) -> list:
    """Run a serialised graph on CPU once per feed; the outputs of each run.

    Raises
    ------
    ExportError
        onnxruntime cannot load or run the graph.
    """
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return [session.run(list(output_names), feed) for feed in feeds]
    except Exception as error:  # onnxruntime's error classes share no useful base
        raise ExportError(f"onnxruntime cannot run the exported graph: {first_line(error)}") from error


def validate_onnx(model_bytes, wrapper, input_shape, n_classes, *, mean=None, std=None) -> ValidationReport:
    """Compare ORT's batched CAMs and logits with eager torch autograd, sample by sample.

    Raises
    ------
    ValidationError
        Listing every quantity whose error exceeds its tolerance.
    """
    image, target_passes = make_validation_inputs(input_shape, n_classes, mean=mean, std=std)
    ort_outputs = run_onnx(
        model_bytes, contract.OUTPUT_NAMES, [{contract.IMAGE: image, contract.TARGET: target} for target in target_passes]
    )
    cam_abs, cam_rel, logits_rel = 0.0, 0.0, 0.0
    for target, (logits, activations, gradients) in zip(target_passes, ort_outputs):
        ref_logits, ref_activations, ref_gradients = _torch_one_by_one(wrapper, image, target)
        cam_error = np.abs(compute_cam(activations, gradients) - compute_cam(ref_activations, ref_gradients))
        cam_error = cam_error.reshape(len(image), -1).max(axis=1)
        cam_abs = max(cam_abs, float(cam_error.max()))
        cam_rel = max(cam_rel, _relative(cam_error, _signed_cam_scale(ref_activations, ref_gradients)))
        logits_rel = max(logits_rel, max_relative_error(logits, ref_logits))
    report = ValidationReport(len(image) * len(target_passes), cam_abs, cam_rel, logits_rel)
    if report.failures:
        raise ValidationError(
            "the exported graph disagrees with torch autograd: " + "; ".join(report.failures)
        )
    return report
