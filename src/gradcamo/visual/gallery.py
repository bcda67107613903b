"""Galleries for the report: the lowest-scoring, highest-scoring and a random sample of cells.

The overlays come from the code ``gradcamo cams`` uses (:func:`iter_cams`, :func:`batch_overlays`).
"""

import base64
import dataclasses

from gradcamo.visual.overlay import batch_overlays
from gradcamo.visual.recompute import iter_cams
from gradcamo.visual.select import VALID_SCORE, select_rows

GALLERY_PIXELS = 144
"""Panel size of gallery overlays (smaller than ``cams``' to keep the report light)."""
KINDS = {
    "lowest Grad-CAMO": (VALID_SCORE, "grad_camo ASC, Metadata_Image, Metadata_ObjectNumber, target_class"),
    "highest Grad-CAMO": (VALID_SCORE, "grad_camo DESC, Metadata_Image, Metadata_ObjectNumber, target_class"),
    "random sample": (None, "hash(Metadata_Image, Metadata_ObjectNumber, target_class), Metadata_Image"),
}


@dataclasses.dataclass(frozen=True)
class Gallery:
    """One strip of overlays: ``images`` are (alt text, data URI) pairs in row order."""

    kind: str
    images: list


def select_galleries(directory, size, method) -> dict:
    """{kind: pyarrow.Table} of the rows of ``method`` each gallery shows (at most ``size`` each)."""
    return {kind: select_rows(directory, where=where, order_by=order, limit=size, method=method)
            for kind, (where, order) in KINDS.items()}


def render_galleries(source, selections, advance, sessions) -> list[Gallery]:
    """Recompute and draw the cells of each selection with the command's ``sessions``
    (:class:`~gradcamo.scorer.session.SessionCache`); ``advance(n)`` reports progress.

    Returns
    -------
    list of Gallery
    """
    galleries = []
    for kind, table in selections.items():
        rows = table.to_pydict()
        images: list[tuple[str, str] | None] = [None] * table.num_rows
        for batch in iter_cams(source, rows, sessions):
            for index, png in batch_overlays(batch, rows, panel_pixels=GALLERY_PIXELS):
                alt = f"{rows['Metadata_Image'][index]} object {rows['Metadata_ObjectNumber'][index]}"
                images[index] = (alt, "data:image/png;base64," + base64.b64encode(png).decode("ascii"))
            advance(len(batch.rows))
        galleries.append(Gallery(kind, images))
    return galleries
