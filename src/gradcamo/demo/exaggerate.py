"""``gradcamo demo --exaggerate``: latent-space exaggeration on a synthetic plate, from training to report.

Wells B02, B03, C02, C03 are the ``low`` group, B04, B05, C04, C05 the ``high`` group. Every
cell has a phenotype ``p`` in [0, 1] (Beta(2, 6) in low wells, Beta(6, 2) in high wells) that
sets its arm-like protrusions and the brightness of its rim
(:func:`gradcamo.data.synthetic.make_protruding_cells`), so the groups overlap as real ones do.
A small convolutional autoencoder and a small classifier are trained on the cells' crops,
exported (``export_autoencoder``, ``export_model``), the plate is encoded (``encode``) and
``exaggerate`` moves the codes along the LDA direction from low to high.

The classifier is trained on the crops *and* their reconstructions by the autoencoder: the
small autoencoder blurs, and a classifier that has only seen sharp crops calls every blurred
cell "low", whatever its arms and rim. The steps go from -2 to +6 SD: exaggeration towards
"high" is the point, and beyond about -2 SD a "low" cell (few arms, a dim rim already) has
nothing left to lose, so the decoder draws artefacts there.
"""

import dataclasses
import logging
import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

import gradcamo
from gradcamo.contract import IMAGE, LATENT_CODE
from gradcamo.data.synthetic import make_protruding_cells
from gradcamo.demo.plate import Field
from gradcamo.demo.run import PARTIAL_PLATE, prepare, write_plate_once
from gradcamo.demo.train import TARGET_LAYER, augment, cell_crops, channel_statistics, train_classifier
from gradcamo.exaggerate.autoencoder import export_autoencoder, open_decoder, open_encoder, read_autoencoder
from gradcamo.exaggerate.encode import encode
from gradcamo.exaggerate.run import TRAJECTORIES_FILE, ExaggerateSummary, exaggerate
from gradcamo.exaggerate.trajectories import decode
from gradcamo.exporter import export_model
from gradcamo.exporter.latent_shift import export_latent_shift

if TYPE_CHECKING:
    from gradcamo.models import ConvAutoencoder2d

LOGGER = logging.getLogger(__name__)
CLASSES = ("low", "high")
WELLS = {"low": ("B02", "B03", "C02", "C03"), "high": ("B04", "B05", "C04", "C05")}
PHENOTYPE = {"low": (2.0, 6.0), "high": (6.0, 2.0)}
"""Beta distribution parameters of the phenotype per group."""
FIELD_SHAPE = (128, 128)
CELLS_PER_FIELD = 16
FIELDS_PER_WELL = 2
CROP_SHAPE = (2, 32, 32)
LATENT_SIZE = 16
AE_WIDTH = 8
AE_EPOCHS = 100
CLASSIFIER_EPOCHS = 12
STEPS = "-2:6:1"
NAMES = ("plate.zarr", PARTIAL_PLATE, "models", "autoencoder", "latents", "exaggerate", "latent-shift")


@dataclasses.dataclass(frozen=True)
class ExaggerateDemoResult:
    """What the demo made and found: ``summary`` (LDA) and ``latent_shift`` are exaggerate's
    :class:`~gradcamo.exaggerate.run.ExaggerateSummary`."""

    out: pathlib.Path
    summary: ExaggerateSummary
    latent_shift: ExaggerateSummary
    seconds: float

    @property
    def report(self) -> pathlib.Path:
        return self.summary.output / "report.html"


def _condition(group):
    return "Metadata_Well in (" + ", ".join(f"'{well}'" for well in WELLS[group]) + ")"


HIGH, LOW = _condition("high"), _condition("low")


def make_fields(seed) -> dict:
    """``{(row, column): [Field, ...]}`` of both groups' wells; class index 1 for high."""
    generator = np.random.default_rng(seed)
    fields = {}
    for group, wells in WELLS.items():
        for well in wells:
            fields[(well[0], int(well[1:]))] = [
                Field(*make_protruding_cells(FIELD_SHAPE, generator.beta(*PHENOTYPE[group], CELLS_PER_FIELD),
                                             seed=int(generator.integers(2**31))),
                      CLASSES.index(group), None)
                for _ in range(FIELDS_PER_WELL)
            ]
    return fields


def train_autoencoder(crops, *, mean, std, epochs, seed, latent_size=LATENT_SIZE,
                      batch_size=64) -> "ConvAutoencoder2d":
    """A :class:`~gradcamo.models.ConvAutoencoder2d` trained (Adam, mean squared error) on normalised, augmented crops."""
    import torch

    from gradcamo.models import ConvAutoencoder2d

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ConvAutoencoder2d(crops.shape[1], crops.shape[-1], latent_size, width=AE_WIDTH)
    x = (torch.from_numpy(crops) - torch.tensor(mean).reshape(1, -1, 1, 1)) / torch.tensor(std).reshape(1, -1, 1, 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x), batch_size):
            batch = augment(x[order[begin:begin + batch_size]], generator)
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch), batch)
            loss.backward()
            optimiser.step()
    return model.eval()


def reconstruct(info, crops) -> np.ndarray:
    """Crops encoded and decoded by an AE_DIR's graphs (raw intensities in and out)."""
    (codes,) = open_encoder(info, device="cpu").run([LATENT_CODE], {IMAGE: crops})
    return decode(open_decoder(info, device="cpu"), codes)


