"""Torch side of Latent Shift (Cohen et al. 2021): one ONNX graph from a latent code to the gradient of a logit.

The graph is ``decode`` (normalisation undone: raw intensities) followed by the classifier
(its normalisation applied), and the gradient of one logit per sample with respect to the
code, traced with the exporter's machinery (:func:`trace_gradient_graph`) as the gradient
graphs of ``gradcamo export`` are. ``exaggerate --direction gradient:FILE`` runs it without
torch (:mod:`gradcamo.exaggerate.gradient`).
"""

import copy
import json
import logging

import numpy as np
import onnx
import torch
from torch import nn

import gradcamo
from gradcamo import contract
from gradcamo.errors import InputError, ValidationError
from gradcamo.exporter.autoencoder import (
    DecoderGraph, EncoderGraph, check_is_autoencoder, make_validation_codes, probe_autoencoder,
)
from gradcamo.exporter.export import check_input_shape, check_normalisation, check_output_path, write_atomically
from gradcamo.exporter.trace import choose_trace_batch, convert_to_onnx, trace_gradient_graph
from gradcamo.exporter.validate import make_validation_images, max_relative_error, run_onnx
from gradcamo.exporter.wrap import ChannelNormalisation

LOGGER = logging.getLogger(__name__)
FORMAT_VERSION = 1
OUTPUT_NAMES = (contract.LOGITS, contract.LATENT_GRADIENT)
RTOL = 1e-3
"""Largest accepted error of logits and gradients, relative to each sample's largest |value| (torch's):
the tolerance of the CAMs of ``gradcamo export``, whose graphs are traced the same way."""


class LatentShiftGraph(nn.Module):
    """forward(z, target) -> (logits, d logits[n, target_n] / d z[n]): classifier(decode(z)), raw intensities between."""

    def __init__(self, autoencoder, classifier, input_shape, *, autoencoder_mean=None, autoencoder_std=None,
                 mean=None, std=None):
        super().__init__()
        self.decoder = DecoderGraph(autoencoder, input_shape, autoencoder_mean, autoencoder_std)
        self.normalise = ChannelNormalisation(input_shape, mean, std)
        self.classifier = classifier

    def forward(self, code, target) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = code.detach().requires_grad_(True)
            logits = self.classifier(self.normalise(self.decoder(leaf)))
            chosen = torch.where(target < 0, logits.argmax(dim=1), target)
            (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), leaf)
        return logits.detach(), gradient


def _validate(model_bytes, graph, codes, n_classes):
    targets = np.arange(len(codes)) % (n_classes + 1) - 1  # -1 (predicted) and every class
    with torch.no_grad():
        logits, gradients = (t.numpy() for t in graph(torch.from_numpy(codes), torch.from_numpy(targets)))
    (onnx_logits, onnx_gradients), = run_onnx(model_bytes, OUTPUT_NAMES, [{contract.LATENT_CODE: codes,
                                                                            contract.TARGET: targets}])
    errors = {"logits_max_rel_error": max_relative_error(onnx_logits, logits),
              "gradient_max_rel_error": max_relative_error(onnx_gradients, gradients)}
    failures = [f"{name} {error:.3g} > {RTOL:g}" for name, error in errors.items() if not error <= RTOL]
    if failures:
        raise ValidationError("the exported Latent Shift graph disagrees with torch autograd: " + "; ".join(failures))
    return {**errors, "n_samples": len(codes), "rtol": RTOL}


