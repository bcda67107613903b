"""``gradcamo report``: one self-contained HTML file about one or several score datasets.

Everything is inline: the figures are SVG written here (:mod:`gradcamo.visual.figures`), the
overlays PNG data URIs, the style one ``<style>`` element; there is no script and nothing is
fetched, so the file opens from disk, offline, in any browser.
"""

import dataclasses
import datetime
import html
import math
import pathlib
import time

import gradcamo
from gradcamo.errors import InputError
from gradcamo.files import atomic_path
from gradcamo.results.datasets import incompleteness
from gradcamo.progress import cell_progress
from gradcamo.visual.causal import causal_section
from gradcamo.visual.figures import colorbar_svg, density_svg, histogram_svg, plate_svg
from gradcamo.visual.gallery import render_galleries, select_galleries
from gradcamo.visual.plates import parse_well, plate_shape, row_name
from gradcamo.scorer.session import SessionCache
from gradcamo.visual.source import open_source, read_manifest
from gradcamo.visual.stats import CONFIDENT, report_stats, well_stats
from gradcamo.options import check_whole_number
from gradcamo.wording import counted

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1600px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 8px 0; } h4 { font-size: 13px; margin: 10px 0 4px; color: #555; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f4; } td.key, th.key { text-align: left; }
tr.all td { font-weight: 600; } .row { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.dataset { flex: 1 1 340px; max-width: 760px; } figure { margin: 4px 0; } figcaption, .note { color: #666; font-size: 12px; }
.incomplete { color: #a00; font-weight: bold; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; } .strip img { display: block; }
.provenance td { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
"""
HEADLINE_FIELDS = (
    ("cells", "cells", "{:,}"),
    ("nan_scores", "NaN scores", "{:,}"),
    ("median_grad_camo", "median Grad-CAMO", "{:.3f}"),
    ("share_above_half", "share > 0.5", "{:.1%}"),
    ("mean_grad_camo", "mean Grad-CAMO", "{:.3f}"),
    ("share_edge_padded", "edge-padded", "{:.1%}"),
    ("median_enrichment", "median enrichment", "{:.2f}"),
    ("mean_rank_accuracy", "rank accuracy", "{:.3f}"),
    ("pointing_hit_rate", "pointing hits", "{:.1%}"),
)
METRICS_NOTE = (
    "Enrichment: Grad-CAMO over the share of the crop the cell covers (1 = no better than uniform attention). "
    "Rank accuracy: share of the mask-sized set of highest-attention voxels inside the mask. Pointing hits: "
    "share of CAMs whose maximum lies in the mask. See docs/score.md."
)


@dataclasses.dataclass(frozen=True)
class ReportSummary:
    """What a call of :func:`write_report` wrote."""

    output: pathlib.Path
    datasets: int
    gallery_cells: int
    bytes: int
    seconds: float


def format_value(value, pattern) -> str:
    """A number as the report shows it; ``–`` for a missing one (null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return pattern.format(value)


def value_cell(field, value, pattern) -> str:
    """A ``<td>`` showing ``value`` formatted, with the exact value in ``data-value`` (for browser tests)."""
    data = "" if value is None else repr(value)
    return f'<td data-field="{field}" data-value="{data}">{format_value(value, pattern)}</td>'


def _headline_head(first, second):
    head = "".join(f"<th>{label}</th>" for _, label, _ in HEADLINE_FIELDS)
    return f'<tr><th class="key">{first}</th><th class="key">{second}</th>{head}</tr>'


def _headline_row(kind, name, key_attribute, key, row):
    cells = "".join(value_cell(field, row[field], pattern) for field, _, pattern in HEADLINE_FIELDS)
    return (f'<tr class="{kind}" data-dataset="{html.escape(name)}" {key_attribute}="{html.escape(str(key))}">'
            f'<td class="key">{html.escape(name)}</td><td class="key">{html.escape(str(key))}</td>{cells}</tr>')


def _headline(stats):
    body = []
    overall_rows = {row["dataset"]: row for row in stats.headline}
    for name in (n for n in stats.datasets if n in overall_rows):  # in the order given
        overall = overall_rows[name]
        rows = [("all", "all", overall)] + [
            ("target", r["target_name"], r) for r in stats.per_target if r["dataset"] == name
        ]
        body.extend(_headline_row(kind, name, "data-target", target, row) for kind, target, row in rows)
    return (
        f'<p>CAM method: <b class="method">{html.escape(stats.method)}</b></p>'
        f'<table class="headline">{_headline_head("dataset", "target")}{"".join(body)}</table>'
        f'<p class="note">Grad-CAMO: share of the CAM\'s attention inside the cell\'s '
        "mask (1 = all on the cell). The Grad-CAMO paper found about 30% of single-cell profiles above 0.5. "
        f"Medians and shares are over non-NaN scores (an empty CAM gives NaN). {METRICS_NOTE}</p>{_methods(stats)}"
    )


def _methods(stats):
    """Every method scored, side by side (only when a dataset holds several): does the verdict hold?"""
    if len({row["method"] for row in stats.per_method}) < 2:
        return ""
    rows = "".join(_headline_row("method", row["dataset"], "data-method", row["method"], row) for row in stats.per_method)
    return (f'<h3>Every CAM method scored</h3><table class="methods">{_headline_head("dataset", "method")}{rows}'
            f'</table><p class="note">All targets together. The rest of the report shows {html.escape(stats.method)} '
            "(choose another with --method).</p>")


def _per_dataset(stats, render):
    blocks = [f'<div class="dataset"><h3>{html.escape(name)}</h3>{render(name)}</div>' for name in stats.datasets]
    return f'<div class="row">{"".join(blocks)}</div>'


def _hover(name, row):
    parts = [f"median {format_value(row['median_grad_camo'], '{:.3f}')}", counted(row['cells'], 'cell'),
             f"{format_value(row['share_above_half'], '{:.0%}')} > 0.5", f"{row['nan_scores']} NaN"]
    return f"{name}: " + ", ".join(parts)


def _plate_maps(name, directory, manifest, method):
    targets = manifest["parameters"].get("targets") or [-1]
    wells, images = well_stats(directory, targets, method)
    groups = {}
    for row in wells:
        groups.setdefault((row.get("target_name"), row["Metadata_Plate"]), []).append(row)
    figures = []
    for (target, plate), rows in groups.items():
        positions = {parse_well(r["Metadata_Well"]): r for r in rows if parse_well(r["Metadata_Well"])}
        n_rows, n_columns = plate_shape(positions)
        cells = {p: (r["median_grad_camo"], _hover(r["Metadata_Well"], r)) for p, r in positions.items()}
        title = f"plate {plate}" + (f", target {target}" if target is not None else "")
        figures.append(
            f'<figure class="plate" data-dataset="{html.escape(name)}" data-plate="{html.escape(plate)}" '
            f'data-target="{html.escape(str(target or ""))}" data-wells="{n_rows * n_columns}">'
            f'{plate_svg(cells, [row_name(i) for i in range(n_rows)], n_columns, label=title)}'
            f"<figcaption>{html.escape(title)}: {n_rows * n_columns}-well layout</figcaption></figure>"
        )
    if images:
        rows = "".join(
            f"<tr><td class='key'>{html.escape(r['Metadata_Image'])}</td><td class='key'>"
            f"{html.escape(str(r.get('target_name') or ''))}</td><td>{r['cells']}</td>"
            f"<td>{format_value(r['median_grad_camo'], '{:.3f}')}</td></tr>"
            for r in images
        )
        figures.append(
            "<table class='images'><tr><th class='key'>image</th><th class='key'>target</th><th>cells</th>"
            f"<th>median Grad-CAMO</th></tr>{rows}</table>"
        )
    return "".join(figures)


def _confidence(stats, name):
    density = stats.density.get(name)
    if density is None:
        return "<p class='note'>no scored cells</p>"
    share = stats.confident_elsewhere[name]
    return (
        f"{density_svg(density, label=f'{name}: Grad-CAMO against prob_target')}"
        f"<p class='note'>{share:.1%} of the cells are predicted with p &gt; {CONFIDENT} while Grad-CAMO &lt; 0.5 "
        "(dashed box): confident, and looking elsewhere.</p>"
    )


def _galleries(galleries):
    parts = []
    for gallery in galleries:
        images = "".join(
            f'<img src="{uri}" alt="{html.escape(alt)}" title="{html.escape(alt)}">' for alt, uri in gallery.images
        ) or "<p class='note'>no cells</p>"
        parts.append(f"<h4>{html.escape(gallery.kind)}</h4><div class='strip'>{images}</div>")
    return "".join(parts)


def _provenance(directory, manifest):
    parameters = manifest["parameters"]
    rows = [
        ("directory", str(directory)),
        ("model sha256", parameters.get("model_sha256")),
        ("model file", manifest.get("model", "not recorded")),
        ("target layer", parameters.get("target_layer")),
        ("convention", parameters.get("convention")),
        ("methods scored", ", ".join(parameters.get("methods") or ["gradcam"])),
        ("targets", parameters.get("targets")),
        ("channels", parameters.get("channels") or "all"),
        ("labels", parameters.get("labels") or "the only label image"),
        ("timepoint", parameters.get("timepoint")),
        ("crop shape", parameters.get("crop_shape")),
        ("inputs", ", ".join(parameters.get("inputs") or [])),
        ("gradcamo version", manifest.get("gradcamo_version")),
        ("scored", f"{manifest.get('started')} to {manifest.get('finished') or 'not finished'}"),
        ("complete", incompleteness(manifest) or "yes"),
    ]
    body = "".join(f"<tr><th class='key'>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='provenance'>{body}</table>"


def _check_report_options(output, gallery):
    check_whole_number(gallery, "--gallery", minimum=0)
    if output.is_dir():
        raise InputError(f"-o {output}: is a directory; expected a file name such as report.html")
    if not output.parent.is_dir():
        raise InputError(f"-o {output}: the directory {output.parent} does not exist")


def write_report(paths, output, *, gallery=16, models=(), input_map=None, progress=False,
                 method=None) -> ReportSummary:
    """Write one self-contained HTML report about one or several score datasets.

    Parameters
    ----------
    paths : sequence of path-like
        Score dataset directories, shown side by side in this order.
    output : path-like
        The HTML file to write.
    gallery : int
        Cells per gallery (lowest, highest, random sample) per dataset; 0 for none
        (then no model file or input is needed).
    models : sequence of path-like
        Model files to choose from by sha256, for datasets whose manifest names none.
    input_map : dict of str to str, optional
        ``{OLD: NEW}`` for inputs that moved since scoring.
    progress : bool
        Show the gallery cells recomputed, cells/s and ETA on stderr.
    method : str, optional
        The CAM method the figures and galleries show; default the first method the first
        dataset scored that every dataset holds. A table compares all scored methods.

    Returns
    -------
    ReportSummary

    Raises
    ------
    InputError
        A path is not a score dataset, a bad option, a ``method`` a dataset does not hold,
        or (with galleries) a model file or an input that is not found or changed. Nothing
        is written then.
    """
    started = time.time()
    output = pathlib.Path(output)
    _check_report_options(output, gallery)
    stats = report_stats(paths, method)
    manifests = {name: read_manifest(path) for name, path in stats.datasets.items()}
    sources = {
        name: open_source(path, models=models, input_map=input_map) for name, path in stats.datasets.items()
    } if gallery else {}
    selections = {
        name: select_galleries(path, gallery, stats.method) for name, path in stats.datasets.items()
    } if gallery else {}
    total = sum(t.num_rows for s in selections.values() for t in s.values())
    with cell_progress(progress) as bar, SessionCache() as sessions:
        task = bar.add_task("galleries", total=total)
        galleries = {
            name: render_galleries(sources[name], chosen, lambda n: bar.update(task, advance=n), sessions)
            for name, chosen in selections.items()
        }
    incomplete = "".join(  # datasets lacking rows (failed work units, a run not finished), said first
        f"<p class='incomplete'>{html.escape(name)} is incomplete: {html.escape(why)}</p>"
        for name, why in ((n, incompleteness(m)) for n, m in manifests.items()) if why
    )
    sections = [
        ("Headline", incomplete + _headline(stats)),
        *([("Causal checks: the cell alone, the context alone", causal)] if (causal := causal_section(stats, value_cell))
          else []),
        ("Grad-CAMO distribution per target", _per_dataset(
            stats, lambda n: histogram_svg(stats.histograms.get(n, {}), label=f"{n}: Grad-CAMO histogram"))),
        ("Plate map: median Grad-CAMO per well", colorbar_svg() + _per_dataset(
            stats, lambda n: _plate_maps(n, stats.datasets[n], manifests[n], stats.method))),
        ("Grad-CAMO against the probability of the target class", _per_dataset(
            stats, lambda n: _confidence(stats, n))),
        (f"Galleries of {stats.method} CAMs (mask outlined in white, CAM as heat map)", _per_dataset(
            stats, lambda n: _galleries(galleries.get(n, [])) or "<p class='note'>--gallery 0</p>")),
        ("Provenance", _per_dataset(stats, lambda n: _provenance(stats.datasets[n], manifests[n]))),
    ]
    names = ", ".join(stats.datasets)
    size = write_page(output, title=f"gradcamo report: {names}", heading="Is the model looking at the cells?",
                      note=f"gradcamo {gradcamo.__version__} report of {names}", sections=sections)
    return ReportSummary(output, len(stats.datasets), total, size, time.time() - started)


def write_page(path, *, title, heading, note, sections, extra_style="") -> int:
    """Write one self-contained HTML page (atomically) and return its size in bytes.

    Parameters
    ----------
    path : path-like
    title, heading, note : str
        Plain text: the window title, the ``<h1>`` and the line under it (", made <UTC time>." is appended).
    sections : sequence of (str, str)
        (plain-text title, HTML content); each becomes ``<section id="<first word of the title>">``.
    extra_style : str
        CSS appended to :data:`STYLE`.
    """
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    body = "".join(
        f'<section id="{title.split()[0].lower()}"><h2>{html.escape(title)}</h2>{content}</section>'
        for title, content in sections
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}{extra_style}</style></head>"
        f"<body><h1>{html.escape(heading)}</h1><p class='note'>{html.escape(note)}, made {now}.</p>{body}</body></html>"
    )
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return len(page.encode())
