"""``gradcamo demo``: synthetic plate -> two tiny models -> export -> score -> comparison table.

Each model is scored twice: with Grad-CAM (the dataset the report shows) and with every CAM
method in one run (``scores/<model>-methods``), to see whether the verdict holds under all.
"""

import dataclasses
import json
import logging
import pathlib
import shutil

import gradcamo
from gradcamo.demo.plate import CLASSES, ROLES, SIZES, make_demo_fields, write_demo_plate
from gradcamo.demo.train import TARGET_LAYER, cell_crops, channel_statistics, train_classifier
from gradcamo.cam import METHODS
from gradcamo.errors import InputError
from gradcamo.exporter import export_model
from gradcamo.results.causal import CELL, CONTEXT, causal_aggregates, verdict
from gradcamo.results.query import run_query
from gradcamo.scorer.pipeline import score
from gradcamo.visual.report import write_report

LOGGER = logging.getLogger(__name__)
MODELS = {"honest": "B", "shortcut": "A"}
"""Each model's training row of the plate (see gradcamo.demo.plate)."""
EVALUATION_ROW = "C"
EPOCHS = {2: 20, 3: 20}
"""Training epochs; in 2D the shortcut model needs about 20 to find the debris (12 left it predicting one class)."""
SETTINGS = "demo.json"
PARTIAL_PLATE = "plate.zarr.partial"
REPORT = "report.html"
MIN_GAP = 0.1
"""The honest model's median Grad-CAMO must beat the shortcut model's by this much."""
DELETION_STEPS = 4
"""Deletion / insertion steps of the Grad-CAM datasets (scored with ``--ablation`` too)."""


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """One model on the evaluation wells."""

    name: str
    cells: int
    accuracy: float
    median_grad_camo: float
    share_above_half: float
    causal: dict = dataclasses.field(default_factory=dict)
    """The causal checks on the evaluation wells: :mod:`gradcamo.results.causal`'s aggregates and ``verdict``."""


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """``method_medians``: {method: (honest, shortcut) median Grad-CAMO on the evaluation wells}."""

    out: pathlib.Path
    reports: tuple
    gap_shown: bool
    report: pathlib.Path
    method_medians: dict

    @property
    def verdicts_separate(self) -> bool:
        """The causal check puts the honest model on the cell's side and the shortcut model on the context's."""
        honest, shortcut = self.reports
        return honest.causal.get("verdict") == CELL and shortcut.causal.get("verdict") == CONTEXT

    def gap_holds(self, method) -> bool:
        honest, shortcut = self.method_medians[method]
        return honest - shortcut >= MIN_GAP


def _layout(out):
    return {
        "plate": out / "plate.zarr",
        "models": {name: out / "models" / f"{name}.onnx" for name in MODELS},
        "scores": {name: out / "scores" / name for name in MODELS},
        "methods": {name: out / "scores" / f"{name}-methods" for name in MODELS},
    }


def prepare(out, settings, overwrite, names=("plate.zarr", PARTIAL_PLATE, "models", "scores", SETTINGS, REPORT)) -> None:
    """Reuse a demo directory made with the same ``settings``; else refuse, or with ``overwrite`` start afresh.

    ``names`` are the entries the demo writes in ``out``; any other entry makes it refuse.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    present = {p.name for p in out.iterdir()} if out.exists() else set()
    foreign = present - set(names) - {SETTINGS}
    if foreign:
        raise InputError(
            f"--out {out}: holds files the demo did not write ({', '.join(sorted(foreign)[:3])}); "
            "choose another directory"
        )
    previous = json.loads((out / SETTINGS).read_text()) if SETTINGS in present else None
    if present and previous != settings:
        if not overwrite:
            raise InputError(
                f"--out {out}: holds a demo made with other settings ({previous}); "
                "pass --overwrite to replace it or choose another --out"
            )
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(json.dumps(settings))


def write_plate_once(path, fields) -> None:
    """Write the demo plate at ``path`` unless it is there (a partial sibling is renamed when complete)."""
    if path.exists():
        return
    partial = path.parent / PARTIAL_PLATE
    shutil.rmtree(partial, ignore_errors=True)
    write_demo_plate(partial, fields)
    partial.rename(path)


def _report(name, scores_dir):
    treated = CLASSES.index("treated")
    row = run_query(
        scores_dir,
        f"""
        select count(*),
               avg(case when predicted_class = (case when Metadata_Well like '%02' then {treated} else 0 end)
                        then 1.0 else 0.0 end),
               median(grad_camo) filter (where not isnan(grad_camo)),
               avg(case when grad_camo > 0.5 then 1.0 else 0.0 end) filter (where not isnan(grad_camo))
        from scores where Metadata_Well like '{EVALUATION_ROW}%'
        """,
    ).to_pylist()[0]
    cells, accuracy, median, share = row.values()
    return ModelReport(name, int(cells), float(accuracy), float(median), float(share), _causal(scores_dir))


def _causal(scores_dir):
    """The causal checks' aggregates on the evaluation wells, and their verdict."""
    aggregates = causal_aggregates(run_query(scores_dir, "select * from scores limit 0", warn=False).column_names)
    row = run_query(scores_dir, f"select {', '.join(aggregates)} from scores "
                                f"where Metadata_Well like '{EVALUATION_ROW}%'", warn=False).to_pylist()[0]
    return {**row, "verdict": verdict(row["mean_confidence_lost_cell_only"], row["mean_confidence_lost_context_only"])}


