"""How messages say a count: ``1 cell``, ``0 cells``, ``2 work units``."""


def counted(n, noun, spec="") -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1; ``spec`` formats ``n`` (``","``: ``12,345 cells``).

    Examples
    --------
    >>> counted(1, "cell"), counted(0, "work unit"), counted(12345, "cell", ",")
    ('1 cell', '0 work units', '12,345 cells')
    """
    return f"{n:{spec}} {noun}{'' if n == 1 else 's'}"


__all__ = ["counted"]