def export_latent_shift(autoencoder, classifier, input_shape, path, *, autoencoder_mean=None, autoencoder_std=None,
                        mean=None, std=None, class_names=None, opset=18) -> dict:
    """Export the Latent Shift graph of an autoencoder and a classifier; checked against torch autograd first.

    Parameters
    ----------
    autoencoder : torch.nn.Module
        With ``encode``/``decode``, as for ``export-autoencoder`` (copied, never modified).
    classifier : torch.nn.Module
        Returns (N, K) logits for crops of ``input_shape`` (copied, never modified).
    input_shape : tuple of int
        Crop shape ``(C, H, W)`` or ``(C, D, H, W)``.
    path : path-like
        The ``.onnx`` file; written only when the graph agrees with torch.
    autoencoder_mean, autoencoder_std, mean, std : sequence of float, optional
        The per-channel normalisations the autoencoder and the classifier were trained with.
    class_names : sequence of str, optional
    opset : int

    Returns
    -------
    dict
        The description stored under the metadata key :data:`gradcamo.contract.META_LATENT_SHIFT`.

    Raises
    ------
    InputError
        A bad argument, a module that is no autoencoder, a classifier that does not return (N, K) logits.
    ExportError, ValidationError
        The graph cannot be converted, or disagrees with torch beyond :data:`RTOL`.
    """
    input_shape = check_input_shape(input_shape)
    path = check_output_path(path)
    autoencoder_mean, autoencoder_std = check_normalisation(
        autoencoder_mean, autoencoder_std, input_shape[0], options=("--autoencoder-mean", "--autoencoder-std"))
    mean, std = check_normalisation(mean, std, input_shape[0])
    check_is_autoencoder(autoencoder, type(autoencoder).__name__)
    autoencoder = copy.deepcopy(autoencoder).float().eval()
    classifier = copy.deepcopy(classifier).float().eval()
    latent_size = probe_autoencoder(autoencoder, input_shape)
    graph = LatentShiftGraph(autoencoder, classifier, input_shape, autoencoder_mean=autoencoder_mean,
                             autoencoder_std=autoencoder_std, mean=mean, std=std).eval()
    batch = choose_trace_batch(input_shape)
    example_code = torch.randn((batch, latent_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = graph(example_code, torch.full((batch,), contract.PREDICTED_CLASS))
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise InputError(f"CLASSIFIER: must return (N, K) logits, got {tuple(logits.shape)} for a batch of {batch}")
    n_classes = int(logits.shape[1])
    class_names = [str(n) for n in class_names] if class_names else [f"class_{i}" for i in range(n_classes)]
    if len(class_names) != n_classes or len(set(class_names)) != n_classes:
        raise InputError(f"--classes: expected {n_classes} unique names, got {class_names}")
    example_target = torch.tensor([contract.PREDICTED_CLASS] + [0] * (batch - 1))
    LOGGER.info("tracing the Latent Shift graph (decoder, classifier, gradient to the code)")
    traced = trace_gradient_graph(graph, example_code, example_target)
    model_proto = convert_to_onnx(traced, (example_code, example_target), opset=opset,
                                  input_names=(contract.LATENT_CODE, contract.TARGET), output_names=OUTPUT_NAMES)
    images = make_validation_images(input_shape, mean=autoencoder_mean, std=autoencoder_std)
    with torch.no_grad():
        encoder = EncoderGraph(autoencoder, input_shape, autoencoder_mean, autoencoder_std)
        codes = make_validation_codes(encoder(torch.from_numpy(images)).numpy())
    validation = _validate(model_proto.SerializeToString(), graph, codes, n_classes)
    LOGGER.info("logits / gradient max relative error vs torch %.1e / %.1e (tolerance %.0e)",
                validation["logits_max_rel_error"], validation["gradient_max_rel_error"], RTOL)
    description = {"format": contract.LATENT_SHIFT_FORMAT, "version": FORMAT_VERSION, "latent_size": latent_size,
                   "input_shape": list(input_shape), "class_names": class_names, "validation": validation,
                   "torch_version": torch.__version__, "gradcamo_version": gradcamo.__version__}
    onnx.helper.set_model_props(model_proto, {contract.META_LATENT_SHIFT: json.dumps(description)})
    write_atomically(model_proto, path)
    LOGGER.info("wrote %s", path)
    return description
