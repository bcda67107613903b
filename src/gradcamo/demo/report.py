"""Print what the demo found, and what to try next."""

from rich.console import Console
from rich.table import Table

from gradcamo.demo.run import EVALUATION_ROW, MIN_GAP
from gradcamo.results.causal import THRESHOLDS


def _print_methods(result, console):
    """Median Grad-CAMO of both models under every CAM method, and whether the verdict holds under each."""
    table = Table(title="The same wells under every CAM method (median Grad-CAMO)")
    for column in ("method", "honest", "shortcut", f"gap >= {MIN_GAP}"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, (honest, shortcut) in result.method_medians.items():
        table.add_row(method, f"{honest:.2f}", f"{shortcut:.2f}", "yes" if result.gap_holds(method) else "[bold red]no[/]")
    console.print(table)
    holding = [method for method in result.method_medians if result.gap_holds(method)]
    verdict = ("holds under every method" if len(holding) == len(result.method_medians)
               else f"holds under {', '.join(holding) or 'no method'} only")
    console.print(f"The shortcut model's verdict {verdict}.")


def _print_causal(result, console):
    """The causal checks of both models (the cell alone, the context alone, deletion) and their verdicts."""
    table = Table(title="Is the attention causal? Cells alone, context alone (evaluation wells)")
    columns = ("model", "confidence lost, median / mean: cell only", "context only", "flipped: cell only",
               "context only", "deletion AUC", "insertion AUC")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for report in result.reports:
        c = report.causal
        lost = [f"{c[f'median_confidence_lost_{kind}']:.2f} / {c[f'mean_confidence_lost_{kind}']:.2f}"
                for kind in ("cell_only", "context_only")]
        table.add_row(report.name, *lost, f"{c['share_flipped_cell_only']:.0%}",
                      f"{c['share_flipped_context_only']:.0%}", f"{c['median_deletion_auc']:.2f}",
                      f"{c['median_insertion_auc']:.2f}")
    console.print(table)
    for report in result.reports:
        console.print(f"{report.name}: {report.causal['verdict']}")
    console.print(f"({THRESHOLDS})", highlight=False)
    if not result.verdicts_separate:
        console.print("[bold red]With this seed the causal verdicts do not separate the two models; "
                      "try another --seed.[/]")


def print_report(result, console=None) -> None:
    """The per-model table on the evaluation wells, the verdict, the verdict per CAM method and the next commands."""
    console = console or Console()
    table = Table(title=f"Evaluation wells (row {EVALUATION_ROW}): debris next to random cells")
    for column in ("model", "cells", "accuracy", "median Grad-CAMO", "share > 0.5"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for report in result.reports:
        table.add_row(report.name, str(report.cells), f"{report.accuracy:.0%}",
                      f"{report.median_grad_camo:.2f}", f"{report.share_above_half:.0%}")
    console.print(table)
    honest, shortcut = result.reports
    if result.gap_shown:
        console.print(
            f"The honest model looks at the cells (median Grad-CAMO {honest.median_grad_camo:.2f}); the "
            f"shortcut model learned the debris next to them ({shortcut.median_grad_camo:.2f})."
        )
    else:
        console.print(
            f"[bold red]With this seed the honest model's median Grad-CAMO ({honest.median_grad_camo:.2f}) "
            f"does not beat the shortcut model's ({shortcut.median_grad_camo:.2f}) by {MIN_GAP}; "
            "try another --seed.[/]"
        )
    _print_methods(result, console)
    _print_causal(result, console)
    console.print(f"\nThe report, with plate maps and the CAMs of the cells: {result.report}", highlight=False,
                  soft_wrap=True)
    scores = result.out / "scores"
    console.print("\nNext, try:", highlight=False)
    for command in (
        f"gradcamo summary {scores / 'honest'} {scores / 'shortcut'} --by dataset,Metadata_Well",
        f"gradcamo query {scores / 'shortcut'} \"select Metadata_Well, median(grad_camo) from scores group by 1\"",
        f"gradcamo inspect {result.out / 'models' / 'honest.onnx'}",
    ):
        console.print(f"  {command}", highlight=False, soft_wrap=True)
