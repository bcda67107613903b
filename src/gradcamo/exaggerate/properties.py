"""Shape and intensity properties of decoded cells, measured on a thresholded foreground.

The foreground of one image: Otsu's threshold of the maximum over its channels, each first
stretched to [0, 1] between its 1st and 99.9th percentiles (so a pixel bright in any channel
counts, and a bright nucleus does not push the threshold above the cytoplasm; a 3D crop is
measured on its maximum projection along z), holes filled (a bright rim around a dimmer
interior is one cell, not a ring), and of its connected components the one under the crop's
centre (the cell the crop was cut around), else the largest.
"""

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

SHAPE_PROPERTIES = ("area", "perimeter", "solidity", "eccentricity", "protrusion")
STRETCH_PERCENTILES = (1.0, 99.9)
RIM_WIDTH = 2
"""Pixels of the foreground within this many steps (4-connected) of the background form its rim."""


def property_names(n_channels) -> list[str]:
    """Column names of :func:`measure`, in order."""
    return list(SHAPE_PROPERTIES) + [
        f"{kind}_c{channel}" for kind in ("intensity_inside", "intensity_rim") for channel in range(n_channels)
    ]


def _stretch(channel):
    """A channel scaled to [0, 1] between its 1st and 99.9th percentiles (all 0 when flat)."""
    low, high = np.percentile(channel, STRETCH_PERCENTILES)
    return np.clip((channel - low) / (high - low), 0, 1) if high > low else np.zeros_like(channel)


def foreground(image) -> np.ndarray:
    """The cell's foreground mask of one image.

    Parameters
    ----------
    image : (C, H, W) or (C, D, H, W) float ndarray

    Returns
    -------
    mask : (H, W) bool ndarray
        Empty when the image is constant.
    """
    plane = np.max([_stretch(channel) for channel in image], axis=0)
    if plane.ndim == 3:
        plane = plane.max(axis=0)
    if plane.max() <= plane.min():
        return np.zeros(plane.shape, dtype=bool)
    mask = ndimage.binary_fill_holes(plane > threshold_otsu(plane))
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    centre = components[tuple(n // 2 for n in plane.shape)]
    chosen = centre if centre else 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return components == chosen


def measure(images) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Properties of each decoded image.

    Parameters
    ----------
    images : (N, C, H, W) or (N, C, D, H, W) float ndarray

    Returns
    -------
    properties : dict of str to (N,) float64 ndarray
        ``area`` (pixels), ``perimeter`` (pixels, scikit-image's 4-connected estimate),
        ``solidity`` (area / convex hull area), ``eccentricity`` (of the ellipse with the same
        second moments), ``protrusion`` (1 - solidity: the share of the convex hull that the
        cell leaves empty, which arms and spikes raise and a convex cell keeps at 0),
        ``intensity_inside_c{k}`` and ``intensity_rim_c{k}`` (mean of channel k over the
        foreground and over its rim, :data:`RIM_WIDTH`). NaN where the foreground is empty.
    masks : (N, H, W) bool ndarray
        The foregrounds.
    """
    images = np.asarray(images, dtype=np.float64)
    n, n_channels = images.shape[:2]
    planes = images.max(axis=2) if images.ndim == 5 else images
    values = {name: np.full(n, np.nan) for name in property_names(n_channels)}
    masks = np.stack([foreground(image) for image in images]) if n else np.zeros((0, *planes.shape[2:]), bool)
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        region = regionprops(mask.astype(np.uint8))[0]
        values["area"][i] = region.area
        values["perimeter"][i] = region.perimeter
        values["solidity"][i] = region.solidity
        values["eccentricity"][i] = region.eccentricity
        values["protrusion"][i] = 1.0 - region.solidity
        interior = ndimage.binary_erosion(mask, iterations=RIM_WIDTH, border_value=0)
        rim = mask & ~interior
        for channel in range(n_channels):
            values[f"intensity_inside_c{channel}"][i] = planes[i, channel][mask].mean()
            values[f"intensity_rim_c{channel}"][i] = planes[i, channel][rim].mean()
    return values, masks
