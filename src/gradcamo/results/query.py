"""Run SQL over score datasets and write the result as a table, CSV, JSON or Parquet."""

import contextlib
import datetime
import decimal
import io
import json
import math
import pathlib
import sys

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from gradcamo.errors import InputError
from gradcamo.errors import first_line
from gradcamo.results.datasets import connect, resolve_datasets

FORMATS = ("table", "csv", "json", "parquet")
MAX_TABLE_ROWS = 100
_ROW_STATEMENTS = ("SELECT", "EXPLAIN", "PRAGMA", "CALL")
"""Statement types that return rows; DuckDB 2 also returns a row count for CREATE, INSERT, ..."""


def run_query(paths, sql, *, method=None, warn=True) -> pa.Table:
    """Run one SQL query over the view ``scores`` of the given datasets.

    Parameters
    ----------
    paths : str or path-like, or a sequence of them
        Score dataset directories (see :func:`gradcamo.results.datasets.connect` for the
        views they become: ``scores`` with a ``dataset`` column, plus one per dataset
        when there are several).
    sql : str
        DuckDB SQL. With several statements, the result of the last one is returned.
    method : str, optional
        Let the views hold only this CAM method's rows.
    warn : bool
        Warn about incomplete datasets (:func:`gradcamo.results.datasets.resolve_datasets`); False
        where the calling command has resolved them already.

    Returns
    -------
    pyarrow.Table
        The result; an empty table without columns when the last statement is not a
        query (CREATE, INSERT, SET, COPY, ...), whatever DuckDB version runs it.

    Raises
    ------
    InputError
        A path is not a score dataset, or DuckDB rejects the SQL (the message is the
        first line of DuckDB's, e.g. ``Parser Error: syntax error at or near "SELEC"``).
    """
    if not isinstance(sql, str) or not sql.strip():
        raise InputError("SQL: empty query; expected e.g. \"SELECT * FROM scores LIMIT 10\"")
    con = connect(resolve_datasets(paths, warn=warn), method=method)
    try:
        statements = con.extract_statements(sql)
        relation = con.sql(sql)
        if relation is None or not statements or statements[-1].type.name not in _ROW_STATEMENTS:
            return pa.table({})
        return to_arrow(relation)
    except duckdb.Error as error:
        raise InputError(f"SQL: {first_line(error)}") from None
    finally:
        con.close()


def to_arrow(relation) -> pa.Table:
    """A DuckDB relation's rows as an Arrow table (``to_arrow_table`` since duckdb 1.4)."""
    to_table = getattr(relation, "to_arrow_table", None) or relation.arrow
    return to_table()


def write_table(table, format, output=None, *, max_rows=MAX_TABLE_ROWS) -> None:
    """Write an Arrow table to the terminal or to a file.

    Parameters
    ----------
    table : pyarrow.Table
    format : {"table", "csv", "json", "parquet"}
        ``table``: a rich table (at most ``max_rows`` rows, the count of the rest in the
        caption); ``csv``: header + rows, nulls empty; ``json``: a list of records, one
        per line, NaN, infinities and nulls as ``null``; ``parquet``: needs ``output``.
    output : path-like, optional
        File to write; standard output when omitted.
    max_rows : int
        Rows shown by ``format="table"``.

    Raises
    ------
    InputError
        Unknown ``format``; ``parquet`` without ``output``; ``output`` cannot be written;
        a column type the format cannot hold (nested types in CSV).
    """
    if format not in FORMATS:
        raise InputError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if output is not None:
        output = pathlib.Path(output)
        if output.is_dir():
            raise InputError(f"-o {output}: is a directory; expected a file name")
        if not output.parent.is_dir():
            raise InputError(f"-o {output}: the directory {output.parent} does not exist")
    if format == "parquet":
        if output is None:
            raise InputError("--format parquet: needs an output file; pass -o FILE.parquet")
        _guard_oserror(output, lambda: pq.write_table(table, output))
    elif format == "csv":
        _write_csv(table, output)
    elif format == "json":
        with _text_sink(output) as handle:
            _write_json(table, handle)
    else:
        with _text_sink(output) as handle:
            _write_rich(table, handle, max_rows=max_rows, to_file=output is not None)


def _guard_oserror(output, action):
    try:
        return action()
    except OSError as error:
        raise InputError(f"-o {output}: cannot write ({error.strerror or error})") from None


@contextlib.contextmanager
def _text_sink(output):
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    handle = _guard_oserror(output, lambda: open(output, "w", encoding="utf-8", newline=""))
    with handle:
        yield handle


def _plain(table):
    """Dictionary columns decoded to their values (CSV and JSON need plain columns)."""
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _write_csv(table, output):
    table = _plain(table)
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise InputError(
            f"--format csv: column {nested[0]!r} holds nested values ({table.schema.field(nested[0]).type}); "
            "use --format json or parquet, or flatten it in the SQL"
        )
    try:
        if output is not None:
            _guard_oserror(output, lambda: pa_csv.write_csv(table, output))
        else:
            buffer = io.BytesIO()
            pa_csv.write_csv(table, buffer)
            sys.stdout.write(buffer.getvalue().decode("utf-8"))
            sys.stdout.flush()
    except pa.ArrowNotImplementedError as error:
        raise InputError(f"--format csv: {first_line(error)}; use --format json or parquet") from None


def _json_value(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def _write_json(table, handle):
    handle.write("[")
    first = True
    for batch in _plain(table).to_batches():
        for record in batch.to_pylist():
            handle.write("\n" if first else ",\n")
            first = False
            handle.write(json.dumps(_json_value(record), allow_nan=False, default=str, ensure_ascii=False))
    handle.write("\n]\n" if not first else "]\n")


def _cell_text(value):
    if value is None:
        return "null"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _write_rich(table, handle, *, max_rows, to_file):
    from rich.console import Console
    from rich.table import Table

    shown = table.slice(0, max_rows)
    view = Table(show_lines=False)
    for field in table.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        view.add_column(field.name, justify="right" if numeric else "left")
    columns = [[_cell_text(value) for value in column.to_pylist()] for column in _plain(shown).columns]
    for row in zip(*columns):
        view.add_row(*row)
    # the width that shows every header and value in full (rich shrinks columns to fit)
    natural = max(
        40, 1 + sum(3 + max([len(name)] + [len(text) for text in texts]) for name, texts in zip(table.column_names, columns))
    )
    rest = table.num_rows - shown.num_rows
    noun = "row" if table.num_rows == 1 else "rows"
    caption = (
        f"{shown.num_rows} of {table.num_rows} rows shown; use --format csv, json or parquet for all"
        if rest
        else f"{table.num_rows} {noun}"
    )
    if to_file:
        console = Console(file=handle, no_color=True, width=natural)
    elif getattr(handle, "isatty", lambda: False)():
        console = Console(file=handle)  # the terminal's width: columns too wide are shortened with …
    else:
        console = Console(file=handle, width=natural)  # piped: keep every value whole
    console.print(view)
    console.print(caption, style="dim", soft_wrap=True)


__all__ = ["FORMATS", "run_query", "write_table"]
