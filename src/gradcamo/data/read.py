"""Find the images of OME-Zarr inputs (single images and HCS plates) and open them lazily.

Reads NGFF 0.4 (Zarr v2, metadata at the top of ``.zattrs``) and 0.5 (Zarr v3, metadata
under ``ome``) with zarr-python alone. Paths found in metadata never leave the store.
"""

import contextlib
import dataclasses
import pathlib
import re

import numpy as np
import zarr
import zarr.errors

from gradcamo.data.chunks import check_mode, strict_array
from gradcamo.data.remote import open_store, read_errors
from gradcamo.errors import InputError, UnreadableError, describe

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image to score: where it is and its cell-profiling keys."""

    store: str
    path: str
    plate: object = None
    well: object = None
    site: int = 0

    @property
    def name(self):
        """``Metadata_Image``: the store's name plus the group path inside it."""
        store_name = pathlib.PurePosixPath(self.store.rstrip("/")).name
        return f"{store_name}/{self.path}" if self.path else store_name


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """An opened image: level-0 arrays of the image and of one label image."""

    ref: ImageRef
    axes: tuple
    image: zarr.Array
    label_axes: tuple
    labels: zarr.Array
    label_name: str

    @property
    def spatial_axes(self):
        return tuple(a for a in self.axes if a in ("z", "y", "x"))


def ome_metadata(group):
    """The OME metadata of a group, whichever NGFF version wrote it."""
    attributes = dict(group.attrs)
    return dict(attributes.get("ome", attributes))


