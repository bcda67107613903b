"""One PNG per cell: the channels as a composite, the CAM as a translucent heat map, the mask outline.

3D crops show a maximum projection along z and the central z slice side by side.
"""

import io
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gradcamo.visual.colors import CHANNEL_COLORS, INFERNO, apply_colormap

PANEL_PIXELS = 192
"""A panel's longer side is scaled (nearest neighbour) to about this many pixels."""
CAM_OPACITY = 0.75
"""Opacity of the heat map where the CAM is at its maximum (it fades to 0 with the CAM)."""
BASE_BRIGHTNESS = 0.6
"""The composite is dimmed under the heat map so that the heat map's colours stand out."""
HEAT_RANGE = (0.25, 0.92)
"""Part of the inferno map used for the heat map (its ends are near black and near white)."""
OUTLINE = (255, 255, 255)
CAPTION_COLOR = (230, 230, 230)
BACKGROUND = (24, 24, 28)
FONT_SIZE = 13
PERCENTILES = (0.5, 99.5)


def composite(image) -> np.ndarray:
    """Channels blended into RGB, each stretched between its 0.5 and 99.5 percentiles.

    Parameters
    ----------
    image : (C, *S) float ndarray

    Returns
    -------
    rgb : S + (3,) float64 ndarray in [0, 1]
        Each RGB component is divided by half the sum of the channel colours' components
        (when above 1), so that many bright channels do not all saturate to white.
    """
    colors = np.ones((1, 3)) if len(image) == 1 else CHANNEL_COLORS[np.arange(len(image)) % len(CHANNEL_COLORS)]
    rgb = np.zeros(image.shape[1:] + (3,))
    for color, channel in zip(colors, image.astype(np.float64)):
        low, high = np.percentile(channel, PERCENTILES)
        scaled = np.clip((channel - low) / (high - low), 0, 1) if high > low else np.zeros_like(channel)
        rgb += scaled[..., None] * color
    return np.clip(rgb / np.maximum(1.0, colors.sum(axis=0) / 2), 0, 1)


def _outline(mask):
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def draw_outline(pixels, mask, scale, color=OUTLINE) -> None:
    """Paint the outline of ``mask`` (H, W), scaled ``scale`` times, in ``color`` (0-255 RGB) on
    ``pixels`` ((H*scale, W*scale, 3) floats in [0, 1]) in place."""
    pixels[_outline(np.kron(mask, np.ones((scale, scale), dtype=bool)))] = np.asarray(color) / 255


def _panel(rgb, cam, mask, scale):
    """One 2D panel: composite under the heat map, mask outline on top, scaled by ``scale``."""
    alpha = CAM_OPACITY * cam[..., None]
    heat = apply_colormap(HEAT_RANGE[0] + (HEAT_RANGE[1] - HEAT_RANGE[0]) * cam, INFERNO)
    blended = BASE_BRIGHTNESS * rgb * (1 - alpha) + heat * alpha
    pixels = np.kron(blended, np.ones((scale, scale, 1)))
    draw_outline(pixels, mask, scale)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def _panels(image, mask, cam):
    """(label, rgb, cam, mask) per panel: one in 2D, max projection and central slice in 3D."""
    peak = float(cam.max())
    scaled = cam / peak if peak > 0 else np.zeros_like(cam)
    rgb = composite(image)
    if mask.ndim == 2:
        return [("", rgb, scaled, mask)]
    middle = mask.shape[0] // 2
    return [
        ("max over z", rgb.max(axis=0), scaled.max(axis=0), mask.any(axis=0)),
        (f"z {middle + 1}/{mask.shape[0]}", rgb[middle], scaled[middle], mask[middle]),
    ]


def caption_lines(row) -> list[str]:
    """Where the cell is, what was explained and how it scored."""
    place = row.get("Metadata_Well") or row.get("Metadata_Image")
    site = f" site {row['Metadata_Site']}" if row.get("Metadata_Well") else ""
    score = row.get("grad_camo")
    score_text = "NaN (empty CAM)" if score is None or math.isnan(score) else f"{score:.2f}"
    return [
        f"{place}{site} #{row['Metadata_ObjectNumber']}",
        f"{row['target_name']} p={row['prob_target']:.2f}",
        f"Grad-CAMO {score_text}",
    ]


def render_overlay(image, mask, cam, lines, *, panel_pixels=PANEL_PIXELS) -> bytes:
    """The overlay of one cell as PNG bytes.

    Parameters
    ----------
    image : (C, *S) float ndarray
        The crop as fed to the model.
    mask : S bool ndarray
    cam : S float ndarray
        The CAM at crop resolution (shown relative to its maximum).
    lines : sequence of str
        Caption lines under the panels.
    panel_pixels : int
        About the size of a panel's longer side.

    Returns
    -------
    bytes
    """
    panels = _panels(image, mask, cam)
    scale = max(1, round(panel_pixels / max(mask.shape[-2:])))
    tiles = [(label, _panel(rgb, c, m, scale)) for label, rgb, c, m in panels]
    font = ImageFont.load_default(size=FONT_SIZE)
    line_height = FONT_SIZE + 4
    gap = 4
    width = sum(tile.width for _, tile in tiles) + gap * (len(tiles) - 1)
    height = tiles[0][1].height + line_height * len(lines) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, tile in tiles:
        canvas.paste(tile, (x, 0))
        if label:
            draw.text((x + 3, 2), label, fill=OUTLINE, font=font, stroke_width=2, stroke_fill=BACKGROUND)
        x += tile.width + gap
    for index, line in enumerate(lines):
        draw.text((3, tiles[0][1].height + gap + index * line_height), line, fill=CAPTION_COLOR, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def batch_overlays(batch, rows, **options) -> Iterator[tuple[int, bytes]]:
    """``(index, png bytes)`` for each row of a :class:`~gradcamo.visual.recompute.CamBatch`.

    ``rows`` holds the selection's columns; ``options`` go to :func:`render_overlay`.
    """
    for k, index in enumerate(batch.rows):
        row = {name: values[index] for name, values in rows.items()}
        yield index, render_overlay(batch.image[k], batch.mask[k], batch.cam[k], caption_lines(row), **options)
