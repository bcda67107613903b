"""The ``gradcamo`` command. ``main(argv)`` returns the exit code, so tests call it in-process."""

import json
import logging
import sys
import traceback
from typing import Optional

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from gradcamo.errors import GradcamoError, InputError

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


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors, no progress."),
):
    _configure_logging(quiet)


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
    model: str = typer.Argument(..., help="MODEL as package.module:factory or path/to/file.py:factory; "
                                "the factory takes no required arguments and returns an nn.Module."),
    target_layer: str = typer.Option(..., "--target-layer", "-l", help="Layer to explain, as in "
                                     "model.named_modules(), e.g. layer4 (resnet) or features (densenet)."),
    input_shape: str = typer.Option(..., "--input-shape", "-s", help="Crop shape C,H,W (2D) or C,D,H,W (3D)."),
    output: str = typer.Option(..., "--output", "-o", help="ONNX file to write, e.g. model.onnx."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="state_dict file (.pt), loaded "
                                          "with torch.load(weights_only=True)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names, comma-separated, one per logit."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean subtracted from raw intensities."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std dividing raw intensities."),
    factory_kwargs: Optional[str] = typer.Option(None, "--factory-kwargs", help="JSON object of factory "
                                                 "keyword arguments, e.g. '{\"num_classes\": 4}'."),
    opset: int = typer.Option(18, "--opset", min=18, help="ONNX opset version."),
):
    """Turn a PyTorch classifier into one ONNX graph returning logits, activations and gradients.

    The graph is checked against torch autograd before it is written; a file that
    disagrees is never written.
    """
    from gradcamo.exporter import export_model
    from gradcamo.exporter.loading import load_model, load_weights

    shape = _parse_numbers(input_shape, "--input-shape", int)
    mean_values = _parse_numbers(mean, "--mean")
    std_values = _parse_numbers(std, "--std")
    class_names = [name.strip() for name in classes.split(",")] if classes else None
    network = load_model(model, _parse_json_object(factory_kwargs, "--factory-kwargs"))
    if weights:
        load_weights(network, weights)
    result = export_model(
        network, target_layer, shape, output, class_names=class_names,
        mean=mean_values, std=std_values, opset=opset,
    )
    typer.echo(f"wrote {result.path} (CAM max relative error vs torch "
               f"{result.validation.cam_max_rel_error:.1e})")


def _model_table(info):
    table = Table(title=str(info.path), show_header=False)
    rows = [
        ("format version", str(info.format_version)),
        ("inputs", "; ".join(f"{n} {s['dtype']}{s['shape']}" for n, s in info.inputs.items())),
        ("outputs", "; ".join(f"{n} {s['dtype']}{s['shape']}" for n, s in info.outputs.items())),
        ("crop shape (C,[D,]H,W)", ",".join(map(str, info.input_shape))),
        ("spatial dims", str(info.spatial_dims)),
        ("target layer", info.target_layer),
        ("classes", ", ".join(info.class_names)),
        ("preprocessing", json.dumps(info.preprocessing)),
        ("validation", json.dumps(info.validation)),
        ("opset", str(info.opset)),
        ("sha256", info.sha256),
    ]
    rows += [(k, v) for k, v in info.metadata.items() if k.endswith(("torch_version", "weights_sha256", ".version"))]
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command("inspect")
def inspect_command(
    path: str = typer.Argument(..., help="A gradcamo model file (.onnx)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Show what a gradcamo model file holds: contract, crop shape, classes, validation errors."""
    from gradcamo.model_file import read_model_info

    info = read_model_info(path)
    if as_json:
        fields = {k: v for k, v in vars(info).items() if k != "path"}
        typer.echo(json.dumps({"path": str(info.path), **fields}, indent=2))
    else:
        Console().print(_model_table(info))


def main(argv=None):
    """Run the command line; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="gradcamo", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except GradcamoError as error:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
