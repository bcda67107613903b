"""Read and check a CellProfiler LoadData CSV: the fields of a screen, before anything is written.

A LoadData CSV has one row per site (field of view): ``Metadata_Plate``, ``Metadata_Well``
(``B03``), ``Metadata_Site`` and, per channel ``<Channel>``, ``FileName_<Channel>`` and
``PathName_<Channel>``; per object set ``<Objects>`` (label images, e.g. ``Cells``,
``Nuclei``), ``ObjectsFileName_<Objects>`` and ``ObjectsPathName_<Objects>``. A relative
``PathName_`` is relative to the CSV's folder; ``base_dir`` rebases relative paths, absolute
paths that no longer exist (a moved screen) and URLs (a downloaded one).

Every row is checked (columns, keys, files, TIFF headers, shapes) before a byte is written;
the first problem is an :class:`~gradcamo.errors.InputError` naming the CSV line and file.
"""

import csv
import dataclasses
import pathlib
import re

import numpy as np
import tifffile

from gradcamo.errors import InputError, describe

KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
_WELL = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")
_PLATE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
"""Plate and object names: they name a store and a label group."""
_STACK_AXES = ("Z", "I", "Q")
"""tifffile's names for the first axis of a multi-page grey-level TIFF read as a z-stack."""


@dataclasses.dataclass(frozen=True)
class TiffInfo:
    """A TIFF's path and what its header says: spatial shape ``([Z,] Y, X)`` and dtype."""

    path: pathlib.Path
    shape: tuple
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class SourceField:
    """One site of the CSV: its keys, its channel TIFFs (in channel order) and label TIFFs."""

    line: int
    plate: str
    row: str
    column: int
    site: int
    channels: tuple
    objects: tuple

    @property
    def well(self) -> str:
        """``Metadata_Well`` as the scorer writes it: row letter(s) and a two-digit column."""
        return f"{self.row}{self.column:02d}"

    @property
    def shape(self) -> tuple:
        return self.channels[0].shape

    def record(self, channel_names, object_names) -> dict:
        """What the imported field records about its source (``gradcamo`` attributes)."""
        return {
            "site": self.site,
            "line": self.line,
            "files": {name: str(info.path) for name, info in zip(channel_names, self.channels)},
            "objects": {name: str(info.path) for name, info in zip(object_names, self.objects)},
        }


@dataclasses.dataclass(frozen=True)
class Screen:
    """A checked LoadData CSV: channel names, object names and every field, in CSV order."""

    csv: pathlib.Path
    channel_names: tuple
    object_names: tuple
    channel_columns: tuple
    """The CSV's name of each channel (``FileName_<column>``), where ``NAME=column`` renamed it."""
    object_columns: tuple
    fields: tuple

    def plates(self) -> dict[str, list["SourceField"]]:
        """``{plate: [field, ...]}``, each plate's fields ordered by well (row, column) and site."""
        plates: dict[str, list[SourceField]] = {}
        for field in self.fields:
            plates.setdefault(field.plate, []).append(field)
        return {plate: sorted(fields, key=lambda f: (len(f.row), f.row, f.column, f.site))
                for plate, fields in plates.items()}


def _names(header, prefix, path_prefix, kind, chosen, csv_name):
    """``(names, columns)``: the ``X`` with both ``prefix + X`` and ``path_prefix + X`` columns, or the ``chosen``
    ones (``X``, or ``NAME=X`` to name column ``X`` ``NAME``), checked."""
    available = [column[len(prefix):] for column in header if column.startswith(prefix) and column != prefix]
    lower = {name.lower(): name for name in available}
    pairs = []
    for item in available if chosen is None else chosen:
        name, _, column = (part.strip() for part in item.partition("="))
        column = lower.get((column or name).lower(), column or name)
        pairs.append((name if "=" in item else column, column))
    names, columns = (tuple(side) for side in zip(*pairs)) if pairs else ((), ())
    for column in columns:
        for full in (prefix + column, path_prefix + column):
            if full not in header:
                listed = ", ".join(available) or "none"
                raise InputError(f"{csv_name}: no column {full} (the {kind}s with {prefix} columns: {listed})")
    if not all(names) or len({name.lower() for name in names}) != len(names):
        raise InputError(f"{csv_name}: {kind} names must be non-empty and unique (ignoring case), got "
                         f"{', '.join(names)}")
    return names, columns


