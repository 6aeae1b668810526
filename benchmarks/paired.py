"""Paired speed ratios, with a distribution-free interval for their median.

Sides are timed interleaved (A B A B …), so round i gives a pair of times (a_i, b_i) taken under the same
machine load, and its ratio r_i = a_i / b_i cancels most of the load that moves both. Reported:

* ``median``: the median of the r_i;
* ``low``, ``high``: the order statistics r_(k) and r_(n+1−k) of the sorted ratios, the sign-test confidence
  interval for the population median. k is the largest rank whose coverage,
  1 − 2·P(Binomial(n, ½) ≤ k − 1), is at least ``level``; it assumes only that the rounds are independent
  draws from one distribution (no normality, no symmetry). ``scipy.stats.quantile_test`` gives the same
  interval (the tests compare them).
* ``coverage``: that exact coverage. Below 6 rounds no rank reaches 95 %; the interval is then the smallest and
  the largest ratio, and ``coverage`` says what it is (93.75 % at 5 rounds, 87.5 % at 4).

Example::

    from paired import paired_ratio, format_ratio
    r = paired_ratio(times["torch"]["wall"], times["jax"]["wall"])   # torch ÷ JAX per round
    print(format_ratio(r))                                             # "1.04 [0.97, 1.10]"
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

LEVEL = 0.95


def sign_test_coverage(n: int, k: int) -> float:
    """Exact coverage of [r_(k), r_(n+1−k)] for the median of n independent draws:
    1 − 2·P(Bin(n, ½) ≤ k − 1)."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2 ** n


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float], level: float = LEVEL) -> dict:
    """Median of the per-round ratios numerators[i] / denominators[i], with the sign-test interval (module doc).

    Returns ``{"median", "low", "high", "coverage", "rounds"}``. Raises ValueError when the sequences differ in
    length or are empty: a ratio of unpaired times would not be what this reports.
    """
    if len(numerators) != len(denominators) or len(numerators) == 0:
        raise ValueError(f"paired_ratio needs equal, non-empty sequences (got {len(numerators)} and "
                         f"{len(denominators)} rounds)")
    ratios = sorted(a / b for a, b in zip(numerators, denominators))
    n = len(ratios)
    # The largest rank whose interval still covers ``level``; rank 1 (min, max) when none does.
    k = max((k for k in range(1, (n + 1) // 2 + 1) if sign_test_coverage(n, k) >= level), default=1)
    return {"median": statistics.median(ratios), "low": ratios[k - 1], "high": ratios[n - k],
            "coverage": sign_test_coverage(n, k), "rounds": n}


def format_ratio(r: dict, digits: int = 2, unit: str = "rounds") -> str:
    """``"1.04 [0.97, 1.10]"``, with the interval's coverage appended when it falls short of 95 %
    (``unit`` names what was counted: rounds of one run, or runs)."""
    text = f"{r['median']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"
    if r["coverage"] < LEVEL:
        text += f" ({100 * r['coverage']:.1f} % interval: {r['rounds']} {unit})"
    return text
