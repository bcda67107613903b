"""encode(): OME-Zarr inputs -> each cell's latent code and reconstruction error, in a Parquet dataset.

Cells are streamed exactly as ``score`` streams them (the same planning, work units, crops,
keys, resume, Dask cluster, progress and failure handling: :func:`gradcamo.scorer.pipeline.run_units`);
each unit runs the autoencoder's encoder on its crops and the decoder on the codes, for
``reconstruction_mse``. The dataset's rows (docs/encode.md)::

    Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Image, Metadata_ObjectNumber,
    centroid_z, centroid_y, centroid_x, object_voxels, edge_padded, z_0 .. z_{L-1}, reconstruction_mse

``_gradcamo.json`` adds ``"kind": "latents"``, ``"autoencoder"`` (the AE_DIR, absolute) and
``"latent_size"`` to the usual entries.
"""

import dataclasses
import time

import numpy as np
import pyarrow as pa

from gradcamo.contract import IMAGE, LATENT_CODE
from gradcamo.exaggerate.autoencoder import AutoencoderInfo, open_decoder, open_encoder, read_autoencoder
from gradcamo.scorer.failures import DEFAULT_MAX_FAILURES
from gradcamo.scorer.pipeline import RunSummary, check_run_options, plan_run, run_units
from gradcamo.scorer.plan import UNIT_MAX_BYTES
from gradcamo.scorer.resources import describe_worker
from gradcamo.scorer.sink import KEY_FIELDS, make_table
from gradcamo.scorer.units import StageClock, UnitResult, key_columns, padded_for, read_unit
from gradcamo.scorer.worker import session_threads, worker_state

KIND = "latents"
CODE_PREFIX = "z_"
RECONSTRUCTION_MSE = "reconstruction_mse"


def code_columns(latent_size) -> list[str]:
    """The names of the latent code's columns: ``z_0`` .. ``z_{L-1}``."""
    return [f"{CODE_PREFIX}{i}" for i in range(latent_size)]


def latent_schema(latent_size) -> pa.Schema:
    """The Arrow schema of a latents dataset with codes of ``latent_size`` features."""
    return pa.schema([
        *KEY_FIELDS,
        ("edge_padded", pa.bool_()),
        *((name, pa.float32()) for name in code_columns(latent_size)),
        (RECONSTRUCTION_MSE, pa.float32()),
    ])


@dataclasses.dataclass(frozen=True)
class EncodeSpec:
    """What a worker needs to encode a unit's cells; small and picklable (no session inside)."""

    autoencoder: AutoencoderInfo
    device: str
    threads: object
    batch_size: int

    @property
    def crop_shape(self) -> tuple:
        return tuple(self.autoencoder.input_shape)

    @property
    def crop_spatial(self) -> tuple:
        return self.crop_shape[1:]

    @property
    def provenance(self) -> dict:
        """Recorded in every part's schema metadata (``gradcamo.<key>``)."""
        return {"encoder_sha256": self.autoencoder.encoder_sha256,
                "decoder_sha256": self.autoencoder.decoder_sha256}


def reconstruction_mse(decoded, crops) -> np.ndarray:
    """(n,) float32: the mean over each crop of ``(decoded - crop)^2``, in raw intensities (float64 sums)."""
    error = decoded.astype(np.float64) - crops
    return (error * error).reshape(len(crops), -1).mean(axis=1).astype(np.float32)


def encode_unit(spec, block, objects=None) -> UnitResult:
    """Encode the objects of one block: read, (measure,) cut, encode, decode, build the rows.

    Parameters
    ----------
    spec : EncodeSpec
    block : gradcamo.scorer.units.Block
    objects : gradcamo.scorer.units.Objects, optional
        The block's objects from pass 1; None for a whole image.

    Returns
    -------
    gradcamo.scorer.units.UnitResult
    """
    state = worker_state()
    clock = StageClock()
    objects, cutter = read_unit(block, objects, spec.crop_spatial, clock)
    if not len(objects):
        return UnitResult(latent_table(spec, block, objects, None), 0, None, clock.seconds)

    threads = session_threads(spec.threads)
    encoder = state.session(open_encoder, spec.autoencoder, spec.device, threads)
    decoder = state.session(open_decoder, spec.autoencoder, spec.device, threads)
    codes, errors = [], []
    for begin in range(0, len(objects), spec.batch_size):
        chosen = np.arange(begin, min(begin + spec.batch_size, len(objects)))
        crops, _ = cutter.cut(chosen, objects.ids[chosen])
        feed = padded_for(encoder, {IMAGE: crops}, spec.batch_size)
        clock.lap("cut")
        with state.batch_slot(encoder):
            clock.lap("wait")
            (code,) = encoder.run([LATENT_CODE], feed)
            (decoded,) = decoder.run([IMAGE], {LATENT_CODE: code})
            clock.lap("infer")
        codes.append(code[:len(chosen)])
        errors.append(reconstruction_mse(decoded[:len(chosen)], crops))
    encoded = {"codes": np.concatenate(codes), "mse": np.concatenate(errors), "pad": cutter.pad_fractions}
    table = latent_table(spec, block, objects, encoded)
    clock.lap("table")
    provider = encoder.get_providers()[0]
    return UnitResult(table, len(objects), provider, clock.seconds, worker=describe_worker(provider, threads))


