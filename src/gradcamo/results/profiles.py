"""``gradcamo profiles``: one row per cell in CellProfiler naming, for pycytominer and copairs.

pycytominer finds features by their compartment prefix (``features="infer"`` looks for
``Cells_``, ``Cytoplasm_``, ``Nuclei_``) and metadata by ``Metadata_``. A score dataset has
one row per cell, target and method; a profile table has one row per cell:

* ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Metadata_ObjectNumber``,
  ``Metadata_Image`` (the keys), ``Metadata_PredictedClass``, ``Metadata_EdgePadded``,
  ``Metadata_PadFraction``, ``Metadata_MissingChunks``;
* ``Cells_GradCAMO_<metric>`` for every per-row score (``grad_camo``, ``prob_target``, ...;
  ``pointing_hit`` as 0/1), suffixed ``_<target name>`` when several targets were scored;
* ``Cells_DeepProfile_<k>`` from ``score --features``.
"""

import json
import pathlib
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gradcamo.errors import InputError
from gradcamo.files import atomic_path
from gradcamo.results.datasets import MANIFEST, resolve_datasets
from gradcamo.scorer.features import FEATURE_PREFIX
from gradcamo.scorer.sink import statistics_columns, part_files

KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "Metadata_Image")
COMPARTMENT = "Cells"
SCORE_PREFIX = f"{COMPARTMENT}_GradCAMO_"
FEATURE_OUT_PREFIX = f"{COMPARTMENT}_DeepProfile_"
_NOT_SCORES = {"centroid_z", "centroid_y", "centroid_x", "pad_fraction"}
"""Float columns of the scores that are not per-target scores (locations, the crop's padding)."""


def _scores(directory):
    parts = part_files(directory)
    if not parts:
        raise InputError(f"{directory}: the dataset holds no rows")
    return pa.concat_tables([pq.read_table(path) for path in parts])


def _choose_method(table, manifest, method, directory):
    methods = list((manifest.get("parameters") or {}).get("methods") or ["gradcam"])
    if method is None:
        if len(methods) > 1:
            raise InputError(f"method: {directory} was scored with {', '.join(methods)}; choose one with --method",
                             argument="method")
        method = methods[0]
    if method not in methods:
        raise InputError(f"method: {directory} holds no {method!r} rows (scored with {', '.join(methods)})",
                         argument="method")
    return table.filter(pc.equal(table["method"].cast(pa.string()), method)) if "method" in table.column_names \
        else table


def _score_columns(table):
    return [f.name for f in table.schema if pa.types.is_floating(f.type) and f.name not in _NOT_SCORES
            and not f.name.startswith(FEATURE_PREFIX)] + ["pointing_hit"]


def _slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or "class"


def profile_table(directory, *, method=None) -> pa.Table:
    """The profile rows of one score dataset (module docstring), sorted by image and object number.

    Raises
    ------
    InputError
        Not a score dataset, no rows, several methods and none chosen, an unknown method, or
        targets scored for different cells.
    """
    directory = pathlib.Path(directory)
    resolve_datasets([directory])
    manifest = json.loads((directory / MANIFEST).read_text())
    table = _choose_method(_scores(directory), manifest, method, directory)
    targets = list((manifest.get("parameters") or {}).get("targets") or [-1])
    scores = _score_columns(table)
    groups = [table] if len(targets) == 1 else [table.filter(pc.equal(table["target_class"], t)) for t in targets]
    by_cell = [("Metadata_Image", "ascending"), ("Metadata_ObjectNumber", "ascending")]
    groups = [group.take(pc.sort_indices(group, by_cell)) for group in groups]
    first = groups[0]
    for group in groups[1:]:
        same = (group.num_rows == first.num_rows and group["Metadata_Image"].equals(first["Metadata_Image"])
                and group["Metadata_ObjectNumber"].equals(first["Metadata_ObjectNumber"]))
        if not same:
            raise InputError(f"{directory}: the targets were scored for different cells; profile one target at a time")
    if first.num_rows != len(set(zip(first["Metadata_Image"].to_pylist(), first["Metadata_ObjectNumber"].to_pylist()))):
        raise InputError(f"{directory}: several rows per cell and target; was the dataset written by gradcamo score?")
    columns = {key: first[key] for key in KEYS}
    columns["Metadata_PredictedClass"] = first["predicted_class"]
    columns["Metadata_EdgePadded"] = first["edge_padded"]
    columns["Metadata_PadFraction"] = first["pad_fraction"]
    if "missing_chunks" in first.column_names:  # datasets of the previous release have none
        columns["Metadata_MissingChunks"] = first["missing_chunks"]
    for group in groups:
        suffix = "" if len(groups) == 1 else "_" + _slug(group["target_name"][0].as_py())
        for name in scores:
            values = group[name]
            if name == "pointing_hit":
                values = pc.cast(values, pa.float64())
            columns[f"{SCORE_PREFIX}{name}{suffix}"] = values
    for name in first.column_names:
        if name.startswith(FEATURE_PREFIX):
            columns[FEATURE_OUT_PREFIX + name[len(FEATURE_PREFIX):]] = first[name]
    return pa.table(columns)


def write_profiles(directory, output, *, method=None) -> int:
    """Write :func:`profile_table` of ``directory`` to the Parquet file ``output``; the row count."""
    table = profile_table(directory, method=method)
    with atomic_path(output) as temporary:  # no float statistics: DuckDB reads them as "no NaN"
        pq.write_table(table, temporary, write_statistics=statistics_columns(table.schema))
    return table.num_rows


__all__ = ["profile_table", "write_profiles"]
