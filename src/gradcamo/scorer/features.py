"""Deep features of the scored cells (``score --features``): the target layer's activations
averaged over space, one float32 column per channel, computed in the scoring pass."""

import pyarrow as pa

from gradcamo import contract
from gradcamo.errors import InputError
from gradcamo.scorer.sink import SCORE_SCHEMA

FEATURE_PREFIX = "feature_"


def feature_names(count) -> list[str]:
    """``feature_0 .. feature_{count-1}``."""
    return [f"{FEATURE_PREFIX}{k}" for k in range(count)]


def score_schema(n_features=0) -> pa.Schema:
    """:data:`SCORE_SCHEMA`, followed by ``n_features`` float32 feature columns."""
    return pa.schema(list(SCORE_SCHEMA) + [(name, pa.float32()) for name in feature_names(n_features)])


def feature_count(info) -> int:
    """Channels of a model's target layer (its ``activations`` output), the number of feature columns.

    Raises
    ------
    InputError
        The graph declares no static channel count.
    """
    channels = info.outputs[contract.ACTIVATIONS]["shape"][1]
    if not isinstance(channels, int) or channels < 1:
        raise InputError(f"features: the model's {contract.ACTIVATIONS} output declares no static channel count "
                         f"({channels!r}); export the model again with gradcamo export", argument="features")
    return channels


def feature_columns(features) -> dict:
    """``{feature_k: (rows,) float32}`` from ``(rows, C)`` pooled activations."""
    return {name: features[:, k].astype("float32") for k, name in enumerate(feature_names(features.shape[1]))}
