"""Summaries over seeds: mean with a 95% Student-t interval, and paired comparisons.

Definitions: for values x_1..x_n, mean = Σx/n, s = sample standard deviation (ddof=1), and the 95%
interval is mean ± t_{0.975, n-1} · s / √n. With n = 1 the interval is undefined and reported as
(mean, mean) with ``n = 1`` so readers see there was no replication.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n"}`` for finite values (NaNs are dropped and counted out)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    m = float(x.mean())
    if x.size == 1:
        return {"mean": m, "low": m, "high": m, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": m, "low": m - half, "high": m + half, "n": int(x.size)}


def format_interval(s: dict, digits: int = 3) -> str:
    if s["n"] == 0:
        return "n/a"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (n=1)"
    return f"{s['mean']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (NaN when either side is constant or fewer than 3 points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
