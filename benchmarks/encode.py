"""``gradcamo encode`` throughput: the cells of a generated plate encoded (and decoded) by a small conv autoencoder.

    python benchmarks/encode.py [--cells 100000] [--field 1080] [--chunk 540] [--spacing 38] [--device cpu]

Writes a plate of 1080x1080 fields (``plates.write_grid_plate``, 5 channels, ~784 cells per field)
with at least ``--cells`` cells, exports ``SmallAutoencoder`` (5x32x32 crops, latent size 32,
random weights: timings do not depend on them) with ``gradcamo.exaggerate.autoencoder``, and times,
in one run on the same plate:

- ``encode``: ``gradcamo.exaggerate.encode.encode`` end to end (planning, cluster start, reading,
  cutting, encoder + decoder per batch, Parquet parts, manifest), the default local cluster;
- ``score``: ``gradcamo score`` with the tiny classifier of ``ceiling.py`` (TinyCNN2d 5x32x32),
  for scale against what the scorer costs on the same cells;
- ``bare_ort``: the encoder and decoder sessions alone on the crops of one field in memory.

Prints cells/s and writes ``benchmarks/results/<date>-<host-kind>-encode.json``.
"""

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ceiling  # noqa: E402
import common  # noqa: E402
import plates  # noqa: E402

from gradcamo.data.read import discover_images, open_image  # noqa: E402
from gradcamo.exaggerate.autoencoder import export_autoencoder, open_decoder, open_encoder  # noqa: E402
from gradcamo.exaggerate.encode import encode  # noqa: E402
from gradcamo.scorer.crops import cut_object_crops  # noqa: E402
from gradcamo.scorer.pipeline import score  # noqa: E402

CROP = ceiling.CROP
LATENT_SIZE = 32
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class SmallAutoencoder(nn.Module):
    """Two stride-2 convolutions and a linear layer to 32 codes; the mirror image back (5x32x32)."""

    def __init__(self, channels=CROP[0], latent_size=LATENT_SIZE):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, latent_size),
        )
        self.expand = nn.Linear(latent_size, 32 * 8 * 8)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(16, channels, 2, stride=2),
        )

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(torch.relu(self.expand(z)).reshape(-1, 32, 8, 8))


def bare_ort_rate(info, crops, batch_size, repeats=3, device="cpu"):
    """Cells/s of the encoder then the decoder on crops in memory (best of ``repeats``)."""
    encoder, decoder = open_encoder(info, device=device), open_decoder(info, device=device)
    best = np.inf
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for begin in range(0, len(crops), batch_size):
            (code,) = encoder.run(["z"], {"image": crops[begin:begin + batch_size]})
            decoder.run(["image"], {"z": code})
        best = min(best, time.perf_counter() - started)
    return len(crops) / best


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="cells at least (default 100000)")
    parser.add_argument("--field", type=int, default=1080)
    parser.add_argument("--chunk", type=int, default=540)
    parser.add_argument("--spacing", type=int, default=38)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=common.DEVICES)
    parser.add_argument("--output", type=pathlib.Path, help="results file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    per_field = (args.field // args.spacing) ** 2
    wells = -(-args.cells // per_field)
    with tempfile.TemporaryDirectory(prefix="gradcamo-encode-") as scratch:
        scratch = pathlib.Path(scratch)
        started = time.perf_counter()
        cells = plates.write_grid_plate(scratch / "plate.zarr", wells=wells, fields_per_well=1,
                                        field_shape=(args.field, args.field), spacing=args.spacing,
                                        chunks=(args.chunk, args.chunk))
        plate_seconds = time.perf_counter() - started
        print(f"plate: {cells} cells in {wells} fields of {args.field}x{args.field} ({plate_seconds:.0f} s)")
        torch.manual_seed(0)
        info = export_autoencoder(SmallAutoencoder(), CROP, scratch / "ae", mean=[1000.0] * 5, std=[800.0] * 5)
        tiny = ceiling.export_tiny(scratch / "tiny.onnx")
        options = {"batch_size": args.batch_size, "device": args.device}
        encoded = encode([scratch / "plate.zarr"], info.directory, scratch / "latents", **options)
        scored = score([scratch / "plate.zarr"], tiny, scratch / "scores", **options)
        first = open_image(discover_images(str(scratch / "plate.zarr"))[0])
        crops = cut_object_crops(first.image[...], first.labels[...], CROP[1:])[1]
        bare = bare_ort_rate(info, crops, args.batch_size, device=args.device)
        sessions = [open_encoder(info, device=args.device)]
    runs = {name: {"cells": run.cells, "seconds": run.seconds, "cells_per_s": run.cells / run.seconds,
                   "providers": list(run.providers), "stage_seconds": run.stage_seconds}
            for name, run in (("encode", encoded), ("score", scored))}
    report = {
        "benchmark": "encode", "cells": cells, "fields": wells, "field": [CROP[0], args.field, args.field],
        "chunks": [args.chunk, args.chunk], "plate_seconds": plate_seconds, "crop": list(CROP),
        "latent_size": LATENT_SIZE, "batch_size": args.batch_size, "runs": runs,
        "bare_ort_encoder_decoder_cells_per_s": bare,
        "encode_over_score": runs["encode"]["cells_per_s"] / runs["score"]["cells_per_s"],
        "encode_over_bare_ort": runs["encode"]["cells_per_s"] / bare,
        "machine": common.machine_record(sessions),
    }
    host = "cpu" if args.device == "cpu" else args.device
    output = args.output or RESULTS / (f"{datetime.date.today().isoformat()}-{host}-"
                                       f"{report['machine']['sched_affinity']}cores-encode.json")
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, run in runs.items():
        print(f"{name}: {run['cells']} cells in {run['seconds']:.1f} s, {run['cells_per_s']:,.0f} cells/s "
              f"(stages {run['stage_seconds']})")
    print(f"bare ORT encoder + decoder: {bare:,.0f} cells/s; encode / score {report['encode_over_score']:.2f}, "
          f"encode / bare ORT {report['encode_over_bare_ort']:.2f}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
