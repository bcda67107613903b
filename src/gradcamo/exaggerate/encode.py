"""encode(): OME-Zarr inputs -> each cell's latent code and reconstruction error, in a Parquet dataset.

``encode`` is a pass kind of the cell-stream engine (:class:`EncodePass`): cells are streamed
exactly as ``score`` streams them (the same planning, work units, crops, keys, resume, Dask
cluster, progress and failure handling); each batch runs the autoencoder's encoder on its
crops and the decoder on the codes, for ``reconstruction_mse``. The dataset's rows (docs/encode.md)::

    Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Image, Metadata_ObjectNumber,
    centroid_z, centroid_y, centroid_x, object_voxels, edge_padded, z_0 .. z_{L-1}, reconstruction_mse

``_gradcamo.json`` adds ``"kind": "latents"``, ``"autoencoder"`` (the AE_DIR, absolute) and
``"latent_size"`` to the usual entries.
"""

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from gradcamo.contract import IMAGE, LATENT_CODE
from gradcamo.exaggerate.autoencoder import AutoencoderInfo, open_decoder, open_encoder, read_autoencoder
from gradcamo.scorer.engine import KEY_FIELDS, CellBatch, Inference, Rows
from gradcamo.scorer.failures import DEFAULT_MAX_FAILURES
from gradcamo.scorer.pipeline import RunSummary, check_run_options, plan_run, run_units
from gradcamo.scorer.plan import UNIT_MAX_BYTES

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
class EncodedBatch:
    """One batch's cells, latent codes (m, L) and reconstruction errors (m,)."""

    cells: np.ndarray
    codes: np.ndarray
    errors: np.ndarray


@dataclasses.dataclass(frozen=True)
class EncodePass:
    """The ``encode`` pass, a kind of the cell-stream engine (:mod:`gradcamo.scorer.engine`):
    small and picklable (no session inside)."""

    autoencoder: AutoencoderInfo
    device: str
    threads: int | None
    batch_size: int
    inputs_per_cell = 1
    mask_dtype = bool  # masks are not used

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.input_shape)

    @property
    def provenance(self) -> dict:
        return {"encoder_sha256": self.autoencoder.encoder_sha256,
                "decoder_sha256": self.autoencoder.decoder_sha256}

    @property
    def schema(self) -> pa.Schema:
        return latent_schema(self.autoencoder.latent_size)

    def run_batch(self, batch: CellBatch, inference: Inference) -> EncodedBatch:
        """Encode the batch's crops, decode the codes, compare."""
        encoder = inference.session(open_encoder, self.autoencoder)
        decoder = inference.session(open_decoder, self.autoencoder)
        (codes,) = inference.run(encoder, [LATENT_CODE], {IMAGE: batch.crops})
        (decoded,) = inference.run(decoder, [IMAGE], {LATENT_CODE: codes})
        return EncodedBatch(batch.cells, codes, reconstruction_mse(decoded, batch.crops))

    def rows(self, batches: Sequence[EncodedBatch]) -> Rows:
        """One row per cell: its code, one column per feature, and its reconstruction error."""
        codes = np.ascontiguousarray(np.concatenate([batch.codes for batch in batches]).T)  # a row per column
        return Rows(np.concatenate([batch.cells for batch in batches]), {
            **dict(zip(code_columns(len(codes)), codes)),
            RECONSTRUCTION_MSE: np.concatenate([batch.errors for batch in batches]),
        })


def reconstruction_mse(decoded, crops) -> np.ndarray:
    """(n,) float32: the mean over each crop of ``(decoded - crop)^2``, in raw intensities (float64 sums)."""
    error = decoded.astype(np.float64) - crops
    return (error * error).reshape(len(crops), -1).mean(axis=1).astype(np.float32)


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
    return run_units(
        EncodePass(autoencoder=info, device=device, threads=threads, batch_size=batch_size), images, output,
        parameters, record={"kind": KIND, "autoencoder": str(info.directory), "latent_size": info.latent_size},
        overwrite=overwrite, scheduler=scheduler, workers=workers, threads=threads, progress=progress,
        max_failures=max_failures, started=started, verb="encoded",
    )


__all__ = ["EncodePass", "EncodedBatch", "code_columns", "encode", "latent_schema", "reconstruction_mse"]
