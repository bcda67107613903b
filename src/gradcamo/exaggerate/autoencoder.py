"""Autoencoder directories (AE_DIR): export them from torch, read them back, open their sessions.

Layout of an AE_DIR::

    encoder.onnx       image float32 (N, C, [D,] H, W), raw intensities -> z float32 (N, L)
    decoder.onnx       z float32 (N, L) -> image float32 (N, C, [D,] H, W), raw intensities
    autoencoder.json   format, version, latent_size, input_shape, mean, std, the graphs' sha256, ...

The preprocessing ``(x - mean) / std`` is baked into the encoder and undone in the decoder, so
both take and give crops exactly as the scorer cuts them. Reading needs no torch; exporting
imports it (through :mod:`gradcamo.exporter.autoencoder`) on call.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib

import onnxruntime as ort

import gradcamo
from gradcamo.errors import InputError
from gradcamo.files import staged_directory
from gradcamo.model_file import file_sha256
from gradcamo.scorer.session import create_session

LOGGER = logging.getLogger(__name__)
FORMAT = "gradcamo-autoencoder"
FORMAT_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
INFO_FILE = "autoencoder.json"
DEFAULT_OPSET = 18


@dataclasses.dataclass(frozen=True)
class AutoencoderInfo:
    """What an AE_DIR declares (``autoencoder.json``), with the paths of its two graphs.

    Hashable (``mean`` and ``std`` are tuples or None): a worker caches its sessions by it.
    """

    directory: pathlib.Path
    latent_size: int
    input_shape: tuple
    mean: object
    std: object
    encoder_path: pathlib.Path
    decoder_path: pathlib.Path
    encoder_sha256: str
    decoder_sha256: str
    source: str = ""

    @property
    def spatial_dims(self) -> int:
        return len(self.input_shape) - 1


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _check_output_directory(output_dir):
    output_dir = pathlib.Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"-o {output_dir}: exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / INFO_FILE).is_file():
        raise InputError(f"-o {output_dir}: holds files that are not an autoencoder directory; choose a new "
                         "or empty directory")
    parent = output_dir.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"-o {output_dir}: directory {str(parent)!r} does not exist or is not writable")
    return output_dir


def _model_and_source(model, weights):
    from gradcamo.exporter.loading import load_model, load_weights

    if isinstance(model, str):
        source, model = model, load_model(model)
    else:
        source = f"{type(model).__module__}.{type(model).__qualname__}"
    if weights is not None:
        load_weights(model, weights)
    return model, source


def export_autoencoder(model, input_shape, output_dir, *, weights=None, mean=None, std=None, quiet=False,
                       opset=DEFAULT_OPSET) -> AutoencoderInfo:
    """Export an autoencoder as an AE_DIR: ``encoder.onnx``, ``decoder.onnx``, ``autoencoder.json``.

    Parameters
    ----------
    model : str or torch.nn.Module
        A module with ``encode(x) -> (N, L)`` and ``decode(z) -> (N, C, [D,] H, W)``, or the
        spec of its factory as for ``gradcamo export`` (``package.module:factory`` or
        ``path/file.py:factory``). It is copied, never modified.
    input_shape : tuple of int
        Crop shape ``(C, H, W)`` or ``(C, D, H, W)``.
    output_dir : str or os.PathLike
        The AE_DIR; an earlier AE_DIR there is replaced, other files are refused.
    weights : str or os.PathLike, optional
        A state_dict file loaded (strictly) into the model first.
    mean, std : sequence of float, optional
        Per-channel normalisation the model was trained with, baked into the graphs.
    quiet : bool
        Log at debug level only.
    opset : int
        ONNX opset.

    Returns
    -------
    AutoencoderInfo

    Raises
    ------
    InputError
        A bad argument, or a model that is no autoencoder of ``input_shape``.
    ExportError
        A graph cannot be converted.
    ValidationError
        A graph disagrees with torch on seeded inputs; nothing is written.
    """
    from gradcamo.exporter.autoencoder import check_is_autoencoder, export_graphs
    from gradcamo.exporter.export import check_input_shape, check_normalisation

    input_shape = check_input_shape(input_shape)
    output_dir = _check_output_directory(output_dir)
    mean, std = check_normalisation(mean, std, input_shape[0])
    model, source = _model_and_source(model, weights)
    check_is_autoencoder(model, source)
    graphs = export_graphs(model, input_shape, mean=mean, std=std, opset=opset)
    description = {
        "format": FORMAT, "version": FORMAT_VERSION, "latent_size": graphs.latent_size,
        "input_shape": list(input_shape), "mean": mean, "std": std,
        "encoder_sha256": _sha256(graphs.encoder), "decoder_sha256": _sha256(graphs.decoder),
        "gradcamo_version": gradcamo.__version__, "source": source, "validation": graphs.validation(),
    }
    with staged_directory(output_dir) as staging:
        (staging / ENCODER_FILE).write_bytes(graphs.encoder)
        (staging / DECODER_FILE).write_bytes(graphs.decoder)
        (staging / INFO_FILE).write_text(json.dumps(description, indent=2))
    (LOGGER.debug if quiet else LOGGER.info)("wrote %s (latent size %d)", output_dir, graphs.latent_size)
    return read_autoencoder(output_dir)


def _not_an_autoencoder(directory, why):
    return InputError(f"ae_dir {directory}: not an autoencoder directory ({why}); make one with "
                      "`gradcamo export-autoencoder`", argument="ae_dir")


def _checked_description(directory):
    if not directory.is_dir():
        raise _not_an_autoencoder(directory, "no such directory")
    try:
        description = json.loads((directory / INFO_FILE).read_text())
    except FileNotFoundError:
        raise _not_an_autoencoder(directory, f"no {INFO_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_an_autoencoder(directory, f"{INFO_FILE} is unreadable: {error}") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise _not_an_autoencoder(directory, f"{INFO_FILE} is not a {FORMAT} description")
    if not isinstance(description.get("version"), int) or description["version"] > FORMAT_VERSION:
        raise InputError(f"ae_dir {directory}: {INFO_FILE} has format version {description.get('version')!r}, "
                         f"newer than this gradcamo reads ({FORMAT_VERSION}); upgrade gradcamo", argument="ae_dir")
    shape = description.get("input_shape")
    if (not isinstance(description.get("latent_size"), int) or not isinstance(shape, list)
            or len(shape) not in (3, 4)):
        raise _not_an_autoencoder(directory, f"{INFO_FILE} lacks latent_size or a C,[D,]H,W input_shape")
    return description


def _as_tuple(values):
    return None if values is None else tuple(values)


def read_autoencoder(ae_dir) -> AutoencoderInfo:
    """Read and check an AE_DIR written by :func:`export_autoencoder` (no torch, no onnxruntime).

    Raises
    ------
    InputError
        ``ae_dir`` is missing, lacks a file, has an unreadable or foreign ``autoencoder.json``,
        or a graph whose sha256 differs from the one recorded (replaced or damaged).
    """
    directory = pathlib.Path(ae_dir)
    description = _checked_description(directory)
    paths = {}
    for name, key in ((ENCODER_FILE, "encoder_sha256"), (DECODER_FILE, "decoder_sha256")):
        path = directory / name
        if not path.is_file():
            raise _not_an_autoencoder(directory, f"no {name}")
        if file_sha256(path) != description.get(key):
            raise InputError(f"ae_dir {directory}: {name} differs from the graph {INFO_FILE} records "
                             "(replaced or damaged); export the autoencoder again", argument="ae_dir")
        paths[name] = path.resolve()
    return AutoencoderInfo(
        directory=directory.resolve(), latent_size=description["latent_size"],
        input_shape=tuple(description["input_shape"]), mean=_as_tuple(description.get("mean")),
        std=_as_tuple(description.get("std")),
        encoder_path=paths[ENCODER_FILE], decoder_path=paths[DECODER_FILE],
        encoder_sha256=description["encoder_sha256"], decoder_sha256=description["decoder_sha256"],
        source=description.get("source", ""),
    )


def open_encoder(info, device="auto", threads=None, device_id=None) -> ort.InferenceSession:
    """An onnxruntime session of ``info``'s encoder: ``image`` (N, C, [D,] H, W) -> ``z`` (N, L)."""
    return create_session(str(info.encoder_path), device=device, threads=threads, device_id=device_id)


def open_decoder(info, device="auto", threads=None, device_id=None) -> ort.InferenceSession:
    """An onnxruntime session of ``info``'s decoder: ``z`` (N, L) -> ``image`` (N, C, [D,] H, W)."""
    return create_session(str(info.decoder_path), device=device, threads=threads, device_id=device_id)


__all__ = ["AutoencoderInfo", "export_autoencoder", "open_decoder", "open_encoder", "read_autoencoder"]
