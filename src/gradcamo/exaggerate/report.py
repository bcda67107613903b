"""``OUT/report.html`` of ``exaggerate``: one self-contained page, made with the report machinery of :mod:`gradcamo.visual`.

Rows of cells across the steps (PNG data URIs, one per cell, the channels as a composite
stretched once for all steps of the cell so that brightness changes stay visible, the measured
foreground outlined), the mean difference to step 0 per step and channel, plots of each
quantity against the step (median and interquartile band per group, SVG) and the table of
monotonic shares (:mod:`gradcamo.exaggerate.trends`).
"""

import base64
import html
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import gradcamo
from gradcamo.exaggerate.trends import GROUPS
from gradcamo.visual.colors import DIVERGING, apply_colormap
from gradcamo.visual.figures import trajectory_svg
from gradcamo.visual.overlay import BACKGROUND, CAPTION_COLOR, composite, draw_outline
from gradcamo.visual.report import format_value, value_cell, write_page
from gradcamo.wording import counted

TILE_PIXELS = 64
"""A decoded crop's longer side is scaled (nearest neighbour) to about this many pixels."""
OUTLINE = (255, 214, 0)
LABEL_BAND = 16
FONT_SIZE = 11
EXTRA_STYLE = """
table.cells td { padding: 2px 6px; vertical-align: middle; } table.cells img { display: block; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
"""


def _planes(array):
    """(C, D, H, W) -> (C, H, W) by the maximum over z; 2D unchanged."""
    return array.max(axis=1) if array.ndim == 4 else array


def _png_uri(pixels):
    """A data URI of an (H, W, 3) float image in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _with_labels(tiles, labels, scale):
    """Tiles (H, W, 3) side by side under a band of labels, 2 px apart, as one float image."""
    height, width = tiles[0].shape[:2]
    gap = 2
    canvas = Image.new("RGB", (len(tiles) * (width + gap) - gap, height + LABEL_BAND), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    for index, (tile, label) in enumerate(zip(tiles, labels)):
        x = index * (width + gap)
        canvas.paste(Image.fromarray((tile * 255).round().astype(np.uint8)), (x, LABEL_BAND))
        draw.text((x + 2, 1), label, fill=CAPTION_COLOR, font=font)
    return np.asarray(canvas, dtype=np.float64) / 255


def cell_strip(decoded, masks, steps) -> str:
    """One cell across the steps: composite of the channels (one stretch for all steps), foreground outlined.

    Parameters
    ----------
    decoded : (S, C, [D,] H, W) float ndarray
    masks : (S, H, W) bool ndarray
    steps : (S,) float ndarray

    Returns
    -------
    str
        A PNG data URI.
    """
    planes = np.stack([_planes(image) for image in decoded])  # (S, C, H, W)
    rgb = composite(np.concatenate(list(planes), axis=-1))  # one stretch over the whole strip
    width = planes.shape[-1]
    scale = max(1, round(TILE_PIXELS / max(planes.shape[-2:])))
    tiles = []
    for index, mask in enumerate(masks):
        tile = np.kron(rgb[:, index * width:(index + 1) * width], np.ones((scale, scale, 1)))
        draw_outline(tile, mask, scale, OUTLINE)
        tiles.append(tile)
    return _png_uri(_with_labels(tiles, [f"{s:+g}" for s in steps], scale))


def difference_strip(mean_difference, steps) -> tuple[str, float]:
    """Mean difference to step 0 of each step (columns) and channel (rows), on one symmetric blue-white-red scale.

    Returns
    -------
    uri : str
        A PNG data URI.
    limit : float
        The value drawn full red (its negative full blue).
    """
    planes = np.stack([_planes(image) for image in mean_difference])  # (S, C, H, W)
    limit = float(np.abs(planes).max()) or 1.0
    scale = max(1, round(TILE_PIXELS / max(planes.shape[-2:])))
    rows = []
    for channel in range(planes.shape[1]):
        tiles = [np.kron(apply_colormap(0.5 + 0.5 * plane[channel] / limit, DIVERGING), np.ones((scale, scale, 1)))
                 for plane in planes]
        rows.append(_with_labels(tiles, [f"c{channel} {s:+g}" for s in steps], scale))
    return _png_uri(np.concatenate(rows, axis=0)), limit


def _headline(record):
    auroc = format_value(record.get("auroc"), "{:.3f}")
    folds = record.get("folds") or {}
    lines = [
        ("direction", record["direction"]),
        ("high group", f"{record['high']} ({counted(record['cells']['high'], 'cell', ',')}, "
                       f"{record['trajectory_cells']['high']} drawn)"),
        ("low group", f"{record['low']} ({counted(record['cells']['low'], 'cell', ',')}, "
                      f"{record['trajectory_cells']['low']} drawn)"),
        ("AUROC", auroc + (f" ({folds.get('scheme')}, {folds.get('folds')} folds)" if folds else "")),
        ("note", record.get("auroc_note") or ""),
        ("steps (SD)", ", ".join(f"{s:g}" for s in record["steps"])),
        ("classifier", record.get("model") or "none (-m not given)"),
    ]
    body = "".join(
        f"<tr><th class='key'>{html.escape(k)}</th><td class='key' data-field='{html.escape(k)}'>{html.escape(str(v))}</td></tr>"
        for k, v in lines if v != ""
    )
    return f"<table class='headline'>{body}</table>"


def _cells(table, decoded, masks, steps):
    rows = []
    keys = table.select(["cell_index", "group", "Metadata_Well", "Metadata_Image", "Metadata_ObjectNumber"])
    firsts = {row["cell_index"]: row for row in keys.to_pylist()}
    for index in range(len(decoded)):
        row = firsts[index]
        place = row["Metadata_Well"] or row["Metadata_Image"]
        alt = f"cell {index} ({row['group']}): {place} #{row['Metadata_ObjectNumber']}"
        rows.append(
            f"<tr data-group='{row['group']}'><td class='key'>{html.escape(alt)}</td>"
            f"<td><img src='{cell_strip(decoded[index], masks[index], steps)}' alt='{html.escape(alt)}'></td></tr>"
        )
    return f"<table class='cells'>{''.join(rows)}</table>"


def _quartiles(values):
    """(3, S): 25th, 50th and 75th percentiles of each column's finite values (NaN for a column without any)."""
    out = np.full((3, values.shape[1]), np.nan)
    for column in range(values.shape[1]):
        finite = values[:, column][np.isfinite(values[:, column])]
        if len(finite):
            out[:, column] = np.percentile(finite, [25, 50, 75])
    return out