def latent_table(spec, block, objects, encoded) -> pa.Table:
    """The rows of one unit, one per object, with :func:`latent_schema` (0 rows when ``encoded`` is None).

    ``encoded`` holds, per object: ``codes`` (n, L), ``mse`` (n,) and ``pad`` (pad fraction of the crop).
    """
    schema = latent_schema(spec.autoencoder.latent_size)
    if encoded is None:
        return make_table({}, provenance=spec.provenance, schema=schema)
    features = np.ascontiguousarray(encoded["codes"].T)  # one contiguous row per column
    return make_table({
        **key_columns(block, objects, np.arange(len(objects))),
        "edge_padded": encoded["pad"] > 0,
        **dict(zip(code_columns(len(features)), features)),
        RECONSTRUCTION_MSE: encoded["mse"],
    }, provenance=spec.provenance, schema=schema)


def encode(
    inputs, ae_dir, output, *, labels=None, channels=None, batch_size=64, device="auto", workers=None,
    threads=None, scheduler=None, overwrite=False, timepoint=0, progress=False, max_failures=DEFAULT_MAX_FAILURES,
    block_shape=None, unit_max_bytes=UNIT_MAX_BYTES,
) -> RunSummary:
    """Encode every cell of the given OME-Zarr images; write latent codes to ``output``.

    Parameters
    ----------
    inputs : sequence of str
        OME-Zarr images or HCS plates (local paths or fsspec URLs).
    ae_dir : str or os.PathLike
        An autoencoder directory (``gradcamo export-autoencoder``); its crop shape is the crop.
    output : str
        Parquet dataset directory; re-running with the same parameters resumes.
    labels, channels, batch_size, device, workers, threads, scheduler, overwrite, timepoint, progress, \
max_failures, block_shape, unit_max_bytes
        As for :func:`gradcamo.scorer.pipeline.score`.

    Returns
    -------
    gradcamo.scorer.pipeline.RunSummary

    Raises
    ------
    InputError
        Bad input or options (``ae_dir`` not an autoencoder directory, images that do not
        fit its crop shape or channels, ...), found before any work; nothing is written.
    Interrupted
        SIGINT/SIGTERM: finished parts are kept; the same call resumes.
    """
    started = time.time()
    check_run_options(inputs=inputs, batch_size=batch_size, workers=workers, threads=threads,
                      unit_max_bytes=unit_max_bytes, timepoint=timepoint, max_failures=max_failures, device=device)
    info = read_autoencoder(ae_dir)
    images, parameters = plan_run(inputs, info.input_shape, labels=labels, channels=channels, timepoint=timepoint,
                                  block_shape=block_shape, unit_max_bytes=unit_max_bytes)
    parameters.update(encoder_sha256=info.encoder_sha256, decoder_sha256=info.decoder_sha256,
                      latent_size=info.latent_size)
    spec = EncodeSpec(autoencoder=info, device=device, threads=threads, batch_size=batch_size)
    return run_units(
        encode_unit, spec, images, output, parameters,
        record={"kind": KIND, "autoencoder": str(info.directory), "latent_size": info.latent_size},
        overwrite=overwrite, scheduler=scheduler, workers=workers, threads=threads, progress=progress,
        max_failures=max_failures, started=started, verb="encoded", schema=latent_schema(info.latent_size),
    )


__all__ = ["EncodeSpec", "code_columns", "encode", "encode_unit", "latent_schema", "latent_table",
           "reconstruction_mse"]
