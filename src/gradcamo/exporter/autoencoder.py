"""Torch side of ``export-autoencoder``: an autoencoder -> two plain forward ONNX graphs, checked against torch.

The encoder graph takes raw crops and bakes ``(x - mean) / std`` in before ``model.encode``; the
decoder graph undoes it (``x * std + mean``) after ``model.decode``, so both speak raw
intensities, like the scorer's crops. Neither needs gradients: they are exported as they are,
with the dynamo ONNX exporter the gradient graphs already use (:func:`convert_to_onnx`, one
dynamic batch axis), which lowers convolutions, transposed convolutions, upsampling and
reshapes of conv autoencoders in 2D and 3D.
"""

import copy
import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from gradcamo.contract import IMAGE, LATENT_CODE
from gradcamo.errors import InputError, ValidationError, first_line
from gradcamo.exporter.export import shape_or_type
from gradcamo.exporter.trace import choose_trace_batch, convert_to_onnx
from gradcamo.exporter.validate import N_SAMPLES, SEED, make_validation_images, max_relative_error, run_onnx
from gradcamo.exporter.wrap import ChannelNormalisation

LOGGER = logging.getLogger(__name__)
RTOL = 1e-4
"""Largest accepted error of a graph's output, relative to the sample's largest |output| (torch's).

A plain float32 forward graph run by onnxruntime differs from eager torch by op order only:
~1e-7..1e-6 of the output's scale on the tested conv autoencoders; a wrong graph (a missed
normalisation, a sampling step, a specialised shape) differs by order 1. 1e-4 leaves a 100x
margin for deeper networks and is far below what reconstruction errors or exaggerated codes
resolve.
"""
FAR_CODE_SPREAD = 4.0
"""Decoder validation codes also move each encoded code this many per-feature standard deviations
away at random: ``exaggerate`` decodes codes far outside the encoded range."""


@dataclasses.dataclass(frozen=True)
class AutoencoderGraphs:
    """Serialised encoder and decoder graphs and their worst errors against torch."""

    encoder: bytes
    decoder: bytes
    latent_size: int
    encoder_max_rel_error: float
    decoder_max_rel_error: float
    n_samples: int
    rtol: float = RTOL

    def validation(self) -> dict:
        """The validation figures as a JSON-ready dict."""
        return {"n_samples": self.n_samples, "encoder_max_rel_error": self.encoder_max_rel_error,
                "decoder_max_rel_error": self.decoder_max_rel_error, "rtol": self.rtol}


class EncoderGraph(nn.Module):
    """forward(image) -> z: ``model.encode`` of the normalised raw crop."""

    def __init__(self, model, input_shape, mean=None, std=None):
        super().__init__()
        self.model = model
        self.normalise = ChannelNormalisation(input_shape, mean, std)

    def forward(self, image) -> torch.Tensor:
        return self.model.encode(self.normalise(image))


class DecoderGraph(nn.Module):
    """forward(z) -> image: ``model.decode`` with the normalisation undone (raw intensities)."""

    def __init__(self, model, input_shape, mean=None, std=None):
        super().__init__()
        self.model = model
        self.normalise = ChannelNormalisation(input_shape, mean, std)

    def forward(self, code) -> torch.Tensor:
        return self.normalise.undo(self.model.decode(code))


def check_is_autoencoder(model, source) -> None:
    """Raise ``InputError`` unless ``model`` has callable ``encode`` and ``decode`` methods."""
    missing = [name for name in ("encode", "decode") if not callable(getattr(model, name, None))]
    if missing:
        raise InputError(
            f"MODEL: {source} ({type(model).__name__}) is not an autoencoder: it has no {' or '.join(missing)} method "
            "(expected encode(x) -> (N, L) and decode(z) -> (N, C, [D,] H, W))"
        )