def run_exaggerate_demo(out="gradcamo-demo-exaggerate", *, seed=0, overwrite=False, workers=None,
                        progress=False) -> "ExaggerateDemoResult":
    """Make the plate, train and export both models, encode, exaggerate; reuse what ``out`` already holds.

    Returns
    -------
    ExaggerateDemoResult
    """
    started = time.time()
    out = pathlib.Path(out)
    prepare(out, {"seed": seed, "exaggerate": True, "version": gradcamo.__version__}, overwrite, NAMES)
    fields = make_fields(seed)
    plate, classifier, ae_dir = out / "plate.zarr", out / "models" / "classifier.onnx", out / "autoencoder"
    shift = out / "models" / "latent_shift.onnx"
    write_plate_once(plate, fields)
    if not classifier.exists() or not ae_dir.exists() or not shift.exists():
        crops, classes = cell_crops([f for wells in fields.values() for f in wells], CROP_SHAPE)
        mean, std = channel_statistics(crops)
        LOGGER.info("training the autoencoder on %d cells", len(crops))
        autoencoder = train_autoencoder(crops, mean=mean, std=std, epochs=AE_EPOCHS, seed=seed)
        export_autoencoder(autoencoder, CROP_SHAPE, ae_dir, mean=mean, std=std, quiet=True)
        reconstructed = reconstruct(read_autoencoder(ae_dir), crops)
        LOGGER.info("training the classifier on %d cells and their reconstructions", len(crops))
        model = train_classifier(np.concatenate([crops, reconstructed]), np.concatenate([classes, classes]),
                                 mean=mean, std=std, epochs=CLASSIFIER_EPOCHS, seed=seed)
        classifier.parent.mkdir(parents=True, exist_ok=True)
        export_model(model, TARGET_LAYER, CROP_SHAPE, classifier, class_names=list(CLASSES), mean=mean, std=std)
        export_latent_shift(autoencoder, model, CROP_SHAPE, shift, autoencoder_mean=mean, autoencoder_std=std,
                            mean=mean, std=std, class_names=list(CLASSES))
    LOGGER.info("encoding the plate")
    encode([plate], ae_dir, out / "latents", workers=workers, progress=progress)
    LOGGER.info("exaggerating from low to high")
    summary = exaggerate(out / "latents", ae_dir, out / "exaggerate", high=HIGH, low=LOW, model=classifier, seed=seed,
                         steps=STEPS, overwrite=True, progress=progress)
    LOGGER.info("exaggerating along each cell's Latent Shift gradient")
    shifted = exaggerate(out / "latents", ae_dir, out / "latent-shift", high=HIGH, low=LOW, model=classifier,
                         direction=f"gradient:{shift}", seed=seed, steps=STEPS, overwrite=True, progress=progress)
    return ExaggerateDemoResult(out, summary, shifted, time.time() - started)


SHOWN = ("prob_high", "grad_camo", "protrusion", "solidity", "area", "perimeter", "intensity_rim_c1",
         "intensity_inside_c1")
"""Quantities the demo prints (the report has them all)."""


def overall_changes(summary, names) -> dict:
    """{name: (median of last - first step over the drawn cells, share of cells with last > first)}."""
    import pyarrow.parquet as pq

    table = pq.read_table(summary.output / TRAJECTORIES_FILE).sort_by([("cell_index", "ascending"),
                                                                       ("step", "ascending")])
    changes = {}
    for name in names:
        values = table[name].to_numpy().reshape(summary.cells, summary.steps)
        change = values[:, -1] - values[:, 0]
        changes[name] = (float(np.nanmedian(change)), float((change > 0).mean()))
    return changes


REPORT_WIDTH = 120
"""Columns of the printed table when stdout is not a terminal."""


def print_exaggerate_report(result, console=None) -> None:
    """AUROC, the monotonic shares and overall changes of the main quantities along both directions, the run time
    and where the reports are."""
    from rich.console import Console
    from rich.table import Table

    if console is None:  # piped to a file or a CI log: wide enough for the table (rich assumes 80 columns)
        console = Console() if Console().is_terminal else Console(width=REPORT_WIDTH)
    record = result.summary.direction
    folds = record["folds"]
    auroc = "n/a" if record["auroc"] is None else f"{record['auroc']:.3f}"
    console.print(f"LDA direction from low to high: cross-validated AUROC {auroc} ({folds['scheme']}, "
                  f"{folds['folds']} folds, {record['cells']['high']} high and {record['cells']['low']} low cells); "
                  f"Latent Shift: each cell along its gradient of the {result.latent_shift.direction['target_class']!r} "
                  "logit")
    first, last = STEPS.split(":")[:2]
    table = Table(title=f"Along the directions, steps {STEPS} (SD): share of cells changing monotonically, "
                        f"median change {first} -> {last}")
    for column in ("quantity", "LDA: up", "down", "high up", "low up", "median", "Latent Shift: up", "down",
                   "median"):
        table.add_column(column, justify="left" if column == "quantity" else "right")
    lda = {(row["property"], row["group"]): row for row in result.summary.shares}
    shift = {(row["property"], row["group"]): row for row in result.latent_shift.shares}
    lda_changes, shift_changes = (overall_changes(summary, SHOWN) for summary in (result.summary, result.latent_shift))
    for name in SHOWN:
        table.add_row(
            name, *(f"{lda[(name, group)][way]:.0%}" for group, way in
                    (("all", "increasing"), ("all", "decreasing"), ("high", "increasing"), ("low", "increasing"))),
            f"{lda_changes[name][0]:+.3g}", f"{shift[(name, 'all')]['increasing']:.0%}",
            f"{shift[(name, 'all')]['decreasing']:.0%}", f"{shift_changes[name][0]:+.3g}",
        )
    console.print(table)
    console.print(f"demo run time {result.seconds:.0f} s; the reports, with the cells across the steps: "
                  f"{result.report} and {result.latent_shift.output / 'report.html'}", highlight=False, soft_wrap=True)
