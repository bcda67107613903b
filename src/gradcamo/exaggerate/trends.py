"""Which measured quantities change monotonically along a cell's trajectory.

A cell's values ``v_0 .. v_{S-1}`` (in step order) *increase monotonically* when no
successive difference falls below ``-t`` and ``v_{S-1} - v_0 > t`` (non-decreasing within a
tolerance, and not flat), and *decrease monotonically* when none rises above ``t`` and
``v_0 - v_{S-1} > t``; with a NaN anywhere, neither. The tolerance ``t`` is
:data:`TOLERANCE` (1%) of the quantity's range over the whole table (every cell and step;
0.01 for a probability that spans [0, 1]), so wiggles of a saturated probability near 0 or
1, or of a pixel or two of area, do not break a trend; the table is reproducible from
``trajectories.parquet`` exactly.
"""

import numpy as np

GROUPS = ("all", "high", "low")
TOLERANCE = 0.01
"""Share of a quantity's range (over all cells and steps) that a step may go the wrong way by."""


def monotonic(values, tolerance=0.0) -> tuple[np.ndarray, np.ndarray]:
    """(increasing, decreasing) flags of each row of ``values``.

    Parameters
    ----------
    values : (N, S) float ndarray
        One row per cell, steps in increasing order.
    tolerance : float
        ``t`` of the module docstring, in the values' units.

    Returns
    -------
    increasing, decreasing : (N,) bool ndarray

    Examples
    --------
    >>> up, down = monotonic(np.array([[0.1, 0.5, 0.5, 0.9], [3.0, 2.0, 2.5, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    >>> up.tolist(), down.tolist()
    ([True, False, False], [False, False, False])
    >>> monotonic(np.array([[0.02, 0.01, 0.5, 0.99]]), tolerance=0.01)[0].tolist()
    [True]
    """
    values = np.asarray(values, dtype=np.float64)
    steps = np.diff(values, axis=1)
    finite = ~np.isnan(values).any(axis=1)
    change = values[:, -1] - values[:, 0]
    increasing = finite & (steps >= -tolerance).all(axis=1) & (change > tolerance)
    decreasing = finite & (steps <= tolerance).all(axis=1) & (change < -tolerance)
    return increasing, decreasing


def tolerance_of(values) -> float:
    """:data:`TOLERANCE` times the range of the finite values (0 when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(TOLERANCE * (finite.max() - finite.min())) if len(finite) else 0.0


def monotonic_shares(columns, groups, names) -> list[dict]:
    """Share of cells in which each quantity rises or falls monotonically, per group and overall.

    Parameters
    ----------
    columns : dict of str to (N, S) float ndarray
        Per quantity, one row per cell and one column per step (in step order).
    groups : (N,) sequence of str
        ``high`` or ``low`` per cell.
    names : sequence of str
        The quantities to report, in order.

    Returns
    -------
    list of dict
        One row per quantity and group (``all``, ``high``, ``low``): ``property``, ``group``,
        ``cells``, ``increasing``, ``decreasing`` (shares of the group's cells), ``tolerance``.
    """
    groups = np.asarray(groups)
    rows = []
    for name in names:
        tolerance = tolerance_of(columns[name])
        increasing, decreasing = monotonic(columns[name], tolerance)
        for group in GROUPS:
            chosen = np.ones(len(groups), dtype=bool) if group == "all" else groups == group
            n = int(chosen.sum())
            rows.append({
                "property": name, "group": group, "cells": n,
                "increasing": float(increasing[chosen].mean()) if n else float("nan"),
                "decreasing": float(decreasing[chosen].mean()) if n else float("nan"), "tolerance": tolerance,
            })
    return rows