def _resolve(folder, name, csv_folder, base_dir, where):
    """The local path of a file the CSV lists; a URL (``s3://bucket/...``, as JUMP's CSVs have) is rebased under
    ``base_dir`` like an absolute path that no longer exists."""
    url = f"{folder.rstrip('/')}/{name}" if "://" in folder else None
    if url:
        folder = "/" + folder.split("://", 1)[1].lstrip("/")
    path = pathlib.Path(folder) / name if folder else pathlib.Path(name)
    if not path.is_absolute():
        return pathlib.Path(base_dir if base_dir is not None else csv_folder) / path
    if base_dir is not None and (url or not path.exists()):
        # a moved or downloaded screen: the path's longest tail that exists under base_dir
        for start in range(1, len(path.parts)):
            candidate = pathlib.Path(base_dir, *path.parts[start:])
            if candidate.exists():
                return candidate
    if url:
        raise InputError(f"{where}: {url} is remote and "
                         + (f"not found under {base_dir}" if base_dir is not None else "not read from there")
                         + "; download the screen and give --base-dir (the folder holding the copy)")
    return path


def _tiff_info(path, where, *, labels):
    if not path.is_file():
        raise InputError(f"{where}: {path} does not exist")
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as error:
        raise InputError(f"{where}: {path} is not a readable TIFF ({describe(error)})") from error
    if len(shape) == 3 and shape[0] == 1:
        shape, axes = shape[1:], axes[1:]
    if not (len(shape) == 2 or (len(shape) == 3 and axes[0] in _STACK_AXES)):
        raise InputError(f"{where}: {path} has shape {shape} (axes {axes}); expected one grey-level plane (Y, X) "
                         "or a z-stack (Z, Y, X), one file per channel")
    if labels and not np.issubdtype(dtype, np.integer):
        raise InputError(f"{where}: {path} has dtype {dtype}; a label image holds integer object numbers")
    if not labels and not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{where}: {path} has dtype {dtype}; expected integer or float intensities")
    return TiffInfo(path, shape, dtype)


def _field(values, line, csv_path, channel_names, object_names, base_dir):
    """One checked row; ``channel_names`` and ``object_names`` are the CSV's column names."""
    where = f"{csv_path.name} line {line}"
    for key in KEYS:
        if not values.get(key, "").strip():
            raise InputError(f"{where}: {key} is empty")
    plate = values["Metadata_Plate"].strip()
    if not _PLATE.match(plate):
        raise InputError(f"{where}: Metadata_Plate {plate!r} cannot name a store; use letters, digits, '_', '-', '.'")
    well = _WELL.match(values["Metadata_Well"].strip())
    if not well:
        raise InputError(f"{where}: Metadata_Well {values['Metadata_Well']!r} is not a well such as B03")
    site_text = values["Metadata_Site"].strip()
    if not re.fullmatch(r"[+-]?\d+", site_text):
        raise InputError(f"{where}: Metadata_Site {site_text!r} is not an integer")

    def tiff(prefix, path_prefix, name, labels):
        file_name = values[prefix + name].strip()
        if not file_name:
            raise InputError(f"{where}: {prefix}{name} is empty")
        column = f"{where} {prefix}{name}"
        path = _resolve(values[path_prefix + name].strip(), file_name, csv_path.parent, base_dir, column)
        return _tiff_info(path, column, labels=labels)

    channels = tuple(tiff("FileName_", "PathName_", name, False) for name in channel_names)
    objects = tuple(tiff("ObjectsFileName_", "ObjectsPathName_", name, True) for name in object_names)
    for name, info in [*zip(channel_names, channels), *zip(object_names, objects)]:
        if info.shape != channels[0].shape:
            raise InputError(f"{where}: {info.path} ({name}) has shape {info.shape}, {channels[0].path} "
                             f"({channel_names[0]}) has {channels[0].shape}; the images of one site must have one shape")
    return SourceField(line, plate, well.group(1).upper(), int(well.group(2)), int(site_text), channels, objects)


