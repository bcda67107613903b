"""Which image channels feed the model, and in which order.

Three ways, in this order:

1. ``--channels`` given: names (matched case-insensitively to the store's
   ``omero.channels[].label``) or indices, in the model's order (``match = "option"``);
2. the model records ``gradcamo.channel_names`` and the store labels its channels: each of
   the model's channels is the store's channel of that name (``match = "name"``); a name the
   store lacks is refused;
3. otherwise every channel of the store, in its order (``match = "position"``).
"""

import dataclasses
from collections.abc import Sequence
from typing import overload

from gradcamo.errors import InputError

@dataclasses.dataclass(frozen=True)
class ChannelChoice:
    """The store's channels fed to the model: ``indices`` (None: all, in order) and how they were matched."""

    indices: object
    match: str


def _lookup(labels):
    """``{lower-case label: index}``; labels that repeat (case-insensitively) map to None (ambiguous)."""
    lookup = {}
    for index, label in enumerate(labels):
        key = label.lower()
        lookup[key] = None if key in lookup else index
    return lookup


def _by_name(name, labels, lookup, where, *, model):
    index = lookup.get(name.lower(), -1)
    if index is None:
        raise InputError(f"{where}: the store has several channels named {name!r} ({', '.join(labels)}); "
                         "pick them by index with --channels")
    if index < 0 and model:
        raise InputError(f"{where}: the model expects {name}; the store has {', '.join(labels)}")
    if index < 0:
        raise InputError(f"channels: no channel {name!r} in {where}; the store has {', '.join(labels)}",
                         argument="channels")
    return index


@overload
def parse_channels(requested: None) -> None: ...
@overload
def parse_channels(requested: Sequence[int | str]) -> tuple[int | str, ...]: ...
def parse_channels(requested) -> tuple[int | str, ...] | None:
    """``--channels`` as a tuple of indices (ints; strings of digits too) and names (other strings); None stays None.

    Raises
    ------
    InputError
        An empty item (``0,,1``).
    """
    if requested is None:
        return None
    if any(not str(item).strip() for item in requested):
        raise InputError(f"channels: expected comma-separated channel indices or names, got "
                         f"{','.join(map(str, requested))!r}", argument="channels")
    return tuple(int(item) if isinstance(item, int) or str(item).strip().lstrip("-").isdigit() else str(item).strip()
                 for item in requested)


def choose_channels(source, requested=None, model_names=()) -> ChannelChoice:
    """Decide the channels of one opened image (:class:`gradcamo.data.read.ImageSource`).

    Parameters
    ----------
    source : ImageSource
    requested : sequence of int or str, optional
        ``--channels``: indices, or names of the store's channels (strings of digits are indices).
    model_names : sequence of str
        The model's ``gradcamo.channel_names`` (empty when it records none).

    Returns
    -------
    ChannelChoice

    Raises
    ------
    InputError
        A requested name, or one the model expects, that the store does not have (or has
        twice); a name requested from a store that names no channels.
    """
    where = source.ref.name
    labels = tuple(source.channel_labels)
    lookup = _lookup(labels)
    if requested is not None:
        indices = []
        for item in parse_channels(requested):
            if isinstance(item, int):
                indices.append(item)
            elif not labels:
                raise InputError(f"channels: {item!r} is a name, but {where} does not name its channels "
                                 "(omero.channels[].label); give indices", argument="channels")
            else:
                indices.append(_by_name(item, labels, lookup, where, model=False))
        return ChannelChoice(tuple(indices), "option")
    if model_names and labels:
        return ChannelChoice(tuple(_by_name(name, labels, lookup, where, model=True) for name in model_names), "name")
    return ChannelChoice(None, "position")


def describe_choices(layouts, model_names) -> list[dict]:
    """What a run records about its channels: ``channel_mapping`` in ``_gradcamo.json``.

    Parameters
    ----------
    layouts : iterable of (Layout, channel labels of the store)
        One per image; several images with the same choice are recorded once.
    model_names : sequence of str

    Returns
    -------
    list of dict
        The distinct choices: ``match`` (``option``, ``name``, ``position``), and per model
        channel (in order) the model's ``model`` name, the store's ``index`` and ``label``
        (None where either side names none).
    """
    mapping = []
    for layout, labels in layouts:
        entry = {"match": layout.channel_match, "channels": [
            {"model": model_names[i] if i < len(model_names) else None, "index": int(index),
             "label": labels[index] if index < len(labels) else None}
            for i, index in enumerate(layout.channels)
        ]}
        if entry not in mapping:
            mapping.append(entry)
    return mapping


def channel_note(mapping, model_names) -> str:
    """How a run matched channels (from :func:`describe_choices`), in a phrase for its last line."""
    matches = {entry["match"] for entry in mapping}
    if matches == {"name"}:
        picked = "; ".join(", ".join(f"{c['label']}={c['index']}" for c in entry["channels"]) for entry in mapping)
        return f"channels matched by name ({picked})"
    if matches == {"option"}:
        return "channels chosen by --channels"
    if "position" in matches:
        return f"channels matched by position ({'the store' if model_names else 'the model'} names none)"
    return "channels matched by name or chosen by --channels"
