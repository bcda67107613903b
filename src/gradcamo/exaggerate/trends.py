"""Which measured quantities change monotonically along a cell's trajectory.

A cell's values ``v_0 .. v_{S-1}`` (in step order) *increase monotonically* when every
successive difference is >= 0 and ``v_{S-1} > v_0`` (non-decreasing and not constant), and
*decrease monotonically* when every difference is <= 0 and ``v_{S-1} < v_0``; with a NaN
anywhere, neither. No tolerance: the table is reproducible from ``trajectories.parquet``
exactly. Ties are allowed because a probability saturates at 1.0 in float32 and an area is
a whole number of pixels.
"""

import numpy as np

GROUPS = ("all", "high", "low")


def monotonic(values):
    """(increasing, decreasing) flags of each row of ``values``.

    Parameters
    ----------
    values : (N, S) float ndarray
        One row per cell, steps in increasing order.

    Returns
    -------
    increasing, decreasing : (N,) bool ndarray

    Examples
    --------
    >>> up, down = monotonic(np.array([[0.1, 0.5, 0.5, 0.9], [3.0, 2.0, 2.5, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    >>> up.tolist(), down.tolist()
    ([True, False, False], [False, False, False])
    """
    values = np.asarray(values, dtype=np.float64)
    steps = np.diff(values, axis=1)
    finite = ~np.isnan(values).any(axis=1)
    change = values[:, -1] - values[:, 0]
    increasing = finite & (steps >= 0).all(axis=1) & (change > 0)
    decreasing = finite & (steps <= 0).all(axis=1) & (change < 0)
    return increasing, decreasing


def monotonic_shares(columns, groups, names):
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
        ``cells``, ``increasing``, ``decreasing`` (shares of the group's cells).
    """
    groups = np.asarray(groups)
    rows = []
    for name in names:
        increasing, decreasing = monotonic(columns[name])
        for group in GROUPS:
            chosen = np.ones(len(groups), dtype=bool) if group == "all" else groups == group
            n = int(chosen.sum())
            rows.append({
                "property": name, "group": group, "cells": n,
                "increasing": float(increasing[chosen].mean()) if n else float("nan"),
                "decreasing": float(decreasing[chosen].mean()) if n else float("nan"),
            })
    return rows
