"""``gradcamo import``: a CellProfiler LoadData CSV -> one OME-Zarr 0.5 HCS plate per ``Metadata_Plate``.

Each plate is ``<output>/<Metadata_Plate>.zarr``, written with ome-zarr-py: rows and columns
from ``Metadata_Well``, a well's fields in site order, one ``(C, [Z,] Y, X)`` image per field
(chunks of one plane, Zstandard-compressed) whose ``omero.channels[].label`` are the CSV's
channel names, and each object set's label image under the field's ``labels/<name>``. The
field group's ``gradcamo`` attribute records its source: ``site`` (the CSV's
``Metadata_Site``, which the scorer writes as ``Metadata_Site``), the CSV ``line`` and the
TIFF ``files`` and ``objects`` it came from.

Fields are written on threads (reading TIFFs and compressing chunks release the GIL), each
under a temporary name renamed when complete; the plate and well metadata are written last,
so a store is an OME-Zarr plate only once every field is in. Running the same import again
keeps the finished fields and writes the rest.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import time

import numpy as np
import zarr
from ome_zarr.format import format_from_version
from ome_zarr.writer import write_plate_metadata, write_well_metadata

from gradcamo.data.loaddata import read_loaddata, read_tiff
from gradcamo.data.read import RECORD
from gradcamo.data.write import write_field
from gradcamo.errors import InputError, Interrupted
from gradcamo.progress import cell_progress
from gradcamo.options import check_whole_number
from gradcamo.wording import counted

IMPORT_THREADS = 8
"""Fields written at once: the work is reading TIFFs and compressing chunks, mostly outside the GIL."""
NGFF_VERSION = "0.5"


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_loaddata` did: the plates written, fields written now and kept from before."""

    output: str
    plates: tuple
    fields: int
    fields_resumed: int
    seconds: float


def _plan(screen, output):
    """``{store: {(row, column): [field, ...]}}`` and ``[(field, path of its group), ...]``."""
    stores, placed = {}, []
    for plate, fields in screen.plates().items():
        store = output / f"{plate}.zarr"
        wells = stores.setdefault(store, {})
        for field in fields:
            wells.setdefault((field.row, field.column), []).append(field)
        for (row, column), well_fields in wells.items():
            placed += [(field, store / row / str(column) / str(index)) for index, field in enumerate(well_fields)]
    return stores, placed


def _recorded(path):
    """The ``gradcamo`` record of an existing field group, else None (absent or not ours)."""
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(RECORD)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError, ValueError):
        return None


def _same_source(record, expected):
    """Whether a finished field came from the same site and files (names only: a moved screen still matches)."""
    if not isinstance(record, dict) or record.get("site") != expected["site"]:
        return False
    names = {key: {name: pathlib.PurePath(path).name for name, path in (record.get(key) or {}).items()}
             for key in ("files", "objects")}
    return names == {key: {name: pathlib.PurePath(path).name for name, path in expected[key].items()}
                     for key in ("files", "objects")}


def _check_output(stores, placed, screen):
    """Refuse an output that holds something else where a plate or field goes; return the finished fields."""
    for store in stores:
        if store.exists() and not store.is_dir():
            raise InputError(f"output {store}: exists and is not a directory", argument="output")
    finished = set()
    for field, path in placed:
        if not path.exists():
            continue
        record = _recorded(path)
        if not _same_source(record, field.record(screen.channel_names, screen.object_names)):
            raise InputError(f"output {path}: holds a field that was not imported from {screen.csv.name} line "
                             f"{field.line} (site {field.site}, the same files); choose another output directory",
                             argument="output")
        finished.add(path)
    return finished


