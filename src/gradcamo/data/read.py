"""Find the images of OME-Zarr inputs (single images and HCS plates) and open them lazily.

Reads NGFF 0.4 (Zarr v2, metadata at the top of ``.zattrs``) and 0.5 (Zarr v3, metadata
under ``ome``) with zarr-python alone; any other NGFF version is refused by name. Stores are
read as their writers left them: consolidated metadata is not used (a writer that adds
labels after consolidating leaves it stale), axis names are read case-insensitively (iohub
writes ``T, C, Z, Y, X``) and in any order. Paths found in metadata never leave the store.
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
NGFF_VERSIONS = ("0.4", "0.5")
"""The OME-Zarr (NGFF) versions read."""
AXES = ("t", "c", "z", "y", "x")
"""Axis names read (in any order and case); another axis must have size 1."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image to score: where it is and its cell-profiling keys."""

    store: str
    path: str
    plate: object = None
    well: object = None
    site: int = 0

    @property
    def name(self) -> str:
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
    channel_labels: tuple = ()
    """The image's ``omero.channels[].label`` (empty when the store names no channels)."""
    centres: zarr.Array | None = None
    """Level 0 of the label image whose objects centre the crops (``--center-labels``), or None."""
    centre_name: str | None = None

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in ("z", "y", "x"))


def ome_metadata(group) -> dict:
    """The OME metadata of a group, whichever NGFF version wrote it."""
    attributes = dict(group.attrs)
    return dict(attributes.get("ome", attributes))


def check_ngff_version(group, section, where) -> str | None:
    """The NGFF version a group's metadata declares for ``section`` (``multiscales``, ``plate``,
    ``well``), or None where it declares none (0.4 makes the version optional).

    0.5 declares it once, as ``ome.version``; 0.4 inside the section (``multiscales[0].version``,
    ``plate.version``, ``well.version``).

    Raises
    ------
    InputError
        A version other than :data:`NGFF_VERSIONS`.
    """
    attributes = dict(group.attrs)
    if "ome" in attributes:
        version = dict(attributes["ome"]).get("version")
    else:
        entry = attributes.get(section)
        entry = entry[0] if isinstance(entry, list) and entry else entry
        version = entry.get("version") if isinstance(entry, dict) else None
    if version is not None and str(version) not in NGFF_VERSIONS:
        raise InputError(f"{where}: OME-Zarr (NGFF) version {version} is not read; gradcamo reads "
                         f"{' and '.join(NGFF_VERSIONS)}; convert the store (e.g. with ome-zarr-py or ngff-zarr)")
    return None if version is None else str(version)


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
        # Consolidated metadata is not used: stale after a writer adds groups (ngff-zarr's labels).
        return zarr.open_group(open_store(store), path=path or None, mode="r", use_consolidated=False)
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


RECORD = "gradcamo"
"""Attribute in which ``gradcamo import`` records a field's source (``site``, files)."""


def recorded_site(group) -> int | None:
    """The source's site number that ``gradcamo import`` recorded on a field group, else None."""
    record = dict(group.attrs).get(RECORD)
    site = record.get("site") if isinstance(record, dict) else None
    return site if isinstance(site, int) and not isinstance(site, bool) else None


def channel_labels(group) -> tuple:
    """The ``omero.channels[].label`` of an image group; empty unless every channel has a label."""
    channels = (ome_metadata(group).get("omero") or {}).get("channels") or []
    labels = tuple(c.get("label") if isinstance(c, dict) else None for c in channels)
    return labels if labels and all(isinstance(label, str) and label for label in labels) else ()


def _plate_images(store, root, plate, site_base=0):
    plate_name = plate.get("name") or pathlib.PurePosixPath(store.rstrip("/")).stem
    refs = []
    for well in plate.get("wells", []):
        well_path = _check_inner_path(store, well["path"])
        well_group = _open_group(store, well_path, "well")
        check_ngff_version(well_group, "well", f"{store}/{well_path}")
        well_meta = ome_metadata(well_group).get("well", {})
        for site, field in enumerate(well_meta.get("images", [])):
            field_path = _check_inner_path(store, f"{well_path}/{field['path']}")
            refs.append(ImageRef(store, field_path, plate_name, _well_name(plate, well), site + site_base))
    return refs


