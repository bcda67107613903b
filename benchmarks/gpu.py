"""One-shot GPU benchmark: a million cells, resnet18, every GPU of the node, in one run.

    python benchmarks/gpu.py                              # 1,000,000 cells, --gpus all, batch 512
    python benchmarks/gpu.py --cells 100000               # a quick try
    python benchmarks/gpu.py --cells 20000 --device cpu   # smoke test, no GPU needed
    python benchmarks/gpu.py --model tiny ...             # TinyCNN2d 5x96x96 instead of resnet18

Makes a plate of ``--cells`` cells on local disk (5 channels uint16, 1080x1080 fields of ~1089
cells on a jittered grid, 540x540 chunks: a few distinct fields written once, copied to fill the
plate, so set-up takes seconds, not minutes), exports resnet18 with random weights (5x96x96,
target ``layer4``), scores the plate with ``gradcamo.score(..., gpus="all")`` (``--device cpu``:
the default local CPU cluster) and prints:

- whole-run cells/s (the ``score`` call: planning, cluster and session start, scoring, manifest)
  and steady cells/s (between the first part file of each worker and the last part file);
- GPU utilisation, sampled every 200 ms with ``nvidia-smi`` (mean per GPU over the steady window);
- bare onnxruntime cells/s of the same headed graph at the same batch size on one device (crops
  in memory, host-to-device copies included), times the number of GPUs;
- an estimate of the CPU side's bound: usable CPUs x cells / the workers' CPU-stage seconds
  (read, measure, cut, table);
- the ratio steady / min(bare onnxruntime, CPU side) (goal >= 0.8) and the stage costs per 1000
  cells. Goal on one H100-class GPU with 16 cores: 1M cells in at most 60 s (>= 17k cells/s steady).

The record is printed as JSON (and written to ``--output``). Needs torch and torchvision for the
export; on the GPU machine onnxruntime-gpu with CUDA 12/13 and cuDNN 9 libraries.
"""

import argparse
import concurrent.futures
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import endtoend  # noqa: E402
import plates  # noqa: E402

CROP = (5, 96, 96)
FIELD = 1080
SPACING = 32
CHUNK = 540
FIELDS_PER_WELL = 4
DISTINCT_FIELDS = 8
SAMPLE_MS = 200
BARE_ORT_SECONDS = 5.0
CPU_STAGES = ("read", "measure", "cut", "table")


