"""The Parquet dataset scores are written to: schema, atomic part files, manifest, lock.

Layout of a dataset directory (docs/score.md, "Output")::

    part-<unit id>.parquet   one per finished work unit (possibly 0 rows)
    _gradcamo.json           version, parameters, counts, start/end time
    _gradcamo.lock           present while a scorer writes (holds its pid and host)

Every part is written to a dot-prefixed temporary name, fsynced and renamed, so a killed
run never leaves a half file under a ``part-*`` name; a resumed run with the same
parameters keeps finished parts and computes the rest.
"""

import contextlib
from collections.abc import Iterator
import datetime
import json
import logging
import os
import pathlib
import shutil
import socket

import pyarrow as pa
import pyarrow.parquet as pq

import gradcamo
from gradcamo.errors import GradcamoError, InputError
from gradcamo.files import atomic_path

LOGGER = logging.getLogger(__name__)

MANIFEST = "_gradcamo.json"
LOCK = "_gradcamo.lock"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
MANIFEST_VERSION = 1

_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
KEY_FIELDS = (
    ("Metadata_Plate", pa.string()),
    ("Metadata_Well", pa.string()),
    ("Metadata_Site", pa.int32()),
    ("Metadata_Image", pa.string()),
    ("Metadata_ObjectNumber", pa.int64()),
    ("centroid_z", pa.float64()),
    ("centroid_y", pa.float64()),
    ("centroid_x", pa.float64()),
    ("object_voxels", pa.int64()),
)
"""The columns that identify a cell, first in every per-cell dataset (scores, latents)."""
SCORE_SCHEMA = pa.schema(
    [
        *KEY_FIELDS,
        ("target_class", pa.int32()),
        ("predicted_class", pa.int32()),
        ("target_name", pa.string()),
        ("method", _DICTIONARY),
        ("logit_target", pa.float32()),
        ("prob_target", pa.float32()),
        ("cam_inside", pa.float64()),
        ("cam_total", pa.float64()),
        ("grad_camo", pa.float64()),
        ("cam_empty", pa.bool_()),
        ("edge_padded", pa.bool_()),
        ("pad_fraction", pa.float32()),
        ("mask_fraction", pa.float64()),
        ("enrichment", pa.float64()),
        ("rank_accuracy", pa.float64()),
        ("pointing_hit", pa.bool_()),
        ("missing_chunks", pa.bool_()),
        ("model_sha256", _DICTIONARY),
        ("target_layer", _DICTIONARY),
        ("convention", _DICTIONARY),
    ]
)
def make_table(columns, *, provenance, schema=SCORE_SCHEMA) -> pa.Table:
    """An Arrow table with ``schema`` from per-column sequences.

    Parameters
    ----------
    columns : dict
        Every column of the schema not in ``provenance``, as equal-length sequences; an
        empty dict gives a 0-row table.
    provenance : dict
        One string each, recorded in the schema metadata (``gradcamo.<key>``) and, for the
        keys that are columns of ``schema`` (the scores' ``model_sha256``, ``target_layer``
        and ``convention``), repeated on every row.
    schema : pyarrow.Schema
        :data:`SCORE_SCHEMA`, or another per-cell schema (the latents').
    """
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field in schema:
        if field.name in provenance:
            values = pa.array([provenance[field.name]] * n, pa.string()).dictionary_encode()
            arrays.append(values.cast(field.type))
        else:
            arrays.append(pa.array(columns[field.name] if columns else [], field.type))
    metadata = {"gradcamo.version": gradcamo.__version__, **{f"gradcamo.{k}": v for k, v in provenance.items()}}
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata))


def _part_name(unit_id):
    return f"{PART_PREFIX}{unit_id}{PART_SUFFIX}"


def statistics_columns(schema) -> list[str]:
    """Columns given min/max statistics: all but floating point ones.

    Parquet min/max statistics leave NaN out, and DuckDB 2.0 trusts them to mean "no NaN":
    it folds ``isnan(grad_camo)`` to false and prunes ``WHERE isnan(...)`` row groups, so
    NaN scores would count as valid numbers (mean NaN) and be invisible to filters.
    """
    return [field.name for field in schema if not pa.types.is_floating(field.type)]


