"""What a score dataset was made from: its manifest, model file and input images, found again.

``cams`` and ``report`` recompute CAMs from what ``_gradcamo.json`` records. Inputs that
moved are mapped with ``--input OLD=NEW``; the model file is the one recorded (when the
manifest names it) or one given with ``--model``, and must have the recorded sha256.
"""

import dataclasses
import json
import pathlib

from gradcamo.data.read import ImageRef, discover_images
from gradcamo.errors import InputError
from gradcamo.model_file import read_model_info
from gradcamo.results.datasets import MANIFEST, resolve_datasets

MODEL_KEY = "model"
"""Manifest key of the model file's path, where the scorer records it."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A score dataset with its model file and the images it was scored on, checked."""

    directory: pathlib.Path
    manifest: dict
    model: object
    images: dict

    @property
    def parameters(self) -> dict:
        return self.manifest["parameters"]


def parse_input_map(pairs) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> ``{OLD: NEW}``.

    Raises
    ------
    InputError
        A pair without ``=`` or with an empty side.
    """
    mapping = {}
    for pair in pairs or ():
        old, sep, new = str(pair).partition("=")
        if not sep or not old or not new:
            raise InputError(f"--input {pair!r}: expected OLD=NEW, e.g. /data/plate.zarr=/mnt/plate.zarr")
        mapping[old.rstrip("/")] = new.rstrip("/")
    return mapping


def map_path(path, mapping) -> str:
    """``path`` with the longest matching ``OLD`` (the path itself or a folder above it) replaced."""
    path = str(path)
    for old in sorted(mapping, key=len, reverse=True):
        if path == old or path.startswith(old + "/"):
            return mapping[old] + path[len(old):]
    return path


def read_manifest(directory) -> dict:
    """The ``_gradcamo.json`` of one score dataset (checked by :func:`resolve_datasets`, which the
    calling command has warned with)."""
    directory = pathlib.Path(directory)
    resolve_datasets([directory], warn=False)
    manifest = json.loads((directory / MANIFEST).read_text())
    if not isinstance(manifest.get("parameters"), dict) or "model_sha256" not in manifest["parameters"]:
        raise InputError(f"{directory / MANIFEST}: records no scoring parameters; expected one written by `gradcamo score`")
    return manifest


def _choose_model(directory, manifest, models, mapping):
    wanted = manifest["parameters"]["model_sha256"]
    recorded = manifest.get(MODEL_KEY)
    candidates = [str(m) for m in models] or ([map_path(recorded, mapping)] if recorded else [])
    if not candidates:
        raise InputError(
            f"{directory}: {MANIFEST} does not name its model file; pass --model with the file it was "
            f"scored with (sha256 {wanted[:12]}…)"
        )
    if not models and not pathlib.Path(candidates[0]).is_file():
        raise InputError(
            f"{directory}: model file {candidates[0]} named in {MANIFEST} not found; "
            "pass --model FILE, or --input OLD=NEW for its folder"
        )
    infos = [read_model_info(path) for path in candidates]
    for info in infos:
        if info.sha256 == wanted:
            return info
    found = ", ".join(f"{info.path} (sha256 {info.sha256[:12]}…)" for info in infos)
    raise InputError(
        f"{directory}: scored with model sha256 {wanted[:12]}…, but {found} differs; "
        "the model file changed since scoring, or pass --model with the original file"
    )


def _find_images(directory, inputs, mapping):
    """``Metadata_Image`` -> ImageRef at the input's current location."""
    images = {}
    for recorded in inputs:
        actual = map_path(recorded, mapping)
        if "://" not in actual and not pathlib.Path(actual).exists():
            hint = f"--input {recorded}=NEW" if actual == recorded else f"--input (mapped to {actual})"
            raise InputError(f"{directory}: input {recorded} not found; give its new location with {hint}")
        for ref in discover_images(actual):
            images[ImageRef(recorded, ref.path).name] = ref
    return images


def open_source(directory, *, models=(), input_map=None) -> DatasetSource:
    """Find a dataset's model file and input images again, as ``_gradcamo.json`` records them.

    Parameters
    ----------
    directory : path-like
        A score dataset.
    models : sequence of path-like
        Candidate model files; the one with the recorded sha256 is used. Default: the
        file the manifest names.
    input_map : dict of str to str, optional
        ``{OLD: NEW}`` for inputs (or folders above them, or the model file) that moved.

    Returns
    -------
    DatasetSource

    Raises
    ------
    InputError
        No model file with the recorded sha256, or an input that is not found.
    """
    directory = pathlib.Path(directory)
    mapping = dict(input_map or {})
    manifest = read_manifest(directory)
    model = _choose_model(directory, manifest, models, mapping)
    images = _find_images(directory, manifest["parameters"].get("inputs") or [], mapping)
    return DatasetSource(directory, manifest, model, images)