def probe_autoencoder(model, input_shape) -> int:
    """Encode and decode a zero batch once; check the shapes. Returns the latent size."""
    batch = choose_trace_batch(input_shape)
    try:
        with torch.no_grad():
            code = model.encode(torch.zeros((batch, *input_shape)))
    except Exception as error:  # user models raise anything on a bad shape
        raise InputError(
            f"--input-shape: the model's encode rejects input {tuple(input_shape)}: {first_line(error)}"
        ) from error
    if not isinstance(code, torch.Tensor) or code.dim() != 2 or code.shape[0] != batch:
        raise InputError(f"MODEL: encode must return (N, L) latent codes, got {shape_or_type(code)} for a batch "
                         f"of {batch}")
    try:
        with torch.no_grad():
            decoded = model.decode(code)
    except Exception as error:  # user code
        raise InputError(f"MODEL: decode fails on the codes encode returns: {first_line(error)}") from error
    expected = (batch, *input_shape)
    if not isinstance(decoded, torch.Tensor) or tuple(decoded.shape) != expected:
        raise InputError(
            f"MODEL: decode returns shape {shape_or_type(decoded)} for a batch of {batch}, not the input shape "
            f"{expected}; check --input-shape"
        )
    return int(code.shape[1])


def _normalised(image, decoder):
    """Decoded raw intensities back in the model's units: errors are then relative to the decoded
    variation, not to a large channel mean."""
    return decoder.normalise(torch.from_numpy(image)).numpy()


def make_validation_codes(codes) -> np.ndarray:
    """The encoded codes, then the same codes moved far away (:data:`FAR_CODE_SPREAD`) at random."""
    spread = codes.std(axis=0, keepdims=True) + np.float32(1e-3)
    noise = np.random.default_rng(SEED + 1).standard_normal(codes.shape).astype(np.float32)
    return np.concatenate([codes, codes + FAR_CODE_SPREAD * spread * noise])


def export_graphs(model, input_shape, *, mean=None, std=None, opset) -> AutoencoderGraphs:
    """Export and validate the encoder and decoder graphs of ``model`` (copied, never modified).

    Returns
    -------
    AutoencoderGraphs

    Raises
    ------
    InputError
        ``model`` is no autoencoder, or rejects ``input_shape``, or decodes to another shape.
    ExportError
        A graph cannot be converted.
    ValidationError
        A graph disagrees with torch beyond :data:`RTOL` on the seeded inputs.
    """
    model = copy.deepcopy(model).float().eval()
    latent_size = probe_autoencoder(model, input_shape)
    encoder = EncoderGraph(model, input_shape, mean, std).eval()
    decoder = DecoderGraph(model, input_shape, mean, std).eval()
    batch = choose_trace_batch(input_shape)
    example = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        example_code = encoder(example)
        encoder_bytes = convert_to_onnx(encoder, (example,), opset=opset, input_names=(IMAGE,),
                                        output_names=(LATENT_CODE,)).SerializeToString()
        decoder_bytes = convert_to_onnx(decoder, (example_code,), opset=opset, input_names=(LATENT_CODE,),
                                        output_names=(IMAGE,)).SerializeToString()
        images = make_validation_images(input_shape, mean=mean, std=std)
        codes = encoder(torch.from_numpy(images)).numpy()
        [(onnx_codes,)] = run_onnx(encoder_bytes, (LATENT_CODE,), [{IMAGE: images}])
        decoder_codes = make_validation_codes(codes)
        decoded = decoder(torch.from_numpy(decoder_codes)).numpy()
        [(onnx_decoded,)] = run_onnx(decoder_bytes, (IMAGE,), [{LATENT_CODE: decoder_codes}])
    graphs = AutoencoderGraphs(
        encoder_bytes, decoder_bytes, latent_size, max_relative_error(onnx_codes, codes),
        max_relative_error(_normalised(onnx_decoded, decoder), _normalised(decoded, decoder)), n_samples=N_SAMPLES,
    )
    failures = [f"{name} relative error {error:.3g} > {RTOL:g}" for name, error in
                (("encoder", graphs.encoder_max_rel_error), ("decoder", graphs.decoder_max_rel_error))
                if not error <= RTOL]
    if failures:
        raise ValidationError("the exported autoencoder disagrees with torch: " + "; ".join(failures))
    LOGGER.info("encoder/decoder max relative error vs torch %.1e / %.1e (tolerance %.0e)",
                graphs.encoder_max_rel_error, graphs.decoder_max_rel_error, RTOL)
    return graphs
