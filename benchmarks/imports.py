"""`gradcamo import` speed as a ratio to reading the same TIFFs with tifffile and writing them with ome-zarr-py alone.

The baseline is the ~20 lines a user writes by hand: read each site's channel TIFFs, stack them,
``write_image`` and ``write_labels`` into a plate, one field after the other, then the plate and
well metadata (no checks, no resume, no site record). Both write the same chunks (one plane)
with the same codec (Zstandard, zarr's default). Candidates are timed round-robin in one run;
the ratio is baseline seconds / import seconds (above 1: import is faster).

    python benchmarks/imports.py                 # 4 wells x 3 sites x 5 channels of 540x540, ~1 min on 2 cores
    python benchmarks/imports.py --shape 1080 --repeats 3
"""

import argparse
import csv
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import tifffile
import zarr
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests.screens: the JUMP-like screen

from gradcamo.data.importer import import_loaddata  # noqa: E402
from tests.screens import CHANNELS, OBJECTS, make_screen  # noqa: E402


def hand_written(csv_path, output):
    """tifffile + ome-zarr-py alone, as a user writes it."""
    fmt = format_from_version("0.5")
    with open(csv_path, newline="") as stream:
        records = list(csv.DictReader(stream))
    wells = {}
    for record in records:
        wells.setdefault((record["Metadata_Plate"], record["Metadata_Well"]), []).append(record)
    for (plate, well), fields in wells.items():
        root = zarr.open_group(str(output / f"{plate}.zarr"), mode="a", zarr_format=3)
        row, column = well[0], str(int(well[1:]))
        group = root.require_group(f"{row}/{column}")
        for index, record in enumerate(sorted(fields, key=lambda r: int(r["Metadata_Site"]))):
            field = group.require_group(str(index))
            image = np.stack([tifffile.imread(os.path.join(record[f"PathName_{c}"], record[f"FileName_{c}"]))
                              for c in CHANNELS])
            write_image(image, field, axes="cyx", fmt=fmt, scale_factors=[],
                        storage_options={"chunks": (1, *image.shape[1:])})
            for name in OBJECTS:
                labels = tifffile.imread(csv_path.parent / record[f"ObjectsPathName_{name}"]
                                         / record[f"ObjectsFileName_{name}"])
                write_labels(labels, field, name=name, axes="yx", fmt=fmt, scale_factors=[], scaler=None,
                             storage_options={"chunks": labels.shape})
        write_well_metadata(group, [{"path": str(i)} for i in range(len(fields))], fmt=fmt)
    for plate in {plate for plate, _ in wells}:
        keys = sorted((w[0], int(w[1:])) for p, w in wells if p == plate)
        root = zarr.open_group(str(output / f"{plate}.zarr"), mode="a", zarr_format=3)
        write_plate_metadata(root, sorted({r for r, _ in keys}), sorted({str(c) for _, c in keys}, key=int),
                             [f"{r}/{c}" for r, c in keys], fmt=fmt, name=plate)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=540, help="Y = X of each image")
    parser.add_argument("--wells", type=int, default=4)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="gradcamo import --threads")
    args = parser.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="gradcamo-imports-"))
    try:
        wells = tuple(f"B{column:02d}" for column in range(1, args.wells + 1))
        cells = max(4, (args.shape // 40) ** 2 // 4)
        csv_path, _ = make_screen(work / "screen", shape=(args.shape, args.shape), n_cells=cells, wells=wells,
                                  sites=tuple(range(1, args.sites + 1)))
        tiff_bytes = sum(p.stat().st_size for p in (work / "screen").rglob("*.tiff"))
        candidates = {
            "tifffile + ome-zarr-py": lambda out: hand_written(csv_path, out),
            "gradcamo import --threads 1": lambda out: import_loaddata(csv_path, out, threads=1),
            f"gradcamo import --threads {args.threads}": lambda out: import_loaddata(csv_path, out,
                                                                                    threads=args.threads),
        }
        seconds = {name: [] for name in candidates}
        for repeat in range(args.repeats):
            for name, run in candidates.items():  # round-robin: a noisy machine slows all alike
                out = work / f"out-{repeat}-{len(seconds[name])}-{abs(hash(name))}"
                start = time.perf_counter()
                run(out)
                seconds[name].append(time.perf_counter() - start)
                shutil.rmtree(out)
        fields = args.wells * args.sites
        print(f"{fields} fields of {len(CHANNELS)} channels {args.shape}x{args.shape} uint16 + {len(OBJECTS)} label "
              f"images ({tiff_bytes / 1e6:.0f} MB of TIFF), {os.cpu_count()} cores, best of {args.repeats}:")
        baseline = min(seconds["tifffile + ome-zarr-py"])
        for name, times in seconds.items():
            best = min(times)
            print(f"  {name:32s} {best:6.2f} s  {fields / best:6.1f} fields/s  ratio {baseline / best:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
