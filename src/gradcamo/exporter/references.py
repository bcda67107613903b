"""Embedding models: K reference vectors turn an (N, D) embedding into K cosine-similarity logits.

Logit k of a crop is the cosine similarity of its embedding to reference k, so the
gradient of logit k is pytorch-grad-cam's ``SimilarityToConceptTarget(reference_k)``,
and targets, methods and scores work as for a classifier.
"""

import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradcamo.errors import InputError, describe

NAME_COLUMN = "name"


def _read_table(path):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path) if path.suffix == ".parquet" else pyarrow.csv.read_csv(path)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"--references: cannot read {str(path)!r} ({describe(error)})") from error
    if NAME_COLUMN not in table.column_names:
        raise InputError(
            f"--references: {str(path)!r} has no {NAME_COLUMN!r} column (columns: {', '.join(table.column_names[:8])}); "
            f"a table of references has one {NAME_COLUMN!r} column and one numeric column per embedding dimension"
        )
    values = table.drop_columns([NAME_COLUMN])
    not_numeric = [f.name for f in values.schema if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not_numeric:
        raise InputError(f"--references: columns of {str(path)!r} that are not numbers: {', '.join(not_numeric[:5])}")
    columns = [c.to_numpy(zero_copy_only=False).astype(np.float64) for c in values.columns]
    vectors = np.column_stack(columns) if columns else np.empty((table.num_rows, 0))
    return vectors, [str(n) for n in table[NAME_COLUMN].to_pylist()]


def read_references(path) -> tuple[np.ndarray, list[str] | None]:
    """The reference vectors ``(K, D)`` float64 and their names (None for a ``.npy`` file).

    ``path`` is a ``.npy`` array, or a ``.parquet``/``.csv`` table with a ``name`` column
    and one numeric column per dimension.

    Raises
    ------
    InputError
        A missing or unreadable file, not (K, D), non-finite values, a zero vector, duplicate names.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"--references: file {str(path)!r} not found")
    if path.suffix in (".parquet", ".csv"):
        vectors, names = _read_table(path)
    elif path.suffix == ".npy":
        try:
            vectors, names = np.load(path, allow_pickle=False), None
        except (ValueError, OSError) as error:
            raise InputError(f"--references: {str(path)!r} is not a numeric .npy array ({describe(error)})") from error
    else:
        raise InputError(f"--references: expected a .npy, .parquet or .csv file, got {str(path)!r}")
    if vectors.ndim != 2 or 0 in vectors.shape or not np.issubdtype(vectors.dtype, np.number):
        raise InputError(f"--references: expected (K, D) numbers, got shape {vectors.shape} of {vectors.dtype}")
    vectors = vectors.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise InputError(f"--references: reference {int(bad[0])} of {str(path)!r} holds NaN or infinite values")
    zero = np.flatnonzero(np.linalg.norm(vectors, axis=1) == 0)
    if zero.size:
        raise InputError(f"--references: reference {int(zero[0])} is all zeros; its cosine similarity is undefined")
    if names is not None and len(set(names)) != len(names):
        raise InputError(f"--references: names in the {NAME_COLUMN!r} column must be unique")
    return vectors, names


def reference_names(names, count) -> list[str]:
    """The names given, else ``ref_0``, ``ref_1``, ..."""
    return names if names is not None else [f"ref_{k}" for k in range(count)]


class CosineSimilarityHead(nn.Module):
    """``model``'s (N, D) embedding -> (N, K) cosine similarities to the K references."""

    def __init__(self, model, references):
        super().__init__()
        self.model = model
        vectors = torch.as_tensor(np.ascontiguousarray(references), dtype=torch.float32)
        # persistent: the references are part of the state dict, so gradcamo.weights_sha256 covers them
        self.register_buffer("references", F.normalize(vectors, dim=1))

    def forward(self, image):
        embedding = self.model(image)
        size = self.references.shape[1]
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[1] != size:
            shown = (
                "(" + ", ".join(["N", *map(str, embedding.shape[1:])]) + ")"
                if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            )
            raise InputError(
                f"--references: the references have D={size} but the model outputs {shown}, not (N, {size}) embeddings"
            )
        return F.normalize(embedding, dim=1) @ self.references.T