def _write_field(field, path, screen):
    """Read one site's TIFFs and write its field group under a temporary name, renamed when complete."""
    image = np.stack([read_tiff(info) for info in field.channels]).astype(
        np.result_type(*(info.dtype for info in field.channels)), copy=False)
    labels = {name: read_tiff(info) for name, info in zip(screen.object_names, field.objects)}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        write_field(group, image, labels, channel_names=screen.channel_names, ngff_version=NGFF_VERSION)
        group.attrs[RECORD] = field.record(screen.channel_names, screen.object_names)
        os.rename(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_metadata(store, wells, screen):
    """The plate's and its wells' OME metadata: written last, once every field is in place."""
    fmt = format_from_version(NGFF_VERSION)
    root = zarr.open_group(str(store), mode="a", zarr_format=3)
    keys = sorted(wells, key=lambda key: (len(key[0]), key[0], key[1]))
    rows = sorted({row for row, _ in keys}, key=lambda row: (len(row), row))
    columns = sorted({column for _, column in keys})
    write_plate_metadata(
        root, rows, [str(column) for column in columns], [f"{row}/{column}" for row, column in keys], fmt=fmt,
        name=store.name[:-len(".zarr")], field_count=max(len(fields) for fields in wells.values()),
    )
    root.attrs[RECORD] = {"loaddata": str(screen.csv), "channels": list(screen.channel_names),
                          "objects": list(screen.object_names)}
    for (row, column), fields in wells.items():
        well = root.require_group(f"{row}/{column}")
        write_well_metadata(well, [{"path": str(index)} for index in range(len(fields))], fmt=fmt)


def import_loaddata(csv_path, output, *, channels=None, objects=None, base_dir=None, threads=IMPORT_THREADS,
                    progress=False) -> ImportSummary:
    """Import the screen a LoadData CSV lists as OME-Zarr 0.5 plates under ``output``.

    Parameters
    ----------
    csv_path : str or os.PathLike
        CellProfiler LoadData CSV (:func:`gradcamo.data.loaddata.read_loaddata`).
    output : str or os.PathLike
        Directory that receives ``<Metadata_Plate>.zarr`` per plate.
    channels, objects : sequence of str, optional
        Channels (in order) and object sets to import; default all.
    base_dir : str or os.PathLike, optional
        Folder the CSV's paths are taken from, for a moved screen.
    threads : int
        Fields written at once.
    progress : bool
        Show fields, fields/s and ETA on stderr.

    Returns
    -------
    ImportSummary

    Raises
    ------
    InputError
        A bad CSV (naming its line and file) or an output holding other data where a plate
        goes; found before anything is written.
    Interrupted
        SIGINT/SIGTERM (or KeyboardInterrupt): the fields being written are finished, the
        others left for the next run; the message says how many are done.
    """
    started = time.time()
    check_whole_number(threads, "threads")
    screen = read_loaddata(csv_path, channels=channels, objects=objects, base_dir=base_dir)
    output = pathlib.Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output}: exists and is not a directory", argument="output")
    stores, placed = _plan(screen, output)
    finished = _check_output(stores, placed, screen)
    todo = [(field, path) for field, path in placed if path not in finished]
    for store, wells in stores.items():
        for row, column in wells:
            well = store / row / str(column)
            well.mkdir(parents=True, exist_ok=True)
            for stale in well.glob(".*.tmp-*"):  # left by an import that was killed
                shutil.rmtree(stale, ignore_errors=True)
    done = 0
    with cell_progress(progress, unit="fields") as bar, concurrent.futures.ThreadPoolExecutor(threads) as pool:
        task = bar.add_task("imported", total=len(todo))
        futures = [pool.submit(_write_field, field, path, screen) for field, path in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
                done += 1
                bar.update(task, advance=1)
        except BaseException as stop:
            for future in futures:
                future.cancel()
            if isinstance(stop, (KeyboardInterrupt, Interrupted)):
                raise Interrupted(f"{len(finished) + done} of {counted(len(placed), 'field')} imported, kept in "
                                  f"{output}; run the same command again to import the rest") from stop
            raise
    for store, wells in stores.items():
        _write_metadata(store, wells, screen)
    return ImportSummary(str(output), tuple(str(store) for store in stores), len(todo), len(finished),
                         time.time() - started)


__all__ = ["ImportSummary", "import_loaddata"]