def _plots(table, shares, steps, n_cells):
    names = list(dict.fromkeys(row["property"] for row in shares))
    groups = np.asarray(table["group"].to_pylist()).reshape(n_cells, len(steps))[:, 0]
    figures = []
    for name in names:
        values = table[name].to_numpy().reshape(n_cells, len(steps))
        series = {}
        for group in ("high", "low"):
            chosen = values[groups == group]
            if len(chosen):
                series[group] = _quartiles(chosen)
        figures.append(f"<figure data-property='{html.escape(name)}'>"
                       f"{trajectory_svg(np.asarray(steps), series, y_label=name, label=name)}</figure>")
    return f"<div class='plots'>{''.join(figures)}</div>"


def _monotonic_table(shares):
    """One row per quantity: its tolerance, then the shares rising and falling in all cells, high and low."""
    by_quantity = {}
    for row in shares:
        by_quantity.setdefault(row["property"], {})[row["group"]] = row
    head = "".join(f"<th>{group} {arrow}</th>" for group in GROUPS for arrow in ("↑", "↓"))
    body = []
    for name, rows in by_quantity.items():
        cells = "".join(
            value_cell(f"{group}_{way}", rows[group][way], "{:.0%}") for group in GROUPS
            for way in ("increasing", "decreasing")
        )
        body.append(f"<tr data-property='{html.escape(name)}'><td class='key'>{html.escape(name)}</td>"
                    f"{value_cell('tolerance', rows['all']['tolerance'], '{:.3g}')}{cells}</tr>")
    cells = {group: shares[[r["group"] for r in shares].index(group)]["cells"] for group in GROUPS}
    return (
        f"<table class='monotonic'><tr><th class='key'>quantity</th><th>tolerance</th>{head}</tr>{''.join(body)}"
        f"</table><p class='note'>Share of the drawn cells ({cells['all']}: {cells['high']} high, {cells['low']} low) "
        "whose value never falls (↑) or never rises (↓) by more than the tolerance from one step to the next, and "
        "changes by more than it from the first step to the last; a NaN anywhere counts as neither. The tolerance "
        "is 1% of the quantity's range over all cells and steps.</p>"
    )


def write_exaggerate_report(path, record, table, shares, decoded, masks, mean_difference) -> None:
    """Write the report.

    Parameters
    ----------
    path : path-like
    record : dict
        What ``direction.json`` holds.
    table : pyarrow.Table
        ``trajectories.parquet``'s rows (cell-major).
    shares : list of dict
        :func:`gradcamo.exaggerate.trends.monotonic_shares`.
    decoded : (cells, steps, C, [D,] H, W) float32 ndarray
    masks : (cells, steps, H, W) bool ndarray
    mean_difference : (steps, C, [D,] H, W) float32 ndarray
        :func:`gradcamo.exaggerate.trajectories.differences`.
    """
    steps = np.asarray(record["steps"])
    difference_uri, limit = difference_strip(mean_difference, steps)
    sections = [
        ("Direction", _headline(record)),
        ("Monotonic changes along the direction", _monotonic_table(shares)),
        ("Each quantity against the step (median and interquartile range per group)",
         _plots(table, shares, steps, len(decoded))),
        ("Mean difference to step 0", f"<img class='difference' src='{difference_uri}' alt='mean difference'>"
         f"<p class='note'>Mean over the drawn cells of each decoded image minus the cell's own (step 0), per "
         f"channel (rows); blue below, red above, full colour at ±{limit:.4g} (raw intensity).</p>"),
        ("Cells across the steps (foreground outlined)", _cells(table, decoded, masks, steps)),
    ]
    write_page(path, title=f"gradcamo exaggerate: {record['high']} vs {record['low']}",
               heading="What moves along the direction from low to high?", note=f"gradcamo {gradcamo.__version__}",
               sections=sections, extra_style=EXTRA_STYLE)
