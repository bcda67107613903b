"""Recompute the crops, masks and CAMs of chosen score rows, exactly as ``score`` computed them.

The crops are cut with the scorer's own functions (centroid, or the centre object's centroid
with ``--center-labels`` -> :func:`crop_starts`, region
read with :func:`read_region`, zero-padded :func:`cut_window`), and the CAM is the tensor
of the scorer's own graph (:func:`~gradcamo.scorer.session.build_scoring_session`) whose masked sums are ``cam_inside``
and ``cam_total``: the map is exposed as an extra output, nothing is computed twice.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort

from gradcamo import contract
from gradcamo.data.chunks import MissingChunkError
from gradcamo.data.read import open_image
from gradcamo.errors import InputError, UnreadableError
from gradcamo.scorer.crops import crop_starts, cut_window, measure_objects, window_inside
from gradcamo.scorer.head import CAM_INSIDE, CAM_TOTAL, CROP_CAM, MASK
from gradcamo.scorer.regions import plan_layout, read_region
from gradcamo.scorer.session import build_scoring_session

BATCH_SIZE = 32
SCORE_TOLERANCE = 1e-4
"""Largest |recomputed - recorded| Grad-CAMO accepted; more means the inputs changed."""


@dataclasses.dataclass(frozen=True)
class CamBatch:
    """Recomputed arrays for some of the chosen rows.

    ``rows`` (n,) int64 positions in the selection; ``image`` (n, C, *S) float32 crops as
    fed to the model; ``mask`` (n, *S) bool; ``cam`` (n, *S) float32 at crop resolution;
    ``in_image`` (n, *S) bool: not padding; ``background`` (n, *S) bool: in-image pixels with label 0.
    """

    rows: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    cam: np.ndarray
    in_image: np.ndarray | None = None
    background: np.ndarray | None = None


def cam_session(model_path, model_sha256, crop_spatial, convention, method="gradcam") -> ort.InferenceSession:
    """A CPU session of the scorer's graph for this model, convention and CAM method, with ``crop_cam`` exposed
    (``model_sha256`` keys a :class:`~gradcamo.scorer.session.SessionCache` by the file's content; it is not read)."""
    return build_scoring_session(str(model_path), crop_spatial, convention, "cpu", None, (method,), crop_cam=True)


def _cut(source, layout, start, crop):
    """One crop and its label window, read from just the region the crop overlaps."""
    low = np.maximum(start, 0)
    high = np.minimum(start + crop, layout.spatial_shape)
    region = tuple(slice(int(a), int(max(a, b))) for a, b in zip(low, high))
    image = read_region(source.image, layout.image_axes, layout.spatial_axes, region,
                        channels=layout.channels, timepoint=layout.timepoint)
    labels = read_region(source.labels, layout.label_axes, layout.spatial_axes, region)
    window, _ = cut_window(image, start - low, crop)
    label_window, _ = cut_window(labels, start - low, crop)
    return window.astype(np.float32), label_window


def _centroids(rows, spatial_dims):
    axes = ("centroid_z", "centroid_y", "centroid_x")[-spatial_dims:]
    return np.stack([np.asarray(rows[axis], dtype=np.float64) for axis in axes], axis=1)


def _centres_from(image_source, layout, ids):
    """Crop centres of a dataset scored with ``--center-labels``: the centroids of the objects of the
    same ids in the centre label image (read whole: ``cams`` shows few cells)."""
    whole = tuple(slice(0, n) for n in layout.spatial_shape)
    centres = measure_objects(read_region(image_source.centres, layout.label_axes, layout.spatial_axes, whole))
    found = np.isin(ids, centres.ids)
    if not found.all():
        raise InputError(f"{image_source.ref.name}: object {ids[~found][0]} has no centre object in "
                         f"labels/{image_source.centre_name}: the labels changed since scoring")
    return centres.centroids[np.searchsorted(centres.ids, ids)]


def _check_scores(source, rows, indices, inside, total):
    empty = ~(total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recomputed = np.where(empty, np.nan, inside.astype(np.float64) / np.where(empty, 1.0, total))
    recorded = np.asarray(rows["grad_camo"], dtype=np.float64)[indices]
    bad = np.flatnonzero(~((np.abs(recomputed - recorded) <= SCORE_TOLERANCE) | (np.isnan(recomputed) & np.isnan(recorded))))
    if len(bad):
        i = indices[bad[0]]
        raise InputError(
            f"{source.directory}: {rows['Metadata_Image'][i]} object {rows['Metadata_ObjectNumber'][i]} now scores "
            f"{recomputed[bad[0]]:.4f}, the dataset says {recorded[bad[0]]:.4f}: the image or labels changed since scoring"
        )


def iter_cams(source, rows, sessions, *, batch_size=BATCH_SIZE) -> Iterator[CamBatch]:
    """Recompute crops, masks and CAMs of score rows, image by image, in batches.

    Parameters
    ----------
    source : DatasetSource
        The dataset the rows come from (:func:`gradcamo.visual.source.open_source`).
    rows : dict of str to sequence
        Score columns (at least keys, centroids, ``target_class`` and ``grad_camo``; ``method``
        where the dataset has it, else every row is ``gradcam``).
    sessions : gradcamo.scorer.session.SessionCache
        The calling command's sessions.
    batch_size : int

    Yields
    ------
    CamBatch

    Raises
    ------
    InputError
        A row's image is not among the inputs, or its recomputed score differs from the
        recorded one (the inputs changed).
    """
    parameters = source.parameters
    info = source.model
    crop = np.asarray(info.input_shape[1:], dtype=np.int64)
    channels = parameters.get("channels")
    centroids = _centroids(rows, info.spatial_dims)
    centre_labels = parameters.get("center_labels")
    names = list(rows["Metadata_Image"])
    methods = list(rows.get("method") or ["gradcam"] * len(names))
    for name, method in dict.fromkeys(zip(names, methods)):
        session = sessions.get(cam_session, str(info.path), info.sha256, tuple(int(c) for c in crop),
                               parameters["convention"], method)
        if name not in source.images:
            raise InputError(f"{source.directory}: image {name} is not among the recorded inputs")
        zeros = name in (source.manifest.get("missing_chunks") or {})  # scored with missing chunks as zeros
        image_source = open_image(source.images[name], parameters.get("labels"), centre_labels,
                                  missing_chunks="zeros" if zeros else "error")
        layout = plan_layout(
            image_source, spatial_dims=info.spatial_dims, n_channels=info.input_shape[0],
            channels=None if channels is None else tuple(channels), timepoint=parameters.get("timepoint", 0),
            model_channel_names=info.channel_names,
        )
        indices = np.asarray([i for i, key in enumerate(zip(names, methods)) if key == (name, method)], dtype=np.int64)
        centres = centroids[indices]
        if centre_labels is not None:
            ids = np.asarray(rows["Metadata_ObjectNumber"], dtype=np.int64)[indices]
            centres = _centres_from(image_source, layout, ids)
        starts = dict(zip(indices.tolist(), crop_starts(centres, crop)))
        for begin in range(0, len(indices), batch_size):
            chosen = indices[begin:begin + batch_size]
            try:
                cut = [_cut(image_source, layout, starts[i], crop) for i in chosen]
            except MissingChunkError as error:
                raise UnreadableError(f"{source.directory}: {error}") from None
            crops = np.stack([c[0] for c in cut])
            ids = np.asarray(rows["Metadata_ObjectNumber"])[chosen]
            masks = np.stack([c[1] == cell for c, cell in zip(cut, ids)])
            targets = np.asarray(rows["target_class"], dtype=np.int64)[chosen]
            inside, total, cam = session.run(
                [CAM_INSIDE, CAM_TOTAL, CROP_CAM],
                {contract.IMAGE: crops, contract.TARGET: targets, MASK: masks.astype(np.float32)},
            )
            _check_scores(source, rows, chosen, inside, total)
            in_image = window_inside(np.asarray([starts[i] for i in chosen]), crop, layout.spatial_shape)
            background = in_image & (np.stack([c[1] for c in cut]) == 0)
            yield CamBatch(chosen, crops, masks, cam[:, 0], in_image, background)
