"""Checks of option values that several commands share, so that each mistake reads the same everywhere."""

from gradcamo.errors import InputError


def check_whole_number(value, argument, *, minimum=1, optional=False, meaning="") -> int | None:
    """``value`` if it is a whole number >= ``minimum`` (or None, when ``optional``).

    Parameters
    ----------
    value : object
    argument : str
        The Python argument (``batch_size``: the CLI shows ``--batch-size``) or the option
        (``--gallery``) the value was given as; the message begins with it.
    minimum : int
    optional : bool
        None is accepted (the option's default applies).
    meaning : str
        What the number counts, added to the message.

    Raises
    ------
    InputError
        ``value`` is a bool, not an int, or below ``minimum``.

    Examples
    --------
    >>> check_whole_number(8, "threads")
    8
    >>> check_whole_number(0, "threads")
    Traceback (most recent call last):
    ...
    gradcamo.errors.InputError: threads: expected a whole number >= 1, got 0
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        detail = f" ({meaning})" if meaning else ""
        raise InputError(f"{argument}: expected a whole number >= {minimum}{detail}, got {value!r}",
                         argument=None if argument.startswith("-") else argument)
    return value


__all__ = ["check_whole_number"]
