"""Fast synthetic HCS plates for throughput benchmarks: grid-jittered cells, O(pixels) per field.

``gradcamo.data.synthetic.make_cells`` places cells by rejection against every earlier cell
(quadratic in cells per field), fine for tests, too slow for a plate of a quarter of a million
cells. Here each cell owns one square of a grid, its centre jittered inside it, so no two
overlap and a whole field's label image is computed with a handful of array operations.
"""

import numpy as np

from gradcamo.data.write import write_plate


def grid_cells(spatial_shape, spacing, *, n_channels=5, radius=None, seed=0):
    """One 2D or 3D field of roundish cells on a jittered grid.

    Parameters
    ----------
    spatial_shape : (Y, X) or (Z, Y, X)
    spacing : int
        Grid pitch in pixels along every axis; about ``prod(shape // spacing)`` cells.
    radius : float, optional
        Mean cell radius; default 0.4 x spacing (cells never touch).

    Returns
    -------
    image : (n_channels, *spatial_shape) uint16 ndarray
    labels : spatial_shape uint32 ndarray, ids 1..n in grid order
    """
    rng = np.random.default_rng(seed)
    grid = tuple(max(1, size // spacing) for size in spatial_shape)
    radius = 0.4 * spacing if radius is None else radius
    jitter = max(0.0, spacing / 2 - radius - 1)
    centres = (np.stack(np.meshgrid(*map(np.arange, grid), indexing="ij"), -1) + 0.5) * spacing
    centres = centres + rng.uniform(-jitter, jitter, centres.shape)
    radii = radius * rng.uniform(0.8, 1.0, grid)
    # per axis: the grid cell each coordinate falls in, shaped to broadcast over the field
    owner = [np.minimum(np.arange(size) // spacing, count - 1).reshape([-1 if a == axis else 1
                                                                        for a in range(len(grid))])
             for axis, (size, count) in enumerate(zip(spatial_shape, grid))]
    squared = sum((np.arange(size).reshape(index.shape) - centres[(*owner, axis)]) ** 2
                  for axis, (size, index) in enumerate(zip(spatial_shape, owner)))
    distance = np.sqrt(squared) / radii[tuple(owner)]
    ids = (np.ravel_multi_index(np.broadcast_arrays(*owner), grid) + 1).astype(np.uint32)
    labels = np.where(distance < 1.0, ids, 0).astype(np.uint32)
    inside = np.clip(1.2 - distance, 0, 1)
    brightness = rng.uniform(0.5, 1.5, (n_channels, int(np.prod(grid)) + 1))
    image = np.empty((n_channels, *spatial_shape), np.uint16)
    for channel in range(n_channels):
        level = brightness[channel][labels]
        image[channel] = (200 + 3000 * inside * level + rng.integers(0, 64, spatial_shape)).astype(np.uint16)
    return image, labels


def write_grid_plate(path, *, wells, fields_per_well, field_shape, spacing, chunks, n_channels=5, seed=0):
    """Write a plate of ``wells`` wells x ``fields_per_well`` fields; returns the number of cells."""
    rows = "ABCDEFGHIJKLMNOP"
    fields, cells = {}, 0
    for well in range(wells):
        pairs = []
        for site in range(fields_per_well):
            image, labels = grid_cells(field_shape, spacing, n_channels=n_channels,
                                       seed=seed + well * fields_per_well + site)
            cells += int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
            pairs.append((image, labels))
        fields[(rows[well // 24], well % 24 + 1)] = pairs
    write_plate(path, fields, name="bench", chunks=chunks)
    return cells


def read_whole_arrays(plate, direct=False):
    """Read every field's level-0 image and labels once, whole arrays, with zarr-python (``direct``:
    with the scorer's own reader, :func:`gradcamo.data.direct.read_array`); returns the fields read."""
    from gradcamo.data.read import discover_images, open_image

    if direct:
        from gradcamo.data.direct import read_array
    refs = discover_images(str(plate))
    for ref in refs:
        source = open_image(ref)
        for array in (source.image, source.labels):
            read_array(array, tuple(slice(0, n) for n in array.shape)) if direct else array[...]
    return len(refs)


def count_cells(plate):
    """The number of objects (distinct non-zero label ids per field) of a plate."""
    from gradcamo.data.read import discover_images, open_image

    return sum(int(np.count_nonzero(np.bincount(open_image(ref).labels[...].ravel())[1:]))
               for ref in discover_images(str(plate)))


__all__ = ["count_cells", "grid_cells", "read_whole_arrays", "write_grid_plate"]
