"""Small inline SVG figures for the report: histograms, a density map, plate maps, a colour bar.

Hand-written SVG keeps the report small and offline (no plotting library, no script): a
figure is a few kB, and ``<title>`` elements give the numbers on hover in any browser.
"""

import html

import numpy as np

from gradcamo.visual.colors import VIRIDIS, hex_color
from gradcamo.wording import counted

SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
EMPTY_WELL = "#e4e4e4"
AXIS = "#444"
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
MARGIN = (44, 10, 10, 34)
"""Left, top, right, bottom margins of a plot, in pixels."""


def _svg(width, height, body, label):
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">{"".join(body)}</svg>'
    )


def _text(x, y, content, *, anchor="middle", size=10, color=AXIS, extra=""):
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{color}"{extra}>'
        f"{html.escape(str(content))}</text>"
    )


def _axes(width, height, x_label, y_label, y_ticks, x_ticks=None):
    """Frame, ticks and labels of a unit-square plot; returns (body, to_x, to_y).

    Ticks are (position in [0, 1], label) pairs; the x ticks default to :data:`TICKS`.
    """
    left, top, right, bottom = MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_x(v):
        return left + v * plot_w

    def to_y(v):
        return top + (1 - v) * plot_h

    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="{AXIS}"/>']
    for value, name in x_ticks or [(tick, f"{tick:g}") for tick in TICKS]:
        body.append(_text(to_x(value), height - bottom + 12, name))
    for value, name in y_ticks:
        body.append(_text(left - 3, to_y(value) + 3, name, anchor="end"))
    body.append(_text(left + plot_w / 2, height - 4, x_label))
    body.append(_text(10, top + plot_h / 2, y_label, extra=f' transform="rotate(-90 10 {top + plot_h / 2:.1f})"'))
    return body, to_x, to_y


def histogram_svg(series, *, width=320, height=190, label="grad_camo histogram") -> str:
    """Step lines of the share of rows per bin of [0, 1], one per series, with a line at 0.5.

    Parameters
    ----------
    series : dict of str to (B,) int ndarray
        Counts per equal-width bin of [0, 1].
    """
    peak = max((counts.max() / max(counts.sum(), 1) for counts in series.values()), default=0) or 1.0
    ticks = [(v, f"{v * peak:.0%}") for v in (0.0, 0.5, 1.0)]
    body, to_x, to_y = _axes(width, height, "Grad-CAMO", "share of cells", ticks)
    body.append(f'<line x1="{to_x(0.5)}" x2="{to_x(0.5)}" y1="{to_y(0)}" y2="{to_y(1)}" stroke="#999" stroke-dasharray="3 3"/>')
    for index, (name, counts) in enumerate(series.items()):
        shares = counts / max(counts.sum(), 1) / peak
        edges = np.linspace(0, 1, len(counts) + 1)
        points = [(0.0, 0.0)]
        for low, high, share in zip(edges[:-1], edges[1:], shares):
            points += [(low, share), (high, share)]
        points.append((1.0, 0.0))
        path = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in points)
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8">'
            f"<title>{html.escape(name)}: {counted(int(counts.sum()), 'cell')}</title></polyline>"
        )
        body.append(_text(width - MARGIN[2] - 4, MARGIN[1] + 12 + 12 * index, name, anchor="end", color=color))
    return _svg(width, height, body, label)


def density_svg(counts, *, width=320, height=250, label="grad_camo against prob_target") -> str:
    """Cell counts on a grid of Grad-CAMO (x) by probability of the target (y), log-shaded.

    Parameters
    ----------
    counts : (B, B) int ndarray
        ``counts[i, j]``: cells with Grad-CAMO in bin ``i`` and prob_target in bin ``j``.
    """
    ticks = [(v, f"{v:g}") for v in TICKS]
    body, to_x, to_y = _axes(width, height, "Grad-CAMO", "prob_target", ticks)
    bins = counts.shape[0]
    scale = np.log1p(counts.max()) or 1.0
    for i, j in zip(*np.nonzero(counts)):
        x0, x1, y1, y0 = to_x(i / bins), to_x((i + 1) / bins), to_y(j / bins), to_y((j + 1) / bins)
        shade = hex_color(0.15 + 0.85 * np.log1p(counts[i, j]) / scale)
        body.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0 + 0.3:.1f}" height="{y1 - y0 + 0.3:.1f}" fill="{shade}">'
            f"<title>Grad-CAMO {i / bins:.2f}-{(i + 1) / bins:.2f}, p {j / bins:.2f}-{(j + 1) / bins:.2f}: "
            f"{counted(int(counts[i, j]), 'cell')}</title></rect>"
        )
    body.append(
        f'<rect x="{to_x(0)}" y="{to_y(1)}" width="{to_x(0.5) - to_x(0)}" height="{to_y(0.9) - to_y(1)}" '
        'fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 2"/>'
    )
    return _svg(width, height, body, label)


