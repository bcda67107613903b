"""The ``gradcamo`` command. ``main(argv)`` returns the exit code, so tests call it in-process."""

import errno
import json
import logging
import pathlib
import sys
import traceback
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from gradcamo.errors import GradcamoError, InputError, Interrupted, describe
from gradcamo.scorer.failures import DEFAULT_MAX_FAILURES
from gradcamo.signals import stop_on_signals
from gradcamo.wording import counted

app = typer.Typer(
    name="gradcamo",
    help=(
        "Measure how much of a classifier's Grad-CAM attention falls on each segmented cell.\n\n"
        "Export a trained PyTorch model once (`gradcamo export`), then score OME-Zarr images "
        "with it. Bad input exits with code 2 and a one-line message; add --debug for a traceback."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _configure_logging(quiet):
    logger = logging.getLogger("gradcamo")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(RichHandler(console=Console(stderr=True), show_path=False, show_time=False))


QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="Only warnings and errors, no progress.")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    quiet: bool = QUIET_OPTION,
):
    _configure_logging(quiet)


def _show_progress():
    """Progress bars only on a terminal, and not with --quiet."""
    return sys.stderr.isatty() and logging.getLogger("gradcamo").level <= logging.INFO


def _parse_numbers(text, option, kind=float):
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated {kind.__name__}s, got {text!r}") from None