def _is_part(name):
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def _is_ours(name):
    return _is_part(name) or name in (MANIFEST, LOCK) or name.startswith(TEMP_PREFIX)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomically(path, value):
    with atomic_path(path, temporary=path.with_name(f"{TEMP_PREFIX}{path.name}")) as temporary:
        temporary.write_text(json.dumps(value, indent=2, sort_keys=True))


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LATER_PARAMETERS = {
    "site_base": lambda value: value == 0,
    "channel_mapping": lambda mapping: all(entry["match"] != "name" for entry in mapping),
}
"""Parameters added after the first release, and whether a new value is what that release did (it numbered
sites from 0 and matched channels by position or by --channels indices): a dataset it wrote lacks them, and
a run that agrees resumes it."""


def _changed_parameters(old, new):
    """Names of the parameters that differ between a dataset's manifest (``old``) and a run (``new``).

    A parameter recorded as false or null is what a run that does not record it did (a run records
    the causal checks only when asked for one: ``ablation: false`` is no ablation).
    """
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                  and not (_is_unset(old.get(k)) and _is_unset(new.get(k)))
                  and not (k not in old and k in LATER_PARAMETERS and LATER_PARAMETERS[k](new[k])))


def _is_unset(value):
    """False or None (not 0: ``timepoint: 0`` is a choice)."""
    return value is None or value is False


def _part_problem(path, expected):
    """Why a part file cannot be kept (None where it can)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return "is damaged"
    if not schema.remove_metadata().equals(expected):
        return "has other columns (written by an earlier release or another pass)"
    return None


class ScoreDataset:
    """A dataset directory opened for writing by one scorer; use :meth:`open`.

    Its parts hold :data:`SCORE_SCHEMA`'s columns, or those of the schema given to :meth:`open`
    (``encode`` writes latent codes through the same machinery).
    """

    def __init__(self, directory, parameters, manifest, schema=SCORE_SCHEMA):
        self.directory = directory
        self.parameters = parameters
        self.schema = schema
        self._manifest = manifest

    @classmethod
    @contextlib.contextmanager
    def open(cls, directory, parameters, *, overwrite=False, schema=SCORE_SCHEMA) -> Iterator["ScoreDataset"]:
        """Create, resume or (with ``overwrite``) replace the dataset in ``directory``.

        A part whose columns are not ``schema``'s (damaged, or written by an earlier release) is
        deleted: its unit is done again.

        Raises
        ------
        InputError
            ``directory`` is not a directory, holds files gradcamo did not write, holds a
            dataset made with other ``parameters`` (without ``overwrite``), or another
            live scorer is writing to it.
        """
        directory = pathlib.Path(directory)
        parameters = json.loads(json.dumps(parameters))
        created = not directory.exists()
        if directory.exists() and not directory.is_dir():
            raise InputError(f"output {directory}: exists and is not a directory", argument="output")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"output {directory}: cannot create the directory ({error.strerror})", argument="output") from None
        if not os.access(directory, os.W_OK):
            raise InputError(f"output {directory}: the directory is not writable", argument="output")
        foreign = sorted(name for name in os.listdir(directory) if not _is_ours(name))
        if foreign:
            raise InputError(
                f"output {directory}: holds files gradcamo did not write ({', '.join(foreign[:3])}); "
                "choose a new or empty directory",
                argument="output",
            )
        try:
            with _lock(directory):
                manifest = cls._prepare(directory, parameters, overwrite)
                yield cls(directory, parameters, manifest, schema)
        except GradcamoError:
            if created and not part_files(directory):
                shutil.rmtree(directory, ignore_errors=True)  # bad input found late: leave nothing behind
            raise

    @staticmethod
    def _prepare(directory, parameters, overwrite):
        manifest_path = directory / MANIFEST
        names = os.listdir(directory)
        for name in names:
            if name.startswith(TEMP_PREFIX):
                os.remove(directory / name)
        previous = None
        if manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise InputError(f"output {directory}: {MANIFEST} is unreadable; use a new directory", argument="output") from None
        elif any(_is_part(name) for name in names):
            raise InputError(f"output {directory}: holds part files but no {MANIFEST}; use a new directory", argument="output")
        changed = None if previous is None else _changed_parameters(previous.get("parameters") or {}, parameters)
        if changed:
            if not overwrite:
                raise InputError(
                    f"output {directory}: holds rows made with other parameters "
                    f"({', '.join(changed)}); pass --overwrite to replace them or choose another "
                    "directory",
                    argument="output",
                )
            LOGGER.warning("replacing the rows in %s (--overwrite)", directory)
            for name in os.listdir(directory):
                if _is_part(name):
                    os.remove(directory / name)
            previous = None
        manifest = {
            "version": MANIFEST_VERSION,
            "gradcamo_version": gradcamo.__version__,
            "parameters": parameters,
            "started": (previous or {}).get("started", _now()),
            "finished": None,
            "counts": None,
        }
        if (previous or {}).get("missing_chunks"):  # the kept parts' rows were read with them
            manifest["missing_chunks"] = previous["missing_chunks"]
        _write_json_atomically(manifest_path, manifest)
        return manifest

    def completed_units(self) -> set[str]:
        """Unit ids whose part file is present and readable; damaged parts and parts with other columns are deleted."""
        done = set()
        for name in sorted(os.listdir(self.directory)):
            if not _is_part(name):
                continue
            path = self.directory / name
            problem = _part_problem(path, self.schema)
            if problem is None:
                done.add(name[len(PART_PREFIX):-len(PART_SUFFIX)])
            else:
                LOGGER.warning("%s %s; its unit will be scored again", path, problem)
                os.remove(path)
        return done

    def write_part(self, unit_id, table) -> None:
        """Write one unit's rows as ``part-<unit_id>.parquet`` (temporary name, fsync, rename)."""
        final = self.directory / _part_name(unit_id)
        with atomic_path(final, temporary=self.directory / f"{TEMP_PREFIX}{final.name}") as temporary:
            pq.write_table(table, temporary, write_statistics=statistics_columns(table.schema))

    def missing_chunks(self) -> dict:
        """Image name -> image chunks its rows were read with as the fill value (``--missing-chunks zeros``)."""
        return dict(self._manifest.get("missing_chunks") or {})

    def record(self, **entries) -> None:
        """Write top-level manifest entries that are not parameters (they may change on resume)."""
        self._manifest.update(entries)
        _write_json_atomically(self.directory / MANIFEST, self._manifest)

    def finish(self, counts, *, failures=(), stopped_early=False) -> None:
        """Record the counts, failed units and end time: the run is over (complete when
        ``failures`` is empty)."""
        self._manifest.update(counts=counts, failures=list(failures), stopped_early=stopped_early, finished=_now())
        _write_json_atomically(self.directory / MANIFEST, self._manifest)


