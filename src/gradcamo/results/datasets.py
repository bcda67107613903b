"""Find score datasets on disk and expose them to DuckDB as views.

A score dataset is a directory with ``_gradcamo.json`` and ``part-*.parquet`` files
(docs/score.md, "Output"). :func:`connect` gives an in-memory DuckDB connection with

* a view ``scores``: every row of every dataset, with a leading ``dataset`` column
  (the dataset's name) -- also when there is only one dataset, so a query or a
  ``summary --by dataset`` works the same for one dataset or many;
* with several datasets, one view per dataset as well, named after the dataset
  (sanitised to a plain SQL identifier, e.g. ``run-1/scores`` -> ``run_1_scores``).
"""

import json
import logging
import pathlib
import re

import duckdb
import pyarrow as pa

from gradcamo.errors import InputError
from gradcamo.errors import first_line
from gradcamo.wording import counted

LOGGER = logging.getLogger(__name__)

MANIFEST = "_gradcamo.json"
PART_GLOB = "part-*.parquet"
VIEW = "scores"
DATASET_COLUMN = "dataset"
DEFAULT_METHODS = ("gradcam",)


def resolve_datasets(paths, *, warn=True) -> dict[str, pathlib.Path]:
    """Check that each path is a score dataset and give each a short, unique name.

    Parameters
    ----------
    paths : str or path-like, or a sequence of them
        Dataset directories, in the order they should appear.
    warn : bool
        Log a warning for each dataset that lacks rows (:func:`incompleteness`) or was read
        with missing chunks as zeros. A command resolves its datasets once and warns then;
        the functions it calls afterwards check again with ``warn=False``.

    Returns
    -------
    dict of str to pathlib.Path
        Name -> directory, in the order given. The name is the directory's name; names
        that occur more than once get as many parent directories as needed to tell them
        apart (``a/scores``, ``b/scores``).

    Raises
    ------
    InputError
        No path was given, a path does not exist, is not a directory, has no readable
        ``_gradcamo.json`` manifest, or the same directory is given twice.
    """
    if isinstance(paths, (str, pathlib.PurePath)):
        paths = [paths]
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
        raise InputError("SCORES: no score dataset given; pass the directory written by `gradcamo score`")
    seen: dict = {}
    for path in paths:
        _check_dataset(path, warn)
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(f"SCORES: {path} is given twice (also as {seen[resolved]}); give each dataset once")
        seen[resolved] = path
    return dict(zip(_unique_names(list(seen)), paths))


def _check_dataset(path, warn):
    if not path.exists():
        raise InputError(f"{path}: no such directory; expected a score dataset written by `gradcamo score`")
    if not path.is_dir():
        raise InputError(f"{path}: is a file; expected a score dataset directory (with {MANIFEST} and {PART_GLOB})")
    manifest = path / MANIFEST
    if not manifest.is_file():
        has_parts = any(path.glob(PART_GLOB))
        found = f"it has {PART_GLOB} files but" if has_parts else "it"
        raise InputError(
            f"{path}: not a gradcamo score dataset ({found} has no {MANIFEST}); "
            "expected a directory written by `gradcamo score`"
        )
    try:
        content = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{manifest}: unreadable manifest ({error}); expected the JSON written by `gradcamo score`") from None
    if not isinstance(content, dict):
        raise InputError(f"{manifest}: expected a JSON object, got {type(content).__name__}")
    missing = incompleteness(content)
    if warn and missing:
        LOGGER.warning("%s: incomplete: %s", path, missing)
    zeros = describe_missing_chunks(content.get("missing_chunks"))
    if warn and zeros:
        LOGGER.warning("%s: %s", path, zeros)


