"""Latents datasets for exaggerate's tests, written with the scorer's dataset machinery in the contract's schema."""

import numpy as np
import pyarrow as pa

from gradcamo.cli import main
from gradcamo.exaggerate.autoencoder import export_autoencoder
from gradcamo.scorer.sink import ScoreDataset
from tests.tiny_models import CROP_2D, tiny_autoencoder

LOW_WELLS = ("B01", "B02")
HIGH_WELLS = ("B03", "B04")
HIGH = "Metadata_Well in ('B03', 'B04')"
LOW = "Metadata_Well in ('B01', 'B02')"
MEAN, STD = [100.0] * 3, [300.0] * 3
"""The tiny autoencoder's normalisation (baked into its graphs)."""


def write_latents(directory, codes, wells, *, autoencoder, plates=None, reconstruction_mse=None):
    """Write (N, L) codes of cells in ``wells`` as a latents dataset (one part per well), like ``gradcamo encode``.

    Returns
    -------
    pathlib.Path
    """
    codes = np.asarray(codes, dtype=np.float32)
    wells = np.asarray(wells)
    plates = np.asarray(plates if plates is not None else ["demo"] * len(codes))
    n, latent_size = codes.shape
    with ScoreDataset.open(directory, {"kind": "latents", "autoencoder": str(autoencoder)}) as dataset:
        for well in sorted(set(wells)):
            index = np.flatnonzero(wells == well)
            columns = {
                "Metadata_Plate": pa.array(plates[index].tolist(), pa.string()),
                "Metadata_Well": pa.array(wells[index].tolist(), pa.string()),
                "Metadata_Site": pa.array(np.zeros(len(index), np.int32)),
                "Metadata_Image": pa.array([f"plate.zarr/{w[0]}/{int(w[1:])}/0" for w in wells[index]], pa.string()),
                "Metadata_ObjectNumber": pa.array(np.arange(1, len(index) + 1, dtype=np.int64)),
                "centroid_z": pa.nulls(len(index), pa.float64()),
                "centroid_y": pa.array(np.linspace(10, 90, len(index))),
                "centroid_x": pa.array(np.linspace(20, 80, len(index))),
                "object_voxels": pa.array(np.full(len(index), 300, np.int64)),
                "edge_padded": pa.array(np.zeros(len(index), bool)),
            }
            columns |= {f"z_{k}": pa.array(codes[index, k]) for k in range(latent_size)}
            mse = np.zeros(len(index)) if reconstruction_mse is None else reconstruction_mse[index]
            columns["reconstruction_mse"] = pa.array(np.asarray(mse, np.float32))
            dataset.write_part(well, pa.table(columns))
        dataset.record(kind="latents", autoencoder=str(autoencoder), latent_size=latent_size)
        dataset.finish({"cells": n, "units": len(set(wells))})
    return directory


def two_groups(latent_size, *, cells_per_well=10, shift=1.5, seed=0):
    """Codes of cells in two low and two high wells; the high ones shifted along the first two features.

    Returns
    -------
    codes : (N, L) float32 ndarray
    wells : (N,) str ndarray
    """
    generator = np.random.default_rng(seed)
    wells = np.repeat(LOW_WELLS + HIGH_WELLS, cells_per_well)
    codes = generator.normal(size=(len(wells), latent_size))
    codes[np.isin(wells, HIGH_WELLS), :2] += shift
    return codes.astype(np.float32), wells


def tiny_exaggeration_inputs(root):
    """An AE_DIR of the tiny 2D autoencoder (crop :data:`CROP_2D`, 4 features) and a latents dataset of it.

    Returns
    -------
    ae_dir, latents : pathlib.Path
    codes : (40, 4) float32 ndarray
    wells : (40,) str ndarray
    """
    ae_dir = export_autoencoder(tiny_autoencoder(2), CROP_2D, root / "ae", mean=MEAN, std=STD, quiet=True).directory
    codes, wells = two_groups(4)
    return ae_dir, write_latents(root / "latents", codes, wells, autoencoder=ae_dir), codes, wells


def run_tiny_exaggeration(root, *options):
    """``gradcamo exaggerate`` of :func:`tiny_exaggeration_inputs` (high B03, B04; low B01, B02) with ``options``.

    Returns
    -------
    output, ae_dir, latents : pathlib.Path
    codes, wells : ndarray
    """
    ae_dir, latents, codes, wells = tiny_exaggeration_inputs(root)
    output = root / "out"
    assert main(["exaggerate", str(latents), "-a", str(ae_dir), "--high", HIGH, "--low", LOW, "-o", str(output),
                 "--quiet", *options]) == 0
    return output, ae_dir, latents, codes, wells