def discover_images(store, site_base=0) -> list[ImageRef]:
    """List the images of one input: itself, or every field of every well of a plate.

    A field's ``site`` is its index in the well plus ``site_base``; :func:`open_image`
    replaces it by the site that ``gradcamo import`` recorded, where there is one.

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
            check_ngff_version(root, "plate", store)
            return _plate_images(store, root, metadata["plate"], site_base)
    if "multiscales" in metadata:
        return [ImageRef(store, "")]
    raise InputError(f"{store}: not OME-Zarr (no 'multiscales' or 'plate' metadata)")


def _level0(store, group, where):
    multiscales = ome_metadata(group).get("multiscales")
    if not multiscales or not multiscales[0].get("datasets"):
        raise InputError(f"{where}: no 'multiscales' datasets in the metadata")
    check_ngff_version(group, "multiscales", where)
    entry = multiscales[0]
    axes = tuple(str(a["name"] if isinstance(a, dict) else a).lower() for a in entry.get("axes", []))
    path = _check_inner_path(store, entry["datasets"][0]["path"])
    try:
        array = group[path]
    except KeyError:
        raise InputError(f"{where}: level 0 array {path!r} is missing") from None
    if not isinstance(array, zarr.Array):
        raise InputError(f"{where}: level 0 {path!r} is not an array")
    if len(axes) != array.ndim:
        raise InputError(f"{where}: {len(axes)} axes {axes} for a {array.ndim}-D array")
    if len(set(axes)) != len(axes):
        raise InputError(f"{where}: axis names {axes} repeat one (names are read case-insensitively)")
    other = {a: n for a, n in zip(axes, array.shape) if a not in AXES and n != 1}
    if other:
        raise InputError(f"{where}: axes {other} are not read (gradcamo reads {', '.join(AXES)}; others must "
                         "have size 1)")
    return axes, array


def _label_names(group):
    return list(ome_metadata(group["labels"]).get("labels", [])) if "labels" in group else []


def label_names(ref) -> list[str]:
    """The names of an image's label images (``labels/``), as its metadata lists them."""
    with _readable(ref.name):
        return _label_names(_open_group(ref.store, ref.path, "image group"))


def _choose_labels(store, group, where, label_name):
    names = _label_names(group)
    if not names:
        raise InputError(f"{where}: no label images (labels/ group); segment the cells first")
    if label_name is None:
        if len(names) > 1:
            raise InputError(f"{where}: several label images {names}; choose one with --labels")
        label_name = names[0]
    elif label_name not in names:
        raise InputError(f"{where}: no label image {label_name!r}; there are {names}")
    return _check_inner_path(store, label_name)


def _check_labels(where, name, axes, image, label_axes, labels):
    """Refuse a label image that is not integer or whose spatial shape differs from the image's."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{where}: labels/{name} has dtype {labels.dtype}; label images must be integers")
    spatial = {a: n for a, n in zip(axes, image.shape) if a in ("z", "y", "x")}
    label_spatial = {a: n for a, n in zip(label_axes, labels.shape) if a in ("z", "y", "x")}
    extra = {a: n for a, n in zip(label_axes, labels.shape) if a not in ("z", "y", "x") and n != 1}
    if spatial != label_spatial or extra:
        raise InputError(
            f"{where}: image spatial shape {spatial} != labels/{name} shape {dict(zip(label_axes, labels.shape))}"
        )


def open_image(ref, label_name=None, centre_name=None, *, missing_chunks="error") -> ImageSource:
    """Open one image's level-0 array and its label image, checking they fit together.

    The source's ``ref`` carries the site recorded by ``gradcamo import``, where there is one.
    With ``centre_name``, also the label image whose objects centre the crops (matched to
    the scored objects by id). Reading a chunk that the image array's store does not hold raises
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
    centres = None
    with _readable(where):
        group = _open_group(ref.store, ref.path, "image group")
        axes, image = _level0(ref.store, group, where)
        label_name = _choose_labels(ref.store, group, where, label_name)
        label_axes, labels = _level0(ref.store, group[f"labels/{label_name}"], f"{where} labels/{label_name}")
        site = recorded_site(group)
        labels_of_channels = channel_labels(group)
        if centre_name is not None:
            centre_name = _choose_labels(ref.store, group, where, centre_name)
            centre_axes, centres = _level0(ref.store, group[f"labels/{centre_name}"], f"{where} labels/{centre_name}")
    if site is not None:
        ref = dataclasses.replace(ref, site=site)
    if image.dtype == np.bool_:
        raise InputError(f"{where}: the image has dtype bool; expected intensities (integers or floats), "
                         "not a mask")
    _check_labels(where, label_name, axes, image, label_axes, labels)
    if centres is not None:
        _check_labels(where, centre_name, axes, image, centre_axes, centres)
        if centre_axes != label_axes:
            raise InputError(f"{where}: labels/{centre_name} has axes {centre_axes}, labels/{label_name} "
                             f"{label_axes}; the label images must share their axes")
    store_name = pathlib.PurePosixPath(ref.store.rstrip("/")).name
    image = strict_array(image, f"{store_name}/{image.path}", missing_chunks)
    return ImageSource(ref, axes, image, label_axes, labels, label_name, labels_of_channels, centres, centre_name)