def incompleteness(manifest) -> str | None:
    """Why a dataset lacks rows, in one sentence; None when its scoring run finished without failures.

    Parameters
    ----------
    manifest : dict
        The dataset's ``_gradcamo.json``.

    Returns
    -------
    str or None
        ``"the scoring run has not finished ..."`` (running, killed or interrupted), or
        ``"2 work units failed (first: image (block): cause) ..."``.
    """
    if manifest.get("counts") is None:
        return ("the scoring run has not finished (it is running, or was killed or interrupted); "
                "run the same `gradcamo score` command again to complete it")
    failures = manifest.get("failures") or []
    if not failures:
        return None
    first = failures[0]
    units = counted(manifest["counts"].get("units", "?"), "work unit")
    return (f"{len(failures)} of {units} failed (first: {first.get('image')} "
            f"({first.get('block')}): {first.get('cause')}); their cells are missing; run the same "
            "`gradcamo score` command again to retry them")


def describe_missing_chunks(missing) -> str | None:
    """One sentence on the image chunks a dataset's rows were read with as the fill value.

    Parameters
    ----------
    missing : dict
        ``_gradcamo.json``'s ``missing_chunks``: image name -> chunk locations.

    Returns
    -------
    str or None
        ``"3 missing image chunks read as zeros (--missing-chunks zeros) in 1 image (plate.zarr/A/2/0: 3); the
        rows read with them have missing_chunks = true"``; None when there were none.
    """
    if not missing:
        return None
    count = sum(len(chunks) for chunks in missing.values())
    shown = ", ".join(f"{image}: {len(chunks)}" for image, chunks in list(missing.items())[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"{counted(count, 'missing image chunk')} read as zeros (--missing-chunks zeros) in "
            f"{counted(len(missing), 'image')} ({shown}{more}); the rows read with them have missing_chunks = true")


def _unique_names(resolved):
    """Shortest trailing path pieces that tell the directories apart ("scores", "a/scores")."""
    depth = {path: 1 for path in resolved}

    def name(path):
        parts = path.parts[-depth[path]:]
        return "/".join(p for p in parts if p != path.anchor) or str(path)

    while True:
        by_name = {}
        for path in resolved:
            by_name.setdefault(name(path), []).append(path)
        clashes = [group for group in by_name.values() if len(group) > 1]
        if not clashes:
            return [name(path) for path in resolved]
        grew = False
        for group in clashes:
            for path in group:
                if depth[path] < len(path.parts):
                    depth[path] += 1
                    grew = True
        if not grew:  # cannot happen for distinct resolved paths; keep a safe fallback
            return [str(path) for path in resolved]


def view_names(datasets) -> dict[str, str]:
    """SQL view name for each dataset name (only created when there are several datasets).

    Every run of characters outside ``[A-Za-z0-9_]`` becomes one ``_``, a leading digit gets a ``d_``
    prefix, and a name equal to ``scores`` or to an earlier view (DuckDB compares names
    case-insensitively) gets ``_2``, ``_3``, ... appended.

    Parameters
    ----------
    datasets : iterable of str
        Dataset names, as the keys of :func:`resolve_datasets`.

    Returns
    -------
    dict of str to str
        Dataset name -> view name.
    """
    taken = {VIEW}
    views = {}
    for name in datasets:
        base = re.sub(r"\W+", "_", name, flags=re.ASCII).strip("_") or "dataset"
        if base[0].isdigit():
            base = f"d_{base}"
        view, n = base, 1
        while view.lower() in taken:
            n += 1
            view = f"{base}_{n}"
        taken.add(view.lower())
        views[name] = view
    return views


def recorded_methods(path) -> tuple[str, ...] | None:
    """The CAM methods a score dataset's manifest says were scored (``parameters.methods``), in
    that order; None when it records none (datasets written before methods existed)."""
    methods = (json.loads((pathlib.Path(path) / MANIFEST).read_text()).get("parameters") or {}).get("methods")
    return tuple(methods) if methods else None


def _method_condition(con, name, path, source, method):
    """SQL condition keeping one dataset's rows of ``method``; InputError when it holds none.

    Without a ``method`` column every row is a Grad-CAM row (written before methods existed).
    """
    has_column = "method" in [c[0] for c in con.execute(f"SELECT * FROM {source} LIMIT 0").description]
    held = f"SELECT DISTINCT coalesce(method::VARCHAR, 'gradcam') FROM {source} ORDER BY 1"
    methods = recorded_methods(path) or (
        tuple(m for (m,) in con.execute(held).fetchall()) if has_column else DEFAULT_METHODS
    )
    if method not in methods:
        raise InputError(f"method: {name} holds no {method!r} rows (scored with {', '.join(methods) or 'none'})",
                         argument="method")
    return f"coalesce(method::VARCHAR, 'gradcam') = {_literal(method)}" if has_column else "TRUE"


def connect(datasets, *, method=None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``scores`` (and one per dataset).

    Parameters
    ----------
    datasets : dict of str to path-like
        Name -> dataset directory, as returned by :func:`resolve_datasets`.
    method : str, optional
        Keep only the rows of this CAM method (``gradcam``, ``hirescam``, ...) in every view.

    Returns
    -------
    duckdb.DuckDBPyConnection
        ``scores`` holds every row of every dataset with a leading ``dataset`` column
        (the name). With more than one dataset, each also has its own view without the
        ``dataset`` column, named by :func:`view_names`. A dataset without rows (no part
        files, or only empty ones) still has all the columns.

    Raises
    ------
    InputError
        A part file cannot be read as Parquet, or a dataset holds no rows of ``method``.
    """
    if not datasets:
        raise InputError("SCORES: no score dataset given; pass the directory written by `gradcamo score`")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")
        # DuckDB 2.0 takes Parquet min/max statistics (which leave NaN out) to mean "no NaN"
        # and folds isnan(grad_camo) to false; part files written before the sink stopped
        # writing float statistics have them, so do not let statistics rewrite expressions.
        con.execute("SET disabled_optimizers = 'statistics_propagation'")
        sources = {name: _source(con, i, pathlib.Path(path)) for i, (name, path) in enumerate(datasets.items())}
        if method is not None:
            sources = {
                name: f"(SELECT * FROM {source} WHERE {_method_condition(con, name, datasets[name], source, method)})"
                for name, source in sources.items()
            }
        selects = [f"SELECT {_literal(name)} AS {DATASET_COLUMN}, * FROM {source}" for name, source in sources.items()]
        con.execute(f"CREATE VIEW {VIEW} AS " + " UNION ALL BY NAME ".join(selects))
        if len(datasets) > 1:
            for name, view in view_names(datasets).items():
                con.execute(f"CREATE VIEW {quote_identifier(view)} AS SELECT * FROM {sources[name]}")
    except duckdb.Error as error:
        con.close()
        raise InputError(f"SCORES: cannot read the part files: {first_line(error)}") from None
    except BaseException:
        con.close()
        raise
    return con


def _source(con, index, path):
    """SQL table expression for one dataset's rows."""
    parts = sorted(path.glob(PART_GLOB))
    if parts:
        # An explicit list instead of a glob string: directory names holding glob
        # characters ([, *, ?) stay literal, and the file set is fixed at connect time.
        files = ", ".join(_literal(str(p)) for p in parts)
        try:
            con.execute(f"SELECT * FROM read_parquet([{files}], union_by_name = true) LIMIT 0")
        except duckdb.Error as error:
            raise InputError(f"{path}: cannot read its part files: {first_line(error)}") from None
        return f"read_parquet([{files}], union_by_name = true)"
    # No part file at all (nothing was scored yet, or an empty label image): an empty
    # relation with the score schema, so that queries and summaries still bind.
    from gradcamo.scorer.sink import SCORE_SCHEMA

    table = f"_empty_scores_{index}"
    con.register(table, pa.Table.from_batches([], schema=SCORE_SCHEMA.remove_metadata()))
    return quote_identifier(table)


def _literal(text):
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def quote_identifier(text) -> str:
    """A quoted SQL identifier."""
    return '"' + str(text).replace('"', '""') + '"'


__all__ = ["connect", "incompleteness", "quote_identifier", "recorded_methods", "resolve_datasets", "view_names"]
