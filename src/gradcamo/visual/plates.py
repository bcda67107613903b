"""Wells on plates: names such as ``B03`` or ``AF48`` to positions, and the plate format that holds them."""

import re

PLATE_FORMATS = ((96, 8, 12), (384, 16, 24), (1536, 32, 48))
"""(wells, rows, columns) of the standard plate formats, smallest first."""
_WELL = re.compile(r"^([A-Z]{1,2})(\d+)$")


def row_name(index) -> str:
    """Row name of a 0-based row index: A..Z, then AA, AB, ... (1536-well plates).

    Examples
    --------
    >>> [row_name(i) for i in (0, 7, 25, 26, 31)]
    ['A', 'H', 'Z', 'AA', 'AF']
    """
    return chr(65 + index) if index < 26 else "A" + chr(65 + index - 26)


def parse_well(name) -> tuple[int, int] | None:
    """``"B03"`` -> (1, 2): 0-based row and column; None for a name that is no well position."""
    match = _WELL.match(str(name or "").upper())
    if not match:
        return None
    letters, number = match.groups()
    row = ord(letters[0]) - 65 if len(letters) == 1 else 26 + ord(letters[1]) - 65
    return row, int(number) - 1


def plate_shape(positions) -> tuple[int, int]:
    """(rows, columns) of the smallest standard plate holding all ``positions`` (else just enough)."""
    rows = max((r for r, _ in positions), default=0) + 1
    columns = max((c for _, c in positions), default=0) + 1
    for _, n_rows, n_columns in PLATE_FORMATS:
        if rows <= n_rows and columns <= n_columns:
            return n_rows, n_columns
    return rows, columns
