"""Colour maps (matplotlib's inferno and viridis, ColorBrewer's RdBu, sampled at nine points) and channel colours."""

import numpy as np

INFERNO = np.array([
    (0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84),
    (228, 90, 49), (249, 142, 9), (249, 203, 53), (252, 255, 164),
]) / 255.0
VIRIDIS = np.array([
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
]) / 255.0
DIVERGING = np.array([
    (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43),
]) / 255.0
"""ColorBrewer's RdBu reversed: 0 blue (negative), 0.5 white (zero), 1 red (positive); for signed differences."""
CHANNEL_COLORS = np.array([
    (0.25, 0.45, 1.0), (0.1, 1.0, 0.1), (1.0, 0.15, 0.15), (1.0, 0.85, 0.1), (1.0, 0.2, 1.0), (0.1, 1.0, 1.0),
])
"""Composite colour of channel 0, 1, ... (blue, green, red, yellow, magenta, cyan, then again)."""


def apply_colormap(values, colormap=INFERNO) -> np.ndarray:
    """Map values in [0, 1] to RGB by linear interpolation between the colour map's samples.

    Parameters
    ----------
    values : ndarray of float
        Clipped to [0, 1]; NaN maps to 0.
    colormap : (K, 3) float ndarray

    Returns
    -------
    rgb : values.shape + (3,) float64 ndarray in [0, 1]

    Examples
    --------
    >>> apply_colormap(np.array([0.0, 1.0]), VIRIDIS).round(3).tolist()
    [[0.267, 0.004, 0.329], [0.992, 0.906, 0.145]]
    """
    position = np.nan_to_num(np.clip(values, 0.0, 1.0)) * (len(colormap) - 1)
    low = np.minimum(np.floor(position).astype(int), len(colormap) - 2)
    frac = (position - low)[..., None]
    return colormap[low] * (1.0 - frac) + colormap[low + 1] * frac


def hex_color(value, colormap=VIRIDIS) -> str:
    """``#rrggbb`` of one value in [0, 1]."""
    r, g, b = (int(round(255 * c)) for c in apply_colormap(np.asarray(value, dtype=float), colormap))
    return f"#{r:02x}{g:02x}{b:02x}"