def _method_medians(scores_dir):
    """{method: median Grad-CAMO on the evaluation wells} of a dataset scored with several methods."""
    rows = run_query(
        scores_dir,
        f"""
        select method::VARCHAR as method, median(grad_camo) filter (where not isnan(grad_camo)) as median
        from scores where Metadata_Well like '{EVALUATION_ROW}%' group by 1
        """,
    ).to_pylist()
    return {row["method"]: float(row["median"]) for row in rows}


def run_demo(out="gradcamo-demo", *, three_d=False, seed=0, overwrite=False, workers=None,
             progress=False) -> DemoResult:
    """Make the plate, train, export and score both models; reuse what ``out`` already holds.

    Returns
    -------
    DemoResult
    """
    out = pathlib.Path(out)
    prepare(out, {"seed": seed, "3d": three_d, "version": gradcamo.__version__}, overwrite)
    paths = _layout(out)
    spatial_dims = 3 if three_d else 2
    size = SIZES[spatial_dims]
    fields = make_demo_fields(spatial_dims, seed)
    if not paths["plate"].exists():
        LOGGER.info("writing the synthetic plate %s (rows: %s)", paths["plate"],
                    "; ".join(f"{row} = {role}" for row, role in ROLES.items()))
    write_plate_once(paths["plate"], fields)
    for name, row in MODELS.items():
        model_path = paths["models"][name]
        if not model_path.exists():
            crops, classes = cell_crops(fields[(row, 1)] + fields[(row, 2)], size.crop_shape)
            mean, std = channel_statistics(crops)
            LOGGER.info("training the %s model on %d cells of row %s", name, len(crops), row)
            model = train_classifier(crops, classes, mean=mean, std=std, epochs=EPOCHS[spatial_dims], seed=seed)
            model_path.parent.mkdir(parents=True, exist_ok=True)
            export_model(model, TARGET_LAYER, size.crop_shape, model_path, class_names=list(CLASSES),
                         mean=mean, std=std)
        LOGGER.info("scoring the plate with the %s model", name)
        score([paths["plate"]], model_path, paths["scores"][name], workers=workers, progress=progress,
              ablation=True, deletion_steps=DELETION_STEPS)
        LOGGER.info("scoring the plate with the %s model and every CAM method", name)
        score([paths["plate"]], model_path, paths["methods"][name], methods=METHODS, workers=workers,
              progress=progress)
    reports = tuple(_report(name, paths["scores"][name]) for name in MODELS)
    medians = {name: _method_medians(paths["methods"][name]) for name in MODELS}
    LOGGER.info("writing %s", out / REPORT)
    report = write_report([paths["scores"][name] for name in MODELS], out / REPORT,
                          models=list(paths["models"].values()), progress=progress)
    honest, shortcut = reports
    return DemoResult(out, reports, honest.median_grad_camo - shortcut.median_grad_camo >= MIN_GAP, report.output,
                      {method: (medians["honest"][method], medians["shortcut"][method]) for method in METHODS})