@contextlib.contextmanager
def _lock(directory):
    """Hold ``_gradcamo.lock`` for the duration; a lock left by a dead process is taken over."""
    path = directory / LOCK
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                holder = {}
            same_host = holder.get("host") == owner["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
                LOGGER.warning("taking over %s left by process %d, which no longer runs", path, holder["pid"])
                os.remove(path)
                continue
            raise InputError(
                f"output {directory}: another gradcamo run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}) is writing there; wait for it, or delete {path} if it is gone",
                argument="output",
            ) from None
        with os.fdopen(descriptor, "w") as handle:
            json.dump(owner, handle)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def part_files(directory) -> list[pathlib.Path]:
    """The part files of a dataset directory, sorted."""
    return sorted(pathlib.Path(directory).glob(f"{PART_PREFIX}*{PART_SUFFIX}"))


def read_scores(directory) -> pa.Table:
    """All rows of a score dataset as one Arrow table (``.to_pandas()``, ``polars.from_arrow``).

    Raises
    ------
    InputError
        ``directory`` is not a gradcamo score dataset.
    """
    directory = pathlib.Path(directory)
    if not (directory / MANIFEST).is_file():
        raise InputError(f"{directory}: not a gradcamo score dataset (no {MANIFEST})")
    parts = part_files(directory)
    if not parts:
        return SCORE_SCHEMA.empty_table()
    schema = pq.read_schema(parts[0]).remove_metadata()  # SCORE_SCHEMA and any optional columns (--ablation, ...)
    tables = [pq.read_table(path, schema=schema) for path in parts]
    return pa.concat_tables(tables).replace_schema_metadata(pq.read_schema(parts[0]).metadata)


__all__ = ["SCORE_SCHEMA", "ScoreDataset", "make_table", "part_files", "read_scores"]