def _read_rows(csv_path, channels, objects, base_dir):
    """The checked names and fields of a LoadData CSV (:func:`read_loaddata`)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        missing = [key for key in KEYS if key not in header]
        if missing:
            raise InputError(f"{csv_path.name}: no column {', '.join(missing)}; a LoadData CSV names each site by "
                             f"{', '.join(KEYS)}")
        channel_names, channel_columns = _names(header, "FileName_", "PathName_", "channel", channels, csv_path.name)
        object_names, object_columns = _names(header, "ObjectsFileName_", "ObjectsPathName_", "object", objects,
                                              csv_path.name)
        bad = [name for name in object_names if not _PLATE.match(name)]
        if bad:
            raise InputError(f"{csv_path.name}: object name {bad[0]!r} cannot name a label image; use letters, digits, "
                             "'_', '-', '.'")
        if not channel_names:
            raise InputError(f"{csv_path.name}: no FileName_<channel> and PathName_<channel> columns")
        fields, seen = [], {}
        for values in reader:
            if None in values or any(value is None for value in values.values()):
                raise InputError(f"{csv_path.name} line {reader.line_num}: {len(header)} columns in the header, "
                                 "another number in this row")
            field = _field(values, reader.line_num, csv_path, channel_columns, object_columns, base_dir)
            key = (field.plate, field.well, field.site)
            if key in seen:
                raise InputError(f"{csv_path.name} line {field.line}: plate {field.plate}, well {field.well}, site "
                                 f"{field.site} is also on line {seen[key]}")
            seen[key] = field.line
            fields.append(field)
    return channel_names, object_names, channel_columns, object_columns, fields


def read_loaddata(csv_path, *, channels=None, objects=None, base_dir=None) -> Screen:
    """Read and check a LoadData CSV.

    Parameters
    ----------
    csv_path : str or os.PathLike
    channels : sequence of str, optional
        Channels to import, in order: ``name`` as in ``FileName_<name>`` (case-insensitive), or
        ``NAME=name`` to call that channel ``NAME`` in the store (``DNA=OrigDNA``); default:
        every channel of the CSV, in column order.
    objects : sequence of str, optional
        Label images to import (``ObjectsFileName_<name>``, or ``NAME=name``); default: all.
    base_dir : str or os.PathLike, optional
        Folder that relative ``PathName_`` values (and absolute ones that do not exist, and
        URLs such as ``s3://bucket/...``) are taken from, for a screen moved or downloaded
        since the CSV was written; default: the CSV's folder.

    Returns
    -------
    Screen

    Raises
    ------
    InputError
        A missing column, an empty or malformed key, a site that is not an integer, a
        duplicate (plate, well, site), a missing or unreadable TIFF, a TIFF that is not one
        plane or z-stack, images of one site with different shapes; the message names the
        CSV line and the file.
    """
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no such file")
    if base_dir is not None and not pathlib.Path(base_dir).is_dir():
        raise InputError(f"base_dir: {base_dir} is not a directory", argument="base_dir")
    try:
        channel_names, object_names, channel_columns, object_columns, fields = _read_rows(
            csv_path, channels, objects, base_dir)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{csv_path.name}: not a readable CSV ({describe(error)})") from error
    if not fields:
        raise InputError(f"{csv_path.name}: no rows")
    return Screen(csv_path, channel_names, object_names, channel_columns, object_columns, tuple(fields))


def read_tiff(info) -> np.ndarray:
    """The pixels of a checked TIFF, ``([Z,] Y, X)``.

    Raises
    ------
    InputError
        The file changed or is damaged past its header.
    """
    try:
        return tifffile.imread(info.path).reshape(info.shape)
    except (tifffile.TiffFileError, OSError, ValueError) as error:
        raise InputError(f"{info.path}: cannot be read ({describe(error)}); fields written so far are kept, "
                         "run the same command again once it is fixed") from error
