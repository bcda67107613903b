"""Score datasets for the visual tests: tiny models on small OME-Zarr images and a plate, scored for real."""

import dataclasses

import pytest

from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store, write_plate
from gradcamo.scorer.pipeline import score

PLATES = {"P1": (("A", 1), ("B", 3), ("H", 12)), "P2": (("A", 1), ("P", 24))}
"""Wells of two plates: P1 fits a 96-well layout, P2 (row P, column 24) needs 384."""


@dataclasses.dataclass(frozen=True)
class Scored:
    """A score dataset with what it was made from."""

    scores: object
    model: object
    store: object
    spatial_dims: int
    convention: str
    image: object = None
    labels: object = None


@pytest.fixture(scope="session")
def models(model_2d, model_3d):
    return {2: model_2d, 3: model_3d}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """(image, labels, store) of a 2D image (target all) and a 3D volume, and a 2D plate."""
    root = tmp_path_factory.mktemp("visual-inputs")
    image2d, labels2d = make_cells((40, 36), 6, n_channels=3, radius=5, seed=4)
    image3d, labels3d = make_cells((6, 26, 24), 4, n_channels=3, radius=5, seed=8)
    plates = {}
    for name, wells in PLATES.items():
        fields = {well: [make_cells((32, 32), 3, n_channels=3, radius=5, seed=i)] for i, well in enumerate(wells)}
        plates[name] = write_plate(root / f"{name}.zarr", fields, name=name, chunks=(16, 16))
    return {
        2: (image2d, labels2d, write_image_store(root / "cells.zarr", image2d, labels2d, chunks=(20, 18))),
        3: (image3d, labels3d, write_image_store(root / "vol.zarr", image3d, labels3d, chunks=(3, 13, 12))),
        "plates": list(plates.values()),
    }


def _score(root, name, stores, model, **options):
    output = root / name
    score(stores, model, output, workers=1, threads=1, **options)
    return output


@pytest.fixture(scope="session")
def datasets(tmp_path_factory, models, inputs):
    """{(spatial_dims, convention): Scored}; 2D datasets score every class of every cell."""
    root = tmp_path_factory.mktemp("visual-scores")
    scored = {}
    for dims in (2, 3):
        image, labels, store = inputs[dims]
        for convention in ("raw", "pytorch-grad-cam"):
            target = "all" if dims == 2 else "predicted"
            output = _score(root, f"{dims}d-{convention}", [store], models[dims], target=target, convention=convention)
            scored[(dims, convention)] = Scored(output, models[dims], store, dims, convention, image, labels)
    return scored


@pytest.fixture(scope="session")
def plate_scores(tmp_path_factory, models, inputs):
    root = tmp_path_factory.mktemp("visual-plate")
    return Scored(_score(root, "plates", inputs["plates"], models[2]), models[2], inputs["plates"], 2, "raw")


SCORED_METHODS = ("gradcam", "hirescam", "layercam")


@pytest.fixture(scope="session")
def method_scores(tmp_path_factory, models, inputs):
    """The 2D image scored with three CAM methods in one run."""
    root = tmp_path_factory.mktemp("visual-methods")
    image, labels, store = inputs[2]
    output = _score(root, "methods", [store], models[2], methods=SCORED_METHODS)
    return Scored(output, models[2], store, 2, "raw", image, labels)