def write_plate(path, cells, scratch):
    """A plate of at least ``cells`` cells: up to :data:`DISTINCT_FIELDS` generated fields, copied.

    Returns the number of cells and of fields.
    """
    import zarr
    from ome_zarr.format import format_from_version
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    template = pathlib.Path(scratch) / "template.zarr"
    distinct = min(DISTINCT_FIELDS, math.ceil(cells / (FIELD // SPACING) ** 2))
    plates.write_grid_plate(template, wells=1, fields_per_well=distinct, field_shape=(FIELD, FIELD),
                            spacing=SPACING, chunks=(CHUNK, CHUNK))
    per_field = [plates.count_cells(template / "A" / "1" / str(i)) for i in range(distinct)]
    fields, total = 0, 0
    while total < cells:
        total += per_field[fields % distinct]
        fields += 1
    wells = [(row, column) for row in "ABCDEFGHIJKLMNOP" for column in range(1, 25)]
    wells = wells[:math.ceil(fields / FIELDS_PER_WELL)]
    if len(wells) * FIELDS_PER_WELL < fields or fields > 384 * FIELDS_PER_WELL:
        raise SystemExit(f"--cells {cells}: more than a 384-well plate of {FIELDS_PER_WELL} fields holds")
    fmt = format_from_version("0.5")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    rows = sorted({row for row, _ in wells})
    columns = sorted({str(column) for _, column in wells}, key=int)
    write_plate_metadata(root, rows, columns, [f"{r}/{c}" for r, c in wells], fmt=fmt, name="gpu-bench",
                         field_count=FIELDS_PER_WELL)
    copies = []
    for index, (row, column) in enumerate(wells):
        sites = range(index * FIELDS_PER_WELL, min(fields, (index + 1) * FIELDS_PER_WELL))
        well = root.require_group(f"{row}/{column}")
        write_well_metadata(well, [{"path": str(s - index * FIELDS_PER_WELL)} for s in sites], fmt=fmt)
        copies += [(template / "A" / "1" / str(s % distinct), pathlib.Path(path) / row / str(column)
                    / str(s - index * FIELDS_PER_WELL)) for s in sites]
    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda pair: shutil.copytree(*pair), copies))
    shutil.rmtree(template)
    return total, fields


def export_model(name, path):
    """resnet18 (torchvision, random weights, 5 channels, target layer4) or TinyCNN2d, at 5x96x96."""
    import gradcamo

    if name == "tiny":
        import ceiling

        return ceiling.export_tiny(path, CROP)
    import common

    model, layer = common.build_model("resnet18")
    gradcamo.export_model(model, layer, CROP, path, validate=False)
    return path


class GpuSampler:
    """``nvidia-smi`` utilisation samples (time, GPU index, %) in the background; none without the tool."""

    def __init__(self):
        self.samples = []
        self._process = None

    def __enter__(self):
        tool = shutil.which("nvidia-smi")
        if tool:
            self._process = subprocess.Popen(
                [tool, "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits", f"--loop-ms={SAMPLE_MS}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self._process.stdout:
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                self.samples.append((time.time(), int(fields[0]), int(fields[1])))

    def __exit__(self, *exc):
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def mean(self, start=None, stop=None):
        """Mean utilisation per GPU index over [start, stop] (epoch seconds; default all samples)."""
        chosen = [(i, u) for t, i, u in self.samples if (start is None or t >= start) and (stop is None or t <= stop)]
        return {index: round(float(np.mean([u for i, u in chosen if i == index])), 1)
                for index in sorted({i for i, _ in chosen})}


def part_window(output, workers):
    """(start, stop) epoch seconds of the steady window: the ``workers``-th part file to the last."""
    from gradcamo.scorer.sink import part_files

    times = sorted(p.stat().st_mtime for p in part_files(output))
    return (times[workers - 1], times[-1]) if len(times) > workers else (None, None)


def bare_ort_rate(model_path, plate, batch_size, device):
    """Cells/s of the headed graph the scorer runs, on one device, crops of one field in memory."""
    from gradcamo.data.read import discover_images, open_image
    from gradcamo.scorer import head
    from gradcamo.scorer.crops import cut_object_crops
    from gradcamo.scorer.session import build_scoring_session

    source = open_image(discover_images(str(plate))[0])
    ids, crops, masks = cut_object_crops(source.image[...], source.labels[...], CROP[1:])
    repeats = math.ceil(batch_size / len(crops))
    crops, masks = np.concatenate([crops] * repeats), np.concatenate([masks] * repeats)
    session = build_scoring_session(str(model_path), CROP[1:], "raw", device, None)
    batches = [{"image": crops[b:b + batch_size], "target": np.full(batch_size, -1, np.int64),
                head.MASK: masks[b:b + batch_size].astype(np.float32)}
               for b in range(0, len(crops) - batch_size + 1, batch_size)]
    outputs = list(head.HEAD_OUTPUTS + head.METRIC_OUTPUTS)
    session.run(outputs, batches[0])  # warm-up: plans and kernels
    done, started = 0, time.perf_counter()
    while done < 3 * batch_size or time.perf_counter() - started < BARE_ORT_SECONDS:
        session.run(outputs, batches[(done // batch_size) % len(batches)])
        done += batch_size
    return done / (time.perf_counter() - started), session.get_providers()[0]


def run(args):
    from gradcamo.scorer.pipeline import score
    from gradcamo.scorer.resources import usable_cpus

    began = time.perf_counter()
    record = {"cells_requested": args.cells, "model": args.model, "crop": list(CROP), "device": args.device,
              "gpus": args.gpus if args.device == "cuda" else None, "batch_size": args.batch_size,
              "usable_cpus": usable_cpus().to_json()}
    with tempfile.TemporaryDirectory(prefix="gradcamo-gpu-", dir=args.scratch) as scratch:
        scratch = pathlib.Path(scratch)
        started = time.perf_counter()
        record["cells"], record["fields"] = write_plate(scratch / "plate.zarr", args.cells, scratch)
        record["plate_seconds"] = round(time.perf_counter() - started, 1)
        print(f"plate: {record['cells']} cells in {record['fields']} fields, {record['plate_seconds']} s", flush=True)
        started = time.perf_counter()
        model = export_model(args.model, scratch / "model.onnx")
        record["export_seconds"] = round(time.perf_counter() - started, 1)
        output = scratch / "scores"
        gpus = args.gpus if args.device == "cuda" else None
        with GpuSampler() as sampler:
            summary = score([str(scratch / "plate.zarr")], str(model), str(output), device=args.device, gpus=gpus,
                            batch_size=args.batch_size)
        if summary.cells != record["cells"]:
            raise SystemExit(f"scored {summary.cells} cells, the plate has {record['cells']}")
        manifest = json.loads((output / "_gradcamo.json").read_text())
        workers = len(manifest["workers"]) or 1
        start, stop = part_window(output, workers)
        record.update({
            "providers": list(summary.providers), "workers": manifest["workers"],
            "score_seconds": round(summary.seconds, 2), "whole_run_cells_per_s": round(summary.cells / summary.seconds),
            "steady_cells_per_s": endtoend.steady_cells_per_s(output, workers),
            "gpu_utilisation_steady": sampler.mean(start, stop), "gpu_utilisation_run": sampler.mean(),
            "stage_ms_per_1000_cells": {stage: round(1e6 * s / summary.cells, 2)
                                        for stage, s in summary.stage_seconds.items()},
        })
        cpu_seconds = sum(summary.stage_seconds.get(stage, 0.0) for stage in CPU_STAGES)
        record["cpu_side_estimate_cells_per_s"] = round(usable_cpus().cpus * summary.cells / cpu_seconds)
        bare, provider = bare_ort_rate(model, scratch / "plate.zarr", args.batch_size, args.device)
        devices = workers if args.device == "cuda" else 1
        record.update({"bare_ort_cells_per_s_one_device": round(bare), "bare_ort_provider": provider,
                       "bare_ort_cells_per_s": round(bare * devices)})
        bound = min(record["bare_ort_cells_per_s"], record["cpu_side_estimate_cells_per_s"])
        steady = record["steady_cells_per_s"]
        record["ratio_steady_vs_min_bare_ort_cpu_side"] = round(steady / bound, 3) if steady else None
    record["wall_seconds_with_setup"] = round(time.perf_counter() - began, 1)
    return record


def print_summary(record):
    steady = record["steady_cells_per_s"]
    print(f"{record['cells']} cells, {record['model']} {'x'.join(map(str, record['crop']))}, batch "
          f"{record['batch_size']}, on {', '.join(record['providers'])} ({len(record['workers'])} worker(s))")
    print(f"  whole run {record['whole_run_cells_per_s']:,} cells/s ({record['score_seconds']} s); steady "
          f"{steady:,.0f} cells/s" if steady else "  steady: too few part files")
    print(f"  bare onnxruntime {record['bare_ort_cells_per_s']:,} cells/s ({record['bare_ort_provider']}); CPU side "
          f"~{record['cpu_side_estimate_cells_per_s']:,} cells/s; steady / min = "
          f"{record['ratio_steady_vs_min_bare_ort_cpu_side']} (goal >= 0.8)")
    print(f"  GPU utilisation, steady window: {record['gpu_utilisation_steady'] or 'no nvidia-smi samples'}")
    print("  ms per 1000 cells: " + ", ".join(f"{k} {v}" for k, v in record["stage_ms_per_1000_cells"].items()))
    print(f"  wall time with set-up: {record['wall_seconds_with_setup']} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--gpus", default="all", help="as `gradcamo score --gpus` (with --device cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 512 on cuda, 64 on cpu")
    parser.add_argument("--model", choices=("resnet18", "tiny"), default="resnet18")
    parser.add_argument("--scratch", type=pathlib.Path, default=None, help="where the plate goes (local disk)")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="write the record as JSON here too")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (512 if args.device == "cuda" else 64)
    record = endtoend.emit_record(run(args), args.output)
    print_summary(record)
    return record


if __name__ == "__main__":
    main()