@contextlib.contextmanager
def _readable(location):
    """Turn what zarr raises on damaged metadata, or on a store it cannot reach, into one-line
    input errors naming ``location``."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AssertionError) as error:  # from zarr's parsing or OME's
        raise UnreadableError(f"{location}: unreadable metadata ({describe(error)}); the store is damaged, "
                              "truncated or was not written completely") from error
    except read_errors() as error:
        raise UnreadableError(f"{location}: cannot be read ({describe(error)})") from error


def _open_group(store, path, what):
    try:
        return zarr.open_group(open_store(store), path=path or None, mode="r")
    except zarr.errors.ContainsArrayError as error:
        location = f"{store}/{path}" if path else store
        raise InputError(f"{location}: is a plain Zarr array; expected an {what} (a group with "
                         "'multiscales' or 'plate' metadata)") from error
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as error:
        location = f"{store}/{path}" if path else store
        raise UnreadableError(f"{location}: {what} not found or not a Zarr group") from error


def _check_inner_path(store, path):
    if not _SAFE_PATH.match(path) or any(part in ("", ".", "..") for part in path.split("/")):
        raise InputError(f"{store}: metadata path {path!r} leaves the store or is malformed")
    return path


def _well_name(plate, well):
    row = plate["rows"][well["rowIndex"]]["name"] if "rowIndex" in well else well["path"].split("/")[0]
    column = (
        plate["columns"][well["columnIndex"]]["name"] if "columnIndex" in well else well["path"].split("/")[1]
    )
    return f"{row}{int(column):02d}" if str(column).isdigit() else f"{row}{column}"


def _plate_images(store, root, plate):
    plate_name = plate.get("name") or pathlib.PurePosixPath(store.rstrip("/")).stem
    refs = []
    for well in plate.get("wells", []):
        well_path = _check_inner_path(store, well["path"])
        well_meta = ome_metadata(_open_group(store, well_path, "well")).get("well", {})
        for site, field in enumerate(well_meta.get("images", [])):
            field_path = _check_inner_path(store, f"{well_path}/{field['path']}")
            refs.append(ImageRef(store, field_path, plate_name, _well_name(plate, well), site))
    return refs


def discover_images(store):
    """List the images of one input: itself, or every field of every well of a plate.

    Raises
    ------
    InputError
        The input does not exist, is not OME-Zarr, or its metadata points outside it.
    """
    store = str(store)
    if "://" not in store and not pathlib.Path(store).exists():
        raise InputError(f"{store}: no such file or directory")
    with _readable(store):
        root = _open_group(store, "", "OME-Zarr group")
        metadata = ome_metadata(root)
        if "plate" in metadata:
            return _plate_images(store, root, metadata["plate"])
    if "multiscales" in metadata:
        return [ImageRef(store, "")]
    raise InputError(f"{store}: not OME-Zarr (no 'multiscales' or 'plate' metadata)")


def _level0(store, group, where):
    multiscales = ome_metadata(group).get("multiscales")
    if not multiscales or not multiscales[0].get("datasets"):
        raise InputError(f"{where}: no 'multiscales' datasets in the metadata")
    entry = multiscales[0]
    axes = tuple(a["name"] if isinstance(a, dict) else a for a in entry.get("axes", []))
    path = _check_inner_path(store, entry["datasets"][0]["path"])
    try:
        array = group[path]
    except KeyError:
        raise InputError(f"{where}: level 0 array {path!r} is missing") from None
    if not isinstance(array, zarr.Array):
        raise InputError(f"{where}: level 0 {path!r} is not an array")
    if len(axes) != array.ndim:
        raise InputError(f"{where}: {len(axes)} axes {axes} for a {array.ndim}-D array")
    return axes, array


def _choose_labels(store, group, where, label_name):
    names = []
    if "labels" in group:
        names = list(ome_metadata(group["labels"]).get("labels", []))
    if not names:
        raise InputError(f"{where}: no label images (labels/ group); segment the cells first")
    if label_name is None:
        if len(names) > 1:
            raise InputError(f"{where}: several label images {names}; choose one with --labels")
        label_name = names[0]
    elif label_name not in names:
        raise InputError(f"{where}: no label image {label_name!r}; there are {names}")
    return _check_inner_path(store, label_name)


def open_image(ref, label_name=None, *, missing_chunks="error"):
    """Open one image's level-0 array and its label image, checking they fit together.

    Reading a chunk that the image array's store does not hold raises
    :class:`gradcamo.data.chunks.MissingChunkError`, or with ``missing_chunks="zeros"`` gives
    the fill value (counted: :func:`gradcamo.data.chunks.chunks_read_as_fill`); absent label
    chunks are background.

    Raises
    ------
    InputError
        Missing, damaged or unreachable metadata, missing level 0 or labels, label/image
        spatial shape mismatch, non-integer labels, a boolean image.
    """
    where = ref.name
    check_mode(missing_chunks)
    with _readable(where):
        group = _open_group(ref.store, ref.path, "image group")
        axes, image = _level0(ref.store, group, where)
        label_name = _choose_labels(ref.store, group, where, label_name)
        label_axes, labels = _level0(ref.store, group[f"labels/{label_name}"], f"{where} labels/{label_name}")
    if image.dtype == np.bool_:
        raise InputError(f"{where}: the image has dtype bool; expected intensities (integers or floats), "
                         "not a mask")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"{where}: labels/{label_name} has dtype {labels.dtype}; label images must be integers"
        )
    spatial = {a: n for a, n in zip(axes, image.shape) if a in ("z", "y", "x")}
    label_spatial = {a: n for a, n in zip(label_axes, labels.shape) if a in ("z", "y", "x")}
    extra = {a: n for a, n in zip(label_axes, labels.shape) if a not in ("z", "y", "x") and n != 1}
    if spatial != label_spatial or extra:
        raise InputError(
            f"{where}: image spatial shape {spatial} != labels/{label_name} shape "
            f"{dict(zip(label_axes, labels.shape))}"
        )
    store_name = pathlib.PurePosixPath(ref.store.rstrip("/")).name
    image = strict_array(image, f"{store_name}/{image.path}", missing_chunks)
    return ImageSource(ref, axes, image, label_axes, labels, label_name)