def plate_svg(wells, row_names, n_columns, *, label) -> str:
    """A plate laid out as on the bench: one ``rect.well`` per well, coloured by median Grad-CAMO.

    Parameters
    ----------
    wells : dict of (int, int) to (float or None, str)
        (row index, column index) -> (median Grad-CAMO, hover text). Wells not in the dict
        (or with a None median) are drawn grey.
    row_names : sequence of str
        Names of the rows (A, B, ...).
    n_columns : int
    """
    cell = max(9, min(26, 620 // n_columns))
    left, top = 22, 16
    body = []
    step = max(1, n_columns // 24)
    for column in range(0, n_columns, step):
        body.append(_text(left + (column + 0.5) * cell, top - 4, column + 1, size=9))
    row_step = max(1, len(row_names) // 16)
    for row in range(0, len(row_names), row_step):
        body.append(_text(left - 4, top + (row + 0.7) * cell, row_names[row], anchor="end", size=9))
    for row in range(len(row_names)):
        for column in range(n_columns):
            median, hover = wells.get((row, column), (None, f"{row_names[row]}{column + 1:02d}: not scored"))
            fill = EMPTY_WELL if median is None else hex_color(median)
            body.append(
                f'<rect class="well" x="{left + column * cell + 1}" y="{top + row * cell + 1}" width="{cell - 2}" '
                f'height="{cell - 2}" rx="2" fill="{fill}"><title>{html.escape(hover)}</title></rect>'
            )
    return _svg(left + n_columns * cell + 4, top + len(row_names) * cell + 4, body, label)


def colorbar_svg(*, width=200, height=30, label="median Grad-CAMO") -> str:
    """The plate map's colour scale, 0 to 1, with its label on the right."""
    stops = "".join(
        f'<stop offset="{v:.2f}" stop-color="{hex_color(v)}"/>' for v in np.linspace(0, 1, len(VIRIDIS))
    )
    body = [
        f'<defs><linearGradient id="gradcamo-scale">{stops}</linearGradient></defs>',
        f'<rect x="10" y="2" width="{width - 20}" height="12" fill="url(#gradcamo-scale)"/>',
    ]
    body += [_text(10 + v * (width - 20), 26, f"{v:g}") for v in (0, 0.5, 1)]
    body.append(_text(width, 12, label, anchor="start"))
    return _svg(width + 110, height, body, label)


def trajectory_svg(steps, series, *, y_label, width=300, height=190, label="trajectory") -> str:
    """Median (line) and interquartile band of a quantity at each step, one colour per series.

    Parameters
    ----------
    steps : (S,) float ndarray
        The x values, increasing.
    series : dict of str to (3, S) float ndarray
        Name -> (25th percentile, median, 75th percentile) at each step; NaN gaps are skipped.
    y_label : str
    """
    finite = np.concatenate([values[np.isfinite(values)] for values in series.values()] + [np.zeros(0)])
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    span = steps[-1] - steps[0] or 1.0

    def unit_x(value):
        return (value - steps[0]) / span

    def unit_y(value):
        return (value - low) / (high - low)

    x_ticks = [(unit_x(v), f"{v:g}") for v in steps] if len(steps) <= 11 else [(unit_x(v), f"{v:g}") for v in steps[::2]]
    digits = max(0, 2 - int(np.floor(np.log10(high - low))))
    y_ticks = [(unit_y(v), f"{v:,.{digits}f}") for v in np.linspace(low, high, 3)]
    body, to_x, to_y = _axes(width, height, "step (SD)", y_label, y_ticks, x_ticks)
    for index, (name, (q25, median, q75)) in enumerate(series.items()):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        ok = np.isfinite(q25) & np.isfinite(q75)
        band = [(unit_x(x), unit_y(y)) for x, y in zip(steps[ok], q75[ok])]
        band += [(unit_x(x), unit_y(y)) for x, y in zip(steps[ok][::-1], q25[ok][::-1])]
        if band:
            points = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in band)
            body.append(f'<polygon points="{points}" fill="{color}" fill-opacity="0.18" stroke="none"/>')
        ok = np.isfinite(median)
        line = " ".join(f"{to_x(unit_x(x)):.1f},{to_y(unit_y(y)):.1f}" for x, y in zip(steps[ok], median[ok]))
        hover = ", ".join(f"{x:g}: {y:.4g}" for x, y in zip(steps[ok], median[ok]))
        body.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.8">'
                    f"<title>{html.escape(name)} median by step: {html.escape(hover)}</title></polyline>")
        body.append(_text(MARGIN[0] + 4, MARGIN[1] + 12 + 12 * index, name, anchor="start", color=color))
    return _svg(width, height, body, label)


__all__ = ["colorbar_svg", "density_svg", "histogram_svg", "plate_svg", "trajectory_svg"]
