"""The two groups of cells of ``exaggerate``: SQL conditions over a latents dataset (``gradcamo encode``)."""

import dataclasses
import json
import pathlib

import duckdb
import numpy as np

from gradcamo.errors import InputError, first_line
from gradcamo.exaggerate.encode import KIND, code_columns
from gradcamo.results.datasets import DATASET_COLUMN, MANIFEST, VIEW, connect, resolve_datasets
from gradcamo.results.query import to_arrow
from gradcamo.scorer.sink import KEY_FIELDS

KEY_TYPES = {name: kind for name, kind in KEY_FIELDS if name.startswith("Metadata_")}
"""The cell keys (``Metadata_*``) and their Arrow types, as in score and latents datasets."""
KEY_COLUMNS = tuple(KEY_TYPES)


@dataclasses.dataclass(frozen=True)
class Groups:
    """The cells of both groups: ``keys`` {column: (N,) list}, ``codes`` (N, L) float32, ``is_high`` (N,) bool.

    Cells are ordered by image and object number.
    """

    keys: dict
    codes: np.ndarray
    is_high: np.ndarray


def check_latents(latents, latent_size, ae_dir) -> dict:
    """The manifest of a latents dataset whose codes fit an autoencoder with ``latent_size`` features.

    Raises
    ------
    InputError
        Not a dataset, not written by ``gradcamo encode``, or codes of another size.
    """
    if not pathlib.Path(latents).is_dir():
        raise InputError(f"LATENTS {latents}: no such directory; expected a latents dataset written by `gradcamo encode`")
    directory = next(iter(resolve_datasets([latents]).values()))
    manifest = json.loads((directory / MANIFEST).read_text())
    if manifest.get("kind") != KIND:
        raise InputError(f"LATENTS {directory}: not a latents dataset (its {MANIFEST} says kind "
                         f"{manifest.get('kind')!r}); write one with `gradcamo encode`")
    if manifest.get("latent_size") != latent_size:
        raise InputError(
            f"ae_dir {ae_dir}: its latent size {latent_size} differs from the {manifest.get('latent_size')} of the "
            f"codes in {directory} (encoded with {manifest.get('autoencoder')}); use that autoencoder",
            argument="ae_dir",
        )
    return manifest


def _condition(con, option, condition, latents):
    """Count the cells a condition selects; refuse SQL DuckDB rejects and conditions that select none."""
    if not isinstance(condition, str) or not condition.strip():
        raise InputError(f"{option}: expected an SQL condition such as \"Metadata_Well = 'B02'\", got {condition!r}",
                         argument=option)
    try:
        count = con.execute(f"SELECT count(*) FROM {VIEW} WHERE coalesce(({condition}), false)").fetchall()[0][0]
    except duckdb.Error as error:
        raise InputError(f"{option}: {condition!r} is not an SQL condition over the latents: {first_line(error)}",
                         argument=option) from None
    if count == 0:
        raise InputError(f"{option}: {condition!r} selects no cells of {latents}", argument=option)


def read_groups(latents, high, low, latent_size) -> Groups:
    """Keys and codes of the cells that ``high`` or ``low`` selects.

    Parameters
    ----------
    latents : path-like
        A latents dataset (checked with :func:`check_latents` first).
    high, low : str
        DuckDB SQL conditions over its columns (a NULL result counts as false).
    latent_size : int

    Returns
    -------
    Groups

    Raises
    ------
    InputError
        SQL that DuckDB rejects, a condition that selects no cell, or a cell selected by both.
    """
    con = connect(resolve_datasets([latents], warn=False))  # check_latents warned
    try:
        _condition(con, "high", high, latents)
        _condition(con, "low", low, latents)
        flags = f"coalesce(({high}), false) AS _is_high, coalesce(({low}), false) AS _is_low"
        table = to_arrow(con.sql(
            f"SELECT * EXCLUDE ({DATASET_COLUMN}), {flags} FROM {VIEW} "
            f"WHERE coalesce(({high}), false) OR coalesce(({low}), false) ORDER BY Metadata_Image, Metadata_ObjectNumber"
        ))
    finally:
        con.close()
    is_high = np.asarray(table["_is_high"].to_numpy(zero_copy_only=False), dtype=bool)
    both = int((is_high & np.asarray(table["_is_low"].to_numpy(zero_copy_only=False), dtype=bool)).sum())
    if both:
        raise InputError(f"high: {both} cells satisfy both --high {high!r} and --low {low!r}; make the conditions "
                         "exclude each other", argument="high")
    missing = [c for c in code_columns(latent_size) + list(KEY_COLUMNS) if c not in table.column_names]
    if missing:
        raise InputError(f"LATENTS {latents}: lacks the columns {', '.join(missing[:4])}; write it with `gradcamo encode`")
    codes = np.stack([table[c].to_numpy(zero_copy_only=False) for c in code_columns(latent_size)], axis=1)
    keys = {c: table[c].to_pylist() for c in KEY_COLUMNS}
    return Groups(keys, codes.astype(np.float32), is_high)
