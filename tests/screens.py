"""A small JUMP-like screen made on the fly: per-channel 16-bit TIFFs, Cells and Nuclei label TIFFs
(CellProfiler numbering: nucleus k lies in cell k) and a CellProfiler LoadData CSV with 1-based sites."""

import csv

import numpy as np
import tifffile
from scipy import ndimage

from gradcamo.data.synthetic import make_cells

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
OBJECTS = ("Cells", "Nuclei")
PLATE = "BR00117035"
WELLS = ("B03", "C05")
SITES = (1, 2)


def make_site(shape, n_cells, seed):
    """``({channel: uint16 image}, {object: uint16 labels})`` of one site, ``shape`` (Y, X) or (Z, Y, X)."""
    image, cells = make_cells(shape, n_cells, n_channels=len(CHANNELS), radius=5, seed=seed)
    planes = dict(zip(CHANNELS, image))
    nuclei = np.where(ndimage.binary_erosion(cells > 0, iterations=2), cells, 0)
    return planes, {"Cells": cells.astype(np.uint16), "Nuclei": nuclei.astype(np.uint16)}


def make_screen(root, *, shape=(40, 40), n_cells=5, wells=WELLS, sites=SITES, plate=PLATE):
    """Write the screen's TIFFs under ``root/images`` and ``root/objects`` and ``root/load_data.csv``.

    Channel paths are absolute (as JUMP's CSVs have them), object paths relative to the CSV.

    Returns
    -------
    csv_path : pathlib.Path
    truth : dict
        ``{(plate, well, site): (planes, labels)}`` as written.
    """
    images, objects = root / "images", root / "objects"
    images.mkdir(parents=True, exist_ok=True)
    objects.mkdir(exist_ok=True)
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    header += [f"{kind}_{name}" for name in CHANNELS for kind in ("FileName", "PathName")]
    header += [f"Objects{kind}_{name}" for name in OBJECTS for kind in ("FileName", "PathName")]
    rows, truth = [], {}
    for w, well in enumerate(wells):
        for site in sites:
            planes, labels = make_site(shape, n_cells, seed=10 * w + site)
            row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
            for name, plane in planes.items():
                file_name = f"r{well}_s{site}_{name}.tiff"
                tifffile.imwrite(images / file_name, plane)
                row.update({f"FileName_{name}": file_name, f"PathName_{name}": str(images)})
            for name, label_image in labels.items():
                file_name = f"{well}_s{site}_{name}.tiff"
                tifffile.imwrite(objects / file_name, label_image)
                row.update({f"ObjectsFileName_{name}": file_name, f"ObjectsPathName_{name}": "objects"})
            rows.append(row)
            truth[(plate, well, site)] = (planes, labels)
    csv_path = root / "load_data.csv"
    write_csv(csv_path, header, rows)
    return csv_path, truth


def write_csv(path, header, rows):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows([*(row.get(column, "") for column in header), *row.get(None, [])] for row in rows)


def read_csv(path):
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames), list(reader)
