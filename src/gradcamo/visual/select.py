"""Choose rows of one score dataset with SQL over the ``scores`` view (as ``gradcamo query``)."""

import pyarrow as pa

from gradcamo.errors import InputError
from gradcamo.results.datasets import DATASET_COLUMN, VIEW, resolve_datasets
from gradcamo.results.query import run_query
from gradcamo.options import check_whole_number

DEFAULT_ORDER = "Metadata_Image, Metadata_ObjectNumber, target_class"
VALID_SCORE = "grad_camo IS NOT NULL AND NOT isnan(grad_camo)"


def check_limit(limit, option="--limit") -> int:
    """A whole number >= 1."""
    check_whole_number(limit, option)
    return limit


def select_rows(directory, *, where=None, order_by=None, limit=64, method=None) -> pa.Table:
    """The rows of a score dataset that ``where`` keeps, in ``order_by`` order, at most ``limit``.

    Parameters
    ----------
    directory : path-like
        One score dataset.
    where : str, optional
        SQL condition over the columns of ``scores``, e.g. ``"grad_camo < 0.2"``.
    order_by : str, optional
        SQL ordering; default image, object number, target class.
    limit : int
    method : str, optional
        Only rows of this CAM method.

    Returns
    -------
    pyarrow.Table
        The score columns (without ``dataset``).

    Raises
    ------
    InputError
        SQL that DuckDB rejects, a bad ``limit``, or a ``method`` the dataset does not hold.
    """
    check_limit(limit)
    resolve_datasets([directory], warn=False)  # a path that is no dataset is named as such, not blamed on the SQL
    sql = (
        f"SELECT * EXCLUDE ({DATASET_COLUMN}) FROM {VIEW} WHERE ({where or 'TRUE'}) "
        f"ORDER BY {order_by or DEFAULT_ORDER} LIMIT {limit}"
    )
    try:
        return run_query(directory, sql, method=method, warn=False)
    except InputError as error:
        if error.argument == "method":
            raise
        raise InputError(f"--where {where!r} / --order-by {order_by!r}: {error}") from None
