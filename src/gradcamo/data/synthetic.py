"""Synthetic cell images with label masks: small, seeded, 2D or 3D."""

import numpy as np

CHANNEL_NAMES = ("nucleus", "er", "rna", "actin_golgi", "mito")


def _place_centres(generator, spatial_shape, n_cells, radius):
    """Cell centres at least ~1.6 radii apart (fewer if the image is too crowded)."""
    low = np.full(len(spatial_shape), radius * 0.6)
    high = np.asarray(spatial_shape, dtype=float) - radius * 0.6
    if len(spatial_shape) == 3:
        low[0], high[0] = 0.0, float(spatial_shape[0])
    centres = []
    for _ in range(n_cells * 50):
        candidate = generator.uniform(low, high)
        if all(np.linalg.norm((candidate - c)[-2:]) > 1.6 * radius for c in centres):
            centres.append(candidate)
            if len(centres) == n_cells:
                break
    return np.asarray(centres).reshape(-1, len(spatial_shape))


def make_cells(spatial_shape, n_cells, *, n_channels=5, radius=6.0, seed=0):
    """Make a multi-channel image of roundish cells and its label image.

    Parameters
    ----------
    spatial_shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    n_cells : int
        Cells wanted; fewer are placed when they do not fit.
    n_channels : int
        Image channels (textures: nucleus, cytoplasm-like, ...).
    radius : float
        Mean cell radius in pixels (in y and x; cells span the whole z range in 3D).
    seed : int

    Returns
    -------
    image : (n_channels, *spatial_shape) uint16 ndarray
    labels : spatial_shape uint32 ndarray
        0 for background, 1..n for cells.

    Examples
    --------
    >>> image, labels = make_cells((32, 32), 3, n_channels=2, radius=5, seed=1)
    >>> image.shape, labels.shape, int(labels.max())
    ((2, 32, 32), (32, 32), 3)
    """
    generator = np.random.default_rng(seed)
    spatial_shape = tuple(int(n) for n in spatial_shape)
    centres = _place_centres(generator, spatial_shape, n_cells, radius)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in spatial_shape], indexing="ij"), axis=-1)
    labels = np.zeros(spatial_shape, dtype=np.uint32)
    nearest = np.full(spatial_shape, np.inf)
    nucleus = np.zeros(spatial_shape, dtype=bool)
    for cell_id, centre in enumerate(centres, start=1):
        cell_radius = radius * generator.uniform(0.8, 1.2)
        offset = (grid - centre)[..., -2:]
        distance = np.sqrt((offset**2).sum(axis=-1)) / cell_radius
        inside = (distance < 1.0) & (distance < nearest)
        labels[inside] = cell_id
        nearest = np.where(inside, distance, nearest)
        nucleus |= inside & (distance < 0.45)
    cell = labels > 0
    image = generator.normal(100.0, 10.0, (n_channels, *spatial_shape))
    for channel in range(n_channels):
        texture = generator.gamma(2.0, 150.0 * (channel + 1), spatial_shape)
        image[channel] += np.where(cell, texture, 0.0)
    image[0] += np.where(nucleus, 2000.0, 0.0)
    return np.clip(image, 0, 65535).astype(np.uint16), labels