def _parse_json_object(text, option):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{option}: not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"{option}: expected a JSON object such as '{{\"num_classes\": 4}}', got {text!r}")
    return value


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="MODEL as package.module:factory, path/to/file.py:factory (the "
                                "factory is called with --factory-kwargs or no arguments and returns an "
                                "nn.Module), timm:NAME, a torch.export .pt2 file, a forward-only ONNX "
                                "classifier (.onnx) or a pickled nn.Module (with --trust-pickle). See "
                                "docs/models.md."),
    target_layer: str = typer.Option(..., "--target-layer", "-l", help="Layer to explain, as in "
                                     "model.named_modules(), e.g. layer4 (resnet) or features (densenet); for an "
                                     "ONNX MODEL the name of an intermediate tensor of its graph."),
    input_shape: str = typer.Option(..., "--input-shape", "-s", help="Crop shape C,H,W (2D) or C,D,H,W (3D)."),
    output: str = typer.Option(..., "--output", "-o", help="ONNX file to write, e.g. model.onnx."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights as saved: a state dict, a "
                                          "checkpoint with one (Lightning .ckpt, {'model': ...}, DDP module. "
                                          "prefixes) or .safetensors; read with torch.load(weights_only=True)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a full unpickle of MODEL or "
                                      "--weights: it executes code from the file; only for files you trust."),
    input_layout: Optional[str] = typer.Option(None, "--input-layout", help="Layout of an ONNX MODEL's input: "
                                               "nchw (default) or nhwc (Keras/TF); crops are permuted to it."),
    references: Optional[str] = typer.Option(None, "--references", help="Reference vectors (K, D) of an "
                                             "embedding model: .npy, or .parquet/.csv with a name column; the K "
                                             "logits are cosine similarities to them."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names, comma-separated, one per logit."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean subtracted from raw intensities."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std dividing raw intensities."),
    factory_kwargs: Optional[str] = typer.Option(None, "--factory-kwargs", help="JSON object of factory "
                                                 "keyword arguments, e.g. '{\"num_classes\": 4}'."),
    opset: int = typer.Option(18, "--opset", min=18, help="ONNX opset version."),
    channel_names: Optional[str] = typer.Option(None, "--channel-names", help="Names of the input channels the "
                                                "model was trained on, in order, e.g. DNA,ER,RNA,AGP,Mito; "
                                                "`score` then picks a store's channels by name."),
    target_layout: Optional[str] = typer.Option(None, "--target-layout", help="How the layer's output is read: "
                                                "nchw, nhwc (channels-last, Swin) or tokens (N, T, C) (ViT); "
                                                "default: decided from the layer, the model and the shape."),
    token_grid: Optional[str] = typer.Option(None, "--token-grid", help="Token grid H,W (or D,H,W) of a tokens "
                                             "layer, when the model declares none."),
    prefix_tokens: Optional[int] = typer.Option(None, "--prefix-tokens", help="Tokens before the grid (class, "
                                                "distillation, register tokens), when the model declares none."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Turn a PyTorch classifier into one ONNX graph returning logits, activations and gradients.

    The graph is checked against torch autograd before it is written; a file that
    disagrees is never written.
    """
    from gradcamo.exporter import export_model
    from gradcamo.exporter.layout import parse_token_grid
    from gradcamo.exporter.sources import load_source

    if quiet:
        _configure_logging(quiet)
    shape = _parse_numbers(input_shape, "--input-shape", int)
    grid = parse_token_grid(token_grid)
    mean_values = _parse_numbers(mean, "--mean")
    std_values = _parse_numbers(std, "--std")
    class_names = [name.strip() for name in classes.split(",")] if classes else None
    source = load_source(
        model, target_layer, shape, weights=weights, trust_pickle=trust_pickle, input_layout=input_layout,
        factory_kwargs=_parse_json_object(factory_kwargs, "--factory-kwargs"), references=references,
    )
    result = export_model(
        source.model, source.layer_name, shape, output, class_names=class_names or source.class_names,
        mean=mean_values, std=std_values, opset=opset, target_label=source.target_label,
        channel_names=channel_names.split(",") if channel_names else None,
        target_layout=target_layout, token_grid=grid, prefix_tokens=prefix_tokens,
    )
    typer.echo(f"wrote {result.path} (CAM max relative error vs torch "
               f"{result.validation.cam_max_rel_error:.1e})")
    typer.echo(f"target layer {target_layer} read as {result.layout.describe()}")


@app.command("layers")
def layers_command(
    model: str = typer.Argument(..., help="MODEL as for `gradcamo export` (package.module:factory, "
                                "path/to/file.py:factory, timm:NAME, an ONNX classifier: its tensors)."),
    input_shape: str = typer.Option(..., "--input-shape", "-s", help="Crop shape C,H,W (2D) or C,D,H,W (3D)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="state_dict file, as for export."),
    factory_kwargs: Optional[str] = typer.Option(None, "--factory-kwargs", help="JSON object of factory "
                                                 "keyword arguments, e.g. '{\"num_classes\": 4}'."),
    input_layout: Optional[str] = typer.Option(None, "--input-layout", help="Layout of an ONNX MODEL's input: "
                                               "nchw (default) or nhwc (Keras/TF)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a full unpickle of MODEL or "
                                      "--weights, as for export: it executes code from the file."),
) -> None:
    """List the candidate target layers: output shape, how export would read it, whether its gradient is non-zero.

    One line per layer whose output has a batch axis and two or more others, in forward order,
    on a seeded random input; `*` marks the suggested layer (the last usable one at the
    network's final width). Pass the chosen name to `gradcamo export --target-layer`.
    """
    from gradcamo.exporter.layers import format_layers
    from gradcamo.exporter.sources import source_layers

    shape = _parse_numbers(input_shape, "--input-shape", int)
    for line in format_layers(*source_layers(model, shape, weights=weights, input_layout=input_layout,
                                             factory_kwargs=_parse_json_object(factory_kwargs, "--factory-kwargs"),
                                             trust_pickle=trust_pickle)):
        typer.echo(line)


def _model_table(info):
    from gradcamo.contract import META_TARGET_LAYOUT

    table = Table(title=str(info.path), show_header=False)
    rows = [
        ("format version", str(info.format_version)),
        ("inputs", "; ".join(f"{n} {s['dtype']}{s['shape']}" for n, s in info.inputs.items())),
        ("outputs", "; ".join(f"{n} {s['dtype']}{s['shape']}" for n, s in info.outputs.items())),
        ("crop shape (C,[D,]H,W)", ",".join(map(str, info.input_shape))),
        ("spatial dims", str(info.spatial_dims)),
        ("target layer", info.target_layer),
        ("target layout", info.metadata.get(META_TARGET_LAYOUT, "nchw (exported before layouts were recorded)")),
        ("classes", ", ".join(info.class_names)),
        ("channel names", ", ".join(info.channel_names) or "none (channels matched by position)"),
        ("preprocessing", json.dumps(info.preprocessing)),
        ("validation", json.dumps(info.validation)),
        ("opset", str(info.opset)),
        ("sha256", info.sha256),
    ]
    rows += [(k, v) for k, v in info.metadata.items() if k.endswith(("torch_version", "weights_sha256", ".version"))]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _store_table(path, described):
    table = Table(title=str(path))
    columns = ("image", "plate", "well", "site", "axes", "shape", "chunks", "dtype", "channels", "labels")
    for column in columns:
        table.add_column(column)
    for image in described:
        table.add_row(*[
            "".join(v) if k == "axes" else ", ".join(v) if k == "channels" else "x".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v)
            for k, v in ((c, image[c]) for c in columns)
        ])
    return table


def _describe_store(path, check=False):
    from gradcamo.data.chunks import find_missing_chunks
    from gradcamo.data.read import discover_images, label_names, open_image

    described = []
    for ref in discover_images(path):
        names = label_names(ref)
        source = open_image(ref, names[0] if names else None)
        described.append({
            "image": ref.name, "plate": ref.plate, "well": ref.well, "site": source.ref.site,
            "axes": list(source.axes), "shape": list(source.image.shape),
            "chunks": list(source.image.chunks), "dtype": str(source.image.dtype),
            "labels": ", ".join(names), "label_dtype": str(source.labels.dtype),
            "channels": list(source.channel_labels),
        })
        if check:  # HTTP servers cannot be listed: ask for each chunk
            missing = find_missing_chunks(source.image, listable=not path.startswith(("http://", "https://")))
            described[-1]["missing_chunks"] = [f"{source.image.store.array_name}/{key}" for key in missing]
    return described


def _report_check(described):
    """``inspect --check``: one line per missing image chunk and exit code 3, or one line saying all are there."""
    missing = [(image["image"], chunk) for image in described for chunk in image["missing_chunks"]]
    for _, chunk in missing:
        typer.echo(f"missing: {chunk}", err=True)
    if not missing:
        typer.echo(f"checked: no image chunk is missing in {counted(len(described), 'image')}", err=True)
        return
    images = len({image for image, _ in missing})
    typer.echo(f"error: {counted(len(missing), 'image chunk')} missing in {counted(images, 'image')}; copy the store "
               "again (score fails their work units), or score "
               "with --missing-chunks zeros if it is sparse on purpose", err=True)
    raise typer.Exit(3)


@app.command("inspect")
def inspect_command(
    path: str = typer.Argument(..., help="A gradcamo model file (.onnx) or an OME-Zarr image or plate."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    check: bool = typer.Option(False, "--check", help="Store: list every image chunk that is missing (exit code 3 "
                               "if any), to verify a copy before scoring."),
) -> None:
    """Show what a model file holds (contract, crop shape, classes, validation) or what images a store holds."""
    from gradcamo.model_file import read_model_info

    if _is_store(path):
        described = _describe_store(path, check)
        if as_json:
            typer.echo(json.dumps(described, indent=2))
        else:
            Console().print(_store_table(path, described))
        if check:
            _report_check(described)
        return
    if check:
        raise InputError(f"--check: lists the missing chunks of a store; {path} is no directory or URL")
    info = read_model_info(path)
    if as_json:
        fields = {k: v for k, v in vars(info).items() if k != "path"}
        typer.echo(json.dumps({"path": str(info.path), **fields}, indent=2))
    else:
        Console().print(_model_table(info))


def _is_store(path):
    return "://" in path or pathlib.Path(path).is_dir() or path.rstrip("/").endswith(".zarr")


INPUTS_ARGUMENT = typer.Argument(..., help="OME-Zarr images or HCS plates (paths or fsspec URLs).")
DATASET_OUTPUT_OPTION = typer.Option(..., "--output", "-o", help="Parquet dataset directory to write (or resume).")
LABELS_OPTION = typer.Option(None, "--labels", help="Label image under labels/ (needed if several).")
BATCH_SIZE_OPTION = typer.Option(64, "--batch-size", help="Crops per onnxruntime call.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (CUDA when a GPU is usable), cpu or cuda.")
WORKERS_OPTION = typer.Option(None, "--workers", help="Local Dask worker processes (default 1).")
THREADS_OPTION = typer.Option(None, "--threads",
                              help="onnxruntime threads per worker (default: usable CPUs / workers).")
SCHEDULER_OPTION = typer.Option(None, "--scheduler", help="Address of a running dask.distributed scheduler, "
                                "e.g. tcp://10.0.0.5:8786.")
TIMEPOINT_OPTION = typer.Option(0, "--timepoint", help="Index on the t axis, if the images have one.")
DATASET_OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace a dataset written with other parameters.")
MAX_FAILURES_OPTION = typer.Option(DEFAULT_MAX_FAILURES, "--max-failures", help="Failed work units (unreadable "
                                   "chunks, ...) tolerated before the run stops early.")
"""Options of the commands that stream cells into a dataset (``score``, ``encode``)."""


@app.command("score")
def score_command(
    inputs: list[str] = INPUTS_ARGUMENT,
    model: str = typer.Option(..., "--model", "-m", help="Model file from `gradcamo export`."),
    output: str = DATASET_OUTPUT_OPTION,
    labels: Optional[str] = LABELS_OPTION,
    channels: Optional[str] = typer.Option(None, "--channels", help="Channels fed to the model, in order: "
                                           "indices (0,1,2) or the store's channel names (DNA,ER,Mito). Default: "
                                           "by name where the model and the store name them, else all."),
    target: str = typer.Option("predicted", "--target", help="Class to explain: predicted, all, an index or a name."),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    workers: Optional[int] = WORKERS_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    scheduler: Optional[str] = SCHEDULER_OPTION,
    convention: str = typer.Option("raw", "--convention", help="raw, or pytorch-grad-cam (reproduces that library)."),
    method: str = typer.Option("gradcam", "--method", help="CAM methods, comma-separated: gradcam, hirescam, "
                               "gradcam++, xgradcam, layercam (one row per cell, target and method)."),
    timepoint: int = TIMEPOINT_OPTION,
    overwrite: bool = DATASET_OVERWRITE_OPTION,
    max_failures: int = MAX_FAILURES_OPTION,
    site_base: int = typer.Option(0, "--site-base", help="Metadata_Site of plate fields that `gradcamo import` "
                                  "did not record a site for: the field index from 0 or from 1."),
    center_labels: Optional[str] = typer.Option(None, "--center-labels", help="Label image whose object k centres "
                                                "the crop of cell k (e.g. Nuclei); the score's mask stays the cell's."),
    features: bool = typer.Option(False, "--features", help="Also write the target layer's activations averaged "
                                  "over space (feature_0..), from the same pass."),
    missing_chunks: str = typer.Option("error", "--missing-chunks", help="An image chunk the store lacks: error "
                                       "(fails its work unit) or zeros (read as the fill value, counted and "
                                       "flagged; for stores sparse on purpose)."),
    ablation: bool = typer.Option(False, "--ablation", help="Also the target's probability and logit on the "
                                  "cell alone and on its context alone (the rest filled with the crop's "
                                  "background median; docs/score.md, Causal checks)."),
    deletion_steps: Optional[int] = typer.Option(None, "--deletion-steps", help="K >= 1: delete (and insert) "
                                                 "the crop's pixels in K steps along the CAM; deletion_auc, "
                                                 "insertion_auc."),
    deletion_curves: bool = typer.Option(False, "--deletion-curves", help="With --deletion-steps: also the K+1 "
                                         "probabilities of each curve as list columns."),
    quiet: bool = QUIET_OPTION,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="all, or GPU numbers such as 0,1,3: one local worker "
                                       "process per GPU (default: all visible GPUs when there are several, one "
                                       "in-process worker with one; CUDA_VISIBLE_DEVICES applies)."),
) -> None:
    """Score every segmented cell: the share of the model's Grad-CAM attention inside the cell.

    Writes one row per cell and target to a Parquet dataset (part files + _gradcamo.json).
    Re-running the same command resumes where a killed or interrupted run stopped, and retries
    the work units that failed. Exit codes: 0 done, 2 bad input, 3 some work units failed
    (listed), 130 interrupted.
    """
    from gradcamo.scorer.pipeline import score

    if quiet:
        _configure_logging(quiet)
    summary = score(
        inputs, model, output, labels=labels, channels=channels.split(",") if channels else None,
        target=target, batch_size=batch_size, device=device, workers=workers, threads=threads,
        scheduler=scheduler, convention=convention, methods=method, overwrite=overwrite, timepoint=timepoint,
        progress=_show_progress(), max_failures=max_failures, site_base=site_base, centre_labels=center_labels,
        features=features, missing_chunks=missing_chunks, gpus=gpus, ablation=ablation,
        deletion_steps=deletion_steps, deletion_curves=deletion_curves,
    )
    skipped = (None if summary.cells_without_centre is None else  # after the output, which "wrote" ends with
               f"{counted(summary.cells_without_centre, 'cell')} without a {center_labels} object skipped")
    _report_run(summary, max_failures, holds="scores",
                wrote=f"{counted(summary.rows, 'row')} for {counted(summary.cells, 'cell')} of "
                      f"{counted(summary.images, 'image')}",
                note="; ".join(filter(None, [summary.channel_note, skipped])))


def _report_run(summary, max_failures, *, holds, wrote, note=""):
    """The summary line of a run that streamed cells into a dataset (``note`` appended when it computed any);
    the failed units, if any (exit code 3)."""
    note = f"; {note}" if note else ""
    if summary.units_resumed == summary.units:
        typer.echo(f"nothing to do: {summary.output} already holds the {holds} of all "
                   f"{counted(summary.units, 'work unit')} of {counted(summary.images, 'image')}")
        return
    typer.echo(f"wrote {wrote} to {summary.output} ({summary.units_resumed} of {counted(summary.units, 'work unit')} "
               "resumed, "
               f"{summary.seconds:.1f} s){note}{_read_as_zeros(summary.missing_chunks)}")
    if summary.warning:
        typer.echo(summary.warning)
    if summary.failures:
        _report_failures(summary, max_failures)


def _read_as_zeros(missing):
    """What the summary line says of image chunks read as the fill value (``--missing-chunks zeros``)."""
    if not missing:
        return ""
    from gradcamo.results.datasets import describe_missing_chunks

    return f"; {describe_missing_chunks(missing)}"


def _report_failures(summary, max_failures):
    """One line per failed unit, then what it means; exit code 3."""
    for failure in summary.failures:
        typer.echo(f"failed: {failure}", err=True)
    count = len(summary.failures)
    listed = f"listed under \"failures\" in {pathlib.Path(summary.output) / '_gradcamo.json'}"
    if summary.stopped_early:
        typer.echo(f"error: stopped after {counted(count, 'failed work unit')} (--max-failures "
                   f"{max_failures}), {listed}; run the same command again to retry them and go on", err=True)
    else:
        typer.echo(f"error: {count} of {counted(summary.units, 'work unit')} failed ({listed}); their cells are not in "
                   "the dataset; run the same command again to retry them", err=True)
    raise typer.Exit(3)


@app.command("import")
def import_command(
    load_data: str = typer.Argument(..., metavar="LOAD_DATA.csv", help="CellProfiler LoadData CSV: Metadata_Plate, "
                                    "Metadata_Well, Metadata_Site, FileName_/PathName_<Channel>, "
                                    "ObjectsFileName_/ObjectsPathName_<Objects>."),
    output: str = typer.Option(..., "--output", "-o", help="Directory for one <Metadata_Plate>.zarr per plate."),
    channels: Optional[str] = typer.Option(None, "--channels", help="Channels to import, in order, e.g. "
                                           "DNA,ER,RNA,AGP,Mito; NAME=COLUMN names one in the store, e.g. "
                                           "DNA=OrigDNA (default: every FileName_ column)."),
    objects: Optional[str] = typer.Option(None, "--objects", help="Label images to import, e.g. Cells,Nuclei "
                                          "(default: every ObjectsFileName_ column)."),
    base_dir: Optional[str] = typer.Option(None, "--base-dir", help="Folder the CSV's PathName_ values are "
                                           "relative to (default: the CSV's folder); rebases a moved screen."),
    threads: int = typer.Option(8, "--threads", help="Fields written at once."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Turn a screen of per-channel TIFFs listed in a LoadData CSV into OME-Zarr 0.5 plates to score.

    The whole CSV is checked before anything is written. Re-running the same command keeps the
    fields already written and writes the rest. See docs/screens.md.
    """
    from gradcamo.data.importer import import_loaddata

    if quiet:
        _configure_logging(quiet)
    summary = import_loaddata(
        load_data, output, channels=channels.split(",") if channels else None,
        objects=objects.split(",") if objects else None, base_dir=base_dir, threads=threads,
        progress=_show_progress(),
    )
    typer.echo(f"wrote {counted(summary.fields, 'field')} ({summary.fields_resumed} kept from before) of "
               f"{counted(len(summary.plates), 'plate')} to {summary.output} in {summary.seconds:.1f} s: "
               + ", ".join(pathlib.Path(plate).name for plate in summary.plates))


@app.command("profiles")
def profiles_command(
    scores: str = typer.Argument(..., help="Score dataset directory (from `gradcamo score`)."),
    output: str = typer.Option(..., "--output", "-o", help="Parquet file to write."),
    method: Optional[str] = typer.Option(None, "--method", help="CAM method to take (needed if several)."),
) -> None:
    """One row per cell in CellProfiler naming, for pycytominer and copairs.

    Metadata_Plate/Well/Site/ObjectNumber/Image keys, Cells_GradCAMO_<metric> scores and
    Cells_DeepProfile_<k> features (score --features).
    """
    from gradcamo.results.profiles import write_profiles

    rows = write_profiles(scores, output, method=method)
    typer.echo(f"wrote {rows} cell profiles to {output}")


@app.command("query")
def query_command(
    arguments: list[str] = typer.Argument(..., metavar="SCORES... SQL", help="Score dataset directories, "
                                          "then one SQL statement over the view `scores`."),
    output_format: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="File to write (required for parquet)."),
) -> None:
    """Run SQL (DuckDB) over score datasets.

    One dataset is the view `scores`; with several, `scores` holds them all with a `dataset`
    column, and each is also a view of its own name. Example:
    gradcamo query scores/ "select Metadata_Well, median(grad_camo) from scores group by 1"
    """
    from gradcamo.results.query import run_query, write_table

    if len(arguments) < 2:
        raise InputError("query: give at least one score dataset and one SQL statement")
    *datasets, sql = arguments
    write_table(run_query(datasets, sql), output_format, output)


@app.command("summary")
def summary_command(
    datasets: list[str] = typer.Argument(..., help="Score dataset directories (from `gradcamo score`)."),
    by: str = typer.Option("dataset,Metadata_Plate,Metadata_Well,target_name,method", "--by",
                           help="Comma-separated grouping columns."),
    output_format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="File to write instead of the terminal."),
) -> None:
    """Per group: cells, NaN scores, mean/median Grad-CAMO, share > 0.5, share edge-padded, predicted classes;
    for datasets scored with --ablation / --deletion-steps also the causal checks and a verdict (its rule on stderr)."""
    from gradcamo.results.query import write_table
    from gradcamo.results.summary import summarize
    from gradcamo.scorer.empty import EMPTY_MAPS_KEY, empty_maps_warning

    table = summarize(datasets, by=by)
    write_table(table, output_format, output)
    if "verdict" in table.column_names:
        from gradcamo.results.causal import THRESHOLDS

        typer.echo(THRESHOLDS, err=True)
    warning = empty_maps_warning(sum(table[EMPTY_MAPS_KEY].to_pylist()), sum(table["cells"].to_pylist()))
    if warning:
        typer.echo(warning, err=True)


MODEL_FILES_OPTION = typer.Option(None, "--model", "-m", help="Model file the scores were made with (checked "
                                  "by sha256), when _gradcamo.json names none or it moved; repeatable.")
INPUT_MAP_OPTION = typer.Option(None, "--input", help="OLD=NEW: an input store (or a folder above it) "
                                "that moved since scoring; repeatable.")


@app.command("cams")
def cams_command(
    dataset: str = typer.Argument(..., help="Score dataset directory (from `gradcamo score`)."),
    output: str = typer.Option(..., "--output", "-o", help="Directory to write: cams.parquet, cams.zarr, png/."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL condition over the view `scores`, "
                                        "e.g. \"grad_camo < 0.2 and prob_target > 0.9\"."),
    order_by: Optional[str] = typer.Option(None, "--order-by", help="SQL ordering, e.g. grad_camo."),
    limit: int = typer.Option(64, "--limit", help="Rows at most."),
    method: Optional[str] = typer.Option(None, "--method", help="Only rows of this CAM method (gradcam, "
                                         "hirescam, ...); default: every method scored."),
    models: Optional[list[str]] = MODEL_FILES_OPTION,
    inputs: Optional[list[str]] = INPUT_MAP_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace cams written earlier to --output."),
    ablated: bool = typer.Option(False, "--ablated", help="Also write the cell-only and context-only crops "
                                 "(what score --ablation feeds the model) beside each overlay."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Recompute the crops, masks and CAMs of chosen cells exactly as scored, with an overlay PNG each.

    Example: gradcamo cams scores/ -o low/ --where "grad_camo < 0.2" --order-by grad_camo --limit 32
    """
    from gradcamo.visual.cams import write_cams
    from gradcamo.visual.source import parse_input_map

    if quiet:
        _configure_logging(quiet)
    summary = write_cams(
        dataset, output, where=where, order_by=order_by, limit=limit, method=method, models=models or (),
        input_map=parse_input_map(inputs), overwrite=overwrite, progress=_show_progress(), ablated=ablated,
    )
    typer.echo(f"wrote the CAMs of {counted(summary.rows, 'row')} to {summary.output} ({summary.seconds:.1f} s)")


@app.command("report")
def report_command(
    datasets: list[str] = typer.Argument(..., help="Score dataset directories, shown side by side."),
    output: str = typer.Option(..., "--output", "-o", help="HTML file to write, e.g. report.html."),
    gallery: int = typer.Option(16, "--gallery", help="Cells per gallery (lowest, highest, random) per "
                                "dataset; 0: no galleries (no model file or input needed)."),
    method: Optional[str] = typer.Option(None, "--method", help="CAM method the figures and galleries show "
                                         "(default: gradcam, or the first one scored); a table compares all."),
    models: Optional[list[str]] = MODEL_FILES_OPTION,
    inputs: Optional[list[str]] = INPUT_MAP_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """One self-contained HTML file (opens offline): headline figures, distributions, plate maps,
    score vs confidence, CAM galleries and provenance, for one dataset or several side by side."""
    from gradcamo.visual.report import write_report
    from gradcamo.visual.source import parse_input_map

    if quiet:
        _configure_logging(quiet)
    summary = write_report(datasets, output, gallery=gallery, models=models or (), method=method,
                           input_map=parse_input_map(inputs), progress=_show_progress())
    typer.echo(f"wrote {summary.output} ({summary.bytes / 1e6:.1f} MB, {counted(summary.datasets, 'dataset')}, "
               f"{counted(summary.gallery_cells, 'gallery cell')}, {summary.seconds:.1f} s)")


@app.command("export-autoencoder")
def export_autoencoder_command(
    model: str = typer.Argument(..., help="MODEL as package.module:factory or path/to/file.py:factory; the "
                                "module has encode(x) -> (N, L) and decode(z) -> (N, C, [D,] H, W)."),
    input_shape: str = typer.Option(..., "--input-shape", "-s", help="Crop shape C,H,W (2D) or C,D,H,W (3D)."),
    output: str = typer.Option(..., "--output", "-o", help="AE_DIR to write: encoder.onnx, decoder.onnx, "
                               "autoencoder.json."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="state_dict file (.pt), loaded "
                                          "with torch.load(weights_only=True)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean subtracted from raw intensities."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std dividing raw intensities."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Turn a PyTorch autoencoder into an encoder and a decoder ONNX graph on raw crops (AE_DIR).

    Both graphs are checked against torch before they are written; nothing is written when
    they disagree.
    """
    from gradcamo.exaggerate.autoencoder import export_autoencoder

    if quiet:
        _configure_logging(quiet)
    info = export_autoencoder(
        model, _parse_numbers(input_shape, "--input-shape", int), output, weights=weights,
        mean=_parse_numbers(mean, "--mean"), std=_parse_numbers(std, "--std"), quiet=quiet,
    )
    typer.echo(f"wrote {info.directory} (latent size {info.latent_size}, crop "
               f"{','.join(map(str, info.input_shape))})")


@app.command("encode")
def encode_command(
    inputs: list[str] = INPUTS_ARGUMENT,
    autoencoder: str = typer.Option(..., "--autoencoder", "-a", help="AE_DIR from `gradcamo export-autoencoder`."),
    output: str = DATASET_OUTPUT_OPTION,
    labels: Optional[str] = LABELS_OPTION,
    channels: Optional[str] = typer.Option(None, "--channels", help="Channels fed to the encoder, in order, "
                                           "e.g. 0,1,2 (default: all)."),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    workers: Optional[int] = WORKERS_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    scheduler: Optional[str] = SCHEDULER_OPTION,
    timepoint: int = TIMEPOINT_OPTION,
    overwrite: bool = DATASET_OVERWRITE_OPTION,
    max_failures: int = MAX_FAILURES_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Encode every segmented cell with an autoencoder: its latent code z_0.. and reconstruction error.

    Cells, crops, keys and work units are those of `score`; writes one row per cell to a Parquet
    dataset (part files + _gradcamo.json), a deep-learning profile per cell. Re-running the same
    command resumes. Exit codes: 0 done, 2 bad input, 3 some work units failed (listed), 130 interrupted.
    """
    from gradcamo.exaggerate.encode import encode

    if quiet:
        _configure_logging(quiet)
    summary = encode(
        inputs, autoencoder, output, labels=labels, channels=_parse_numbers(channels, "--channels", int),
        batch_size=batch_size, device=device, workers=workers, threads=threads, scheduler=scheduler,
        overwrite=overwrite, timepoint=timepoint, progress=_show_progress(), max_failures=max_failures,
    )
    _report_run(summary, max_failures, holds="codes",
                wrote=f"the codes of {counted(summary.cells, 'cell')} of {counted(summary.images, 'image')}")


@app.command("exaggerate")
def exaggerate_command(
    latents: str = typer.Argument(..., help="Latents dataset directory (from `gradcamo encode`)."),
    autoencoder: str = typer.Option(..., "--autoencoder", "-a", help="AE_DIR that encoded it "
                                    "(from `gradcamo export-autoencoder`)."),
    high: str = typer.Option(..., "--high", help="SQL condition choosing the 'high' cells, e.g. "
                             "\"Metadata_Well in ('B03', 'B04')\"."),
    low: str = typer.Option(..., "--low", help="SQL condition choosing the 'low' cells."),
    output: str = typer.Option(..., "--output", "-o", help="Directory to write: direction.json, "
                               "trajectories.parquet, images.zarr, report.html."),
    direction: str = typer.Option("lda", "--direction", help="lda (shrinkage LDA on z-scored codes), "
                                  "feature:K (latent feature K) or gradient:FILE (Latent Shift: a graph from "
                                  "`gradcamo export-latent-shift`)."),
    steps: str = typer.Option("-4:4:1", "--steps", help="START:STOP:STEP in standard deviations of the "
                              "direction; must include 0."),
    cells: int = typer.Option(32, "--cells", help="Cells per group to decode (drawn with --seed)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A gradcamo classifier of the same crop "
                                        "shape: class probabilities and Grad-CAMO of every decoded image."),
    seed: int = typer.Option(0, "--seed", help="Seed of the choice of cells."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (onnxruntime)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier exaggeration in --output."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Decode cells moved along the direction that separates two groups, measure what changes, report it.

    The latent-space exaggeration of Zaritsky et al. (Cell Systems 2021), measured: see docs/exaggerate.md.
    """
    from gradcamo.exaggerate.run import exaggerate

    if quiet:
        _configure_logging(quiet)
    summary = exaggerate(latents, autoencoder, output, high=high, low=low, direction=direction, steps=steps, cells=cells,
                         model=model, seed=seed, overwrite=overwrite, device=device, progress=_show_progress())
    auroc = summary.direction.get("auroc")
    typer.echo(f"wrote {counted(summary.cells, 'cell')} x {counted(summary.steps, 'step')} to {summary.output} (AUROC "
               f"{'n/a' if auroc is None else f'{auroc:.3f}'}, {summary.seconds:.1f} s)")


@app.command("export-latent-shift")
def export_latent_shift_command(
    autoencoder: str = typer.Argument(..., help="The autoencoder as MODEL for export-autoencoder "
                                      "(package.module:factory or path/to/file.py:factory)."),
    classifier: str = typer.Argument(..., help="The classifier as MODEL for export."),
    input_shape: str = typer.Option(..., "--input-shape", "-s", help="Crop shape C,H,W (2D) or C,D,H,W (3D)."),
    output: str = typer.Option(..., "--output", "-o", help="ONNX file to write, e.g. latent_shift.onnx."),
    autoencoder_weights: Optional[str] = typer.Option(None, "--autoencoder-weights", help="state_dict of the "
                                                      "autoencoder (.pt)."),
    autoencoder_mean: Optional[str] = typer.Option(None, "--autoencoder-mean", help="The autoencoder's "
                                                   "per-channel mean (as for export-autoencoder)."),
    autoencoder_std: Optional[str] = typer.Option(None, "--autoencoder-std", help="The autoencoder's per-channel std."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="state_dict of the classifier (.pt)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="The classifier's per-channel mean."),
    std: Optional[str] = typer.Option(None, "--std", help="The classifier's per-channel std."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names, comma-separated, one per logit."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Export the Latent Shift graph (decoder, then classifier, and the gradient of a logit to the code)
    for `exaggerate --direction gradient:FILE`; checked against torch autograd before it is written."""
    from gradcamo.exporter.latent_shift import export_latent_shift
    from gradcamo.exporter.loading import load_model, load_weights

    if quiet:
        _configure_logging(quiet)
    networks = []
    for spec, state in ((autoencoder, autoencoder_weights), (classifier, weights)):
        network = load_model(spec)
        if state:
            load_weights(network, state)
        networks.append(network)
    description = export_latent_shift(
        networks[0], networks[1], _parse_numbers(input_shape, "--input-shape", int), output,
        autoencoder_mean=_parse_numbers(autoencoder_mean, "--autoencoder-mean"),
        autoencoder_std=_parse_numbers(autoencoder_std, "--autoencoder-std"), mean=_parse_numbers(mean, "--mean"),
        std=_parse_numbers(std, "--std"), class_names=[c.strip() for c in classes.split(",")] if classes else None,
    )
    typer.echo(f"wrote {output} (latent size {description['latent_size']}, gradient max relative error vs torch "
               f"{description['validation']['gradient_max_rel_error']:.1e})")


DEMO_OUT = "gradcamo-demo"


@app.command("demo")
def demo_command(
    out: str = typer.Option(DEMO_OUT, "--out", help="Directory for the plate, models and scores "
                            f"(with --exaggerate, default {DEMO_OUT}-exaggerate)."),
    three_d: bool = typer.Option(False, "--3d", help="A 3D plate and 3D models instead of 2D."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic plate and of training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a demo made with other settings."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Dask worker processes for scoring."),
    exaggerate: bool = typer.Option(False, "--exaggerate", help="The latent-space exaggeration demo instead: "
                                    "train an autoencoder and a classifier, encode, exaggerate (2D)."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """The whole path on a synthetic plate: train an honest and a shortcut model, export, score, compare.

    With --exaggerate: cells whose "high" wells have arms and a bright rim; an autoencoder and a
    classifier trained on the spot; encode, exaggerate, and the share of cells whose arms, rim and
    probability grow along the direction. Needs torch (pip install "gradcamo[export]"). About a
    minute on a laptop CPU.
    """
    if quiet:
        _configure_logging(quiet)
    if exaggerate:
        from gradcamo.demo.exaggerate import print_exaggerate_report, run_exaggerate_demo

        if three_d:
            raise InputError("--3d: the exaggeration demo is 2D only; leave out --3d or --exaggerate")
        exaggerated = run_exaggerate_demo(out if out != DEMO_OUT else DEMO_OUT + "-exaggerate", seed=seed,
                                          overwrite=overwrite, workers=workers, progress=_show_progress())
        print_exaggerate_report(exaggerated)
        return
    from gradcamo.demo.report import print_report
    from gradcamo.demo.run import run_demo

    result = run_demo(out, three_d=three_d, seed=seed, overwrite=overwrite, workers=workers,
                      progress=_show_progress())
    print_report(result)


ARGUMENT_FLAGS = {"inputs": "INPUT", "methods": "--method", "ae_dir": "--autoencoder"}
"""Python arguments whose command-line name is not ``--`` + the name with dashes."""


def _in_flags(error):
    """The error's message, its leading Python argument name (``batch_size``) replaced by the flag."""
    message = str(error)
    argument = getattr(error, "argument", None)
    if argument and message.startswith(argument):
        flag = ARGUMENT_FLAGS.get(argument, "--" + argument.replace("_", "-"))
        return flag + message[len(argument):]
    return message


OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""errno values of a write refused for want of space: a full disk, a quota, a file size limit."""
USAGE_ERROR: Any = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "UsageError")
"""click's UsageError as the installed typer raises it (typer 0.2x vendors click as typer._click)."""


def main(argv=None) -> int:
    """Run the command line; returns the exit code: 0 done, 2 bad input or usage (one line on
    stderr), 3 finished with failed work units, 130 interrupted by SIGINT or SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        with stop_on_signals():
            # Not standalone: usage errors reach us (one line below, not click's box), and an
            # exit code (typer.Exit, --help) comes back as the return value.
            code = command.main(args=argv, prog_name="gradcamo", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except USAGE_ERROR as error:  # a bad option value, a missing argument, an unknown command
        if type(error).__name__ == "NoArgsIsHelpError":  # `gradcamo` alone: the help, as click shows it
            error.show()
            return 2
        where = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
        print(f"error: {' '.join(error.format_message().split())}{where}", file=sys.stderr)
        return 2
    except typer.Abort:  # end of input at a prompt
        return 1
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return 130
    except (GradcamoError, OSError) as error:
        if not isinstance(error, GradcamoError) and error.errno not in OUT_OF_SPACE:
            raise
        if "--debug" in argv:
            traceback.print_exc()
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _one_line(error):
    if isinstance(error, GradcamoError):
        return _in_flags(error)
    return (f"cannot write the output: {describe(error)}; make room and run the same command again "
            "(what was finished is kept)")
