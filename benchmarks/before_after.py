"""The quick suite (``run.py --quick``) on two (or more) source trees in one run, alternating, for a
change that must not change speed (a restructure):

    python benchmarks/before_after.py --before /path/to/old/checkout --after . --repeats 2
    python benchmarks/before_after.py --before OLD --after NEW --also middle=/path/to/another/checkout

Each repeat runs the suite once per tree with that tree's ``src`` first on ``PYTHONPATH`` (the
order rotates between repeats), each in a fresh process, so machine load falls on all alike.
Prints, per model, the medians of end-to-end cells/s, R1b (end to end / torch eager) and R2
(end to end / bare onnxruntime) of each tree and each tree / before; and the pipeline ceiling's
end-to-end cells/s and ratio. Writes the record as JSON to ``--output``.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

SUITE = pathlib.Path(__file__).resolve().parent / "run.py"
RATIOS = ("R1b ", "R2 ", "R2s ")
CEILING_RATIOS = ("ceiling_ratio", "steady_vs_shared_core_bound", "steady_vs_bare_ort")


def run_suite(tree, output):
    """One ``run.py --quick`` with ``tree``/src first on the path; its results record."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(tree).resolve() / "src"),
                                                                os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(SUITE), "--quick", "--output", str(output)], check=True, env=environment,
                   stdout=subprocess.DEVNULL)
    return json.loads(pathlib.Path(output).read_text())


def figures(record):
    """``{name: value}`` of one suite record: per model end-to-end (and steady) cells/s and the ratios
    R1b, R2 (and R2s, steady / bare ORT, where the plate is large enough); the ceiling's."""
    values = {}
    for model in record["models"]:
        rates = model["end_to_end"]["cells_per_s"]
        values.update({f"{model['model']} {kind} cells/s": rates[kind] for kind in ("end_to_end", "steady")
                       if kind in rates})
        values.update({f"{model['model']} {name}": value for name, value in model["ratios"].items()
                       if name.startswith(RATIOS)})
    ceiling = record.get("ceiling") or {}
    if ceiling:
        values["ceiling end_to_end cells/s"] = ceiling["cells_per_s"]["end_to_end"]
        values.update({f"ceiling {name}": ceiling[name] for name in CEILING_RATIOS if name in ceiling})
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=pathlib.Path, help="checkout of the old code")
    parser.add_argument("--after", default=pathlib.Path("."), type=pathlib.Path, help="checkout of the new code")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH", help="another tree to run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    trees.update(entry.split("=", 1) for entry in args.also)
    names = list(trees)
    runs: dict = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                output = pathlib.Path(scratch) / f"{name}-{repeat}.json"
                runs[name].append(figures(run_suite(trees[name], output)))
                print(f"repeat {repeat + 1}/{args.repeats}: {name} done", file=sys.stderr)
    table = {}
    for key in runs["before"][0]:
        if not all(key in run for name in names for run in runs[name]):
            continue  # a figure the old tree's record lacks, or the other way round
        medians = {name: statistics.median(run[key] for run in runs[name]) for name in names}
        table[key] = {**medians, **{f"{name} / before": medians[name] / medians["before"] for name in names[1:]}}
        print(f"{key:40s} " + "  ".join(f"{name} {medians[name]:9.3f}" for name in names) + "  "
              + "  ".join(f"{name}/before {medians[name] / medians['before']:5.2f}" for name in names[1:]))
    record = {"repeats": args.repeats, "load_average": os.getloadavg(), "figures": table, "runs": runs}
    if args.output:
        args.output.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
