"""The study's statistics: a bootstrap over the design's independent units, tests, and Holm's correction.

Units. A study trains K seeds per condition; seed s of every condition draws its own training subset and
transfer seed s starts from its own source model s, so *seeds* are the independent replicates, shared
across conditions (seed s of every target, size and regime belongs to replicate s). Every run of a target
is evaluated on the same C test subjects (cases), a second, crossed source of variation.

Bootstrap (:class:`Bootstrap`). Draw b = 1…B resamples a multiset of the K seeds (multinomial counts
``w_b``, shared by every statistic and condition of the study, which keeps every design pairing: seeds
across regimes, sizes and targets) and, independently per target, a multiset of its C cases (counts
``v_b``). Row 0 of every weight matrix is all ones: the observed estimate. A statistic is computed on
every row at once; rows 1…B are its bootstrap replicates.

* Mean over seeds × cases of a (K, C) table x with missing entries (diverged runs, NaN Dice):
  ``Σ_sc w_s v_c x_sc m_sc / Σ_sc w_s v_c m_sc`` with m the finite-entry mask (:meth:`Bootstrap.grid_mean`);
  a paired contrast is the same mean of the per-(seed, case) differences.
* Models, not pairs (claims 5a/5b): a value per pair of models, e.g. CKA(model i, model j), is averaged
  over the pairs of the *resampled models*, ``Σ_ij w_i w_j c_ij m_ij / Σ_ij w_i w_j m_ij`` with
  ``m_ii = 0`` (:meth:`Bootstrap.pair_mean`): only models of different seeds are paired, so a model drawn
  twice is never paired with itself, nor with another regime's model of its own seed (which shares its
  initialisation or training subjects).

Tests (:func:`bootstrap_test`): for a statistic θ with null value 0, the 95 % percentile interval of the
replicates and the two-sided bootstrap p-value ``p = min(1, 2 · (1 + #{θ*_b on the far side of 0}) /
(B + 1))`` (the far side: ≤ 0 when the estimate is > 0, ≥ 0 when it is < 0), which is < 0.05 exactly
when 0 lies outside the percentile interval, up to the ±1 counts. With B draws the smallest attainable
p is 2/(B + 1), so B must exceed 2·(number of tests)/α for Holm's first step to be reachable.

Holm (:func:`holm`): with m p-values sorted ascending p_(1) ≤ … ≤ p_(m), the adjusted
``p̃_(k) = max_{j ≤ k} min(1, (m − j + 1) p_(j))``; a test is significant when p̃ < α. It controls the
family-wise error rate at α for any dependence between the tests.

Also here: mean with a Student-t interval over a few values (:func:`mean_interval`, descriptive tables).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
LEVEL = 0.95


class Bootstrap:
    """Resampling weights for K seeds and, per target, C cases; row 0 = the observed data (all ones).

    Example::

        boot = Bootstrap(seeds=5, cases={"hippo": 9}, draws=10_000, seed=0)
        gain = boot.grid_mean(dice_tl - dice_random, "hippo")   # (B + 1,): estimate, then replicates
        bootstrap_test("gain", gain)
    """

    def __init__(self, seeds: int, cases: dict[str, int], draws: int, seed: int = 0):
        if seeds < 1 or draws < 1:
            raise ValueError(f"need at least one seed and one draw, got seeds={seeds}, draws={draws}")
        rng = np.random.default_rng([seed, 3301])
        self.seeds, self.draws = int(seeds), int(draws)
        self.seed_weights = _with_identity(rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=draws))
        self.case_weights = {t: _with_identity(rng.multinomial(c, np.full(c, 1 / c), size=draws)) if c else
                             np.ones((draws + 1, 0)) for t, c in sorted(cases.items())}

    def seed_mean(self, values) -> np.ndarray:
        """(B + 1,) weighted mean over seeds of a (K,) vector (NaN entries left out)."""
        x = np.asarray(values, np.float64)
        m = np.isfinite(x)
        return _ratio(self.seed_weights @ np.where(m, x, 0.0), self.seed_weights @ m)

    def grid_mean(self, table, target: str) -> np.ndarray:
        """(B + 1,) weighted mean over seeds × cases of a (K, C) table of ``target`` (NaN entries left out)."""
        x = np.asarray(table, np.float64)
        m = np.isfinite(x)
        v = self.case_weights[target]
        num = np.einsum("bk,kc,bc->b", self.seed_weights, np.where(m, x, 0.0), v)
        den = np.einsum("bk,kc,bc->b", self.seed_weights, m.astype(np.float64), v)
        return _ratio(num, den)

    def pair_mean(self, matrix) -> np.ndarray:
        """(B + 1,) mean of a (K, K) per-pair table ``c_ij`` (model of seed i on one side, of seed j on the
        other) over the pairs of resampled models of different seeds (i ≠ j; NaN entries left out)."""
        c = np.asarray(matrix, np.float64)
        m = np.isfinite(c) & ~np.eye(len(c), dtype=bool)
        w = self.seed_weights
        num = np.einsum("bi,ij,bj->b", w, np.where(m, c, 0.0), w)
        den = np.einsum("bi,ij,bj->b", w, m.astype(np.float64), w)
        return _ratio(num, den)


def _with_identity(counts: np.ndarray) -> np.ndarray:
    return np.vstack([np.ones((1, counts.shape[1])), counts]).astype(np.float64)


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def interval(rows, level: float = LEVEL) -> dict:
    """``{"estimate", "low", "high", "draws"}``: row 0 and the percentile interval of rows 1… (NaN
    replicates, e.g. resamples with no valid pair, are left out and not counted in ``draws``)."""
    rows = np.asarray(rows, np.float64)
    reps = rows[1:][np.isfinite(rows[1:])]
    est = float(rows[0])
    if not reps.size or not math.isfinite(est):
        return {"estimate": est if math.isfinite(est) else None, "low": None, "high": None, "draws": int(reps.size)}
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": est, "low": float(lo), "high": float(hi), "draws": int(reps.size)}


def bootstrap_test(name: str, rows, **info) -> dict:
    """The test of θ = 0 for the statistic ``rows`` (row 0 = estimate, rows 1… = replicates): the
    :func:`interval` plus the two-sided bootstrap ``p`` (module docstring). ``p`` is None (no test) when
    the estimate is undefined or the replicates do not vary: resampling that cannot move the statistic
    says nothing about its uncertainty."""
    out = {"name": name, **interval(rows), **info}
    rows = np.asarray(rows, np.float64)
    reps = rows[1:][np.isfinite(rows[1:])]
    est = out["estimate"]
    if est is None or not reps.size or np.ptp(reps) == 0:  # a point-mass bootstrap (e.g. one pair) is no evidence
        out["p"] = None
        return out
    far = np.sum(reps <= 0) if est > 0 else np.sum(reps >= 0) if est < 0 else reps.size
    out["p"] = float(min(1.0, 2 * (1 + far) / (reps.size + 1)))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values in the input order (None stays None and is not counted in m)."""
    index = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(index, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def mean_interval(values: Sequence[float], level: float = LEVEL) -> dict:
    """``{"mean", "low", "high", "n"}``: mean ± t_{(1+level)/2, n−1} · s/√n over the finite values
    (s with ddof = 1); with n = 1 the interval is (mean, mean) so readers see there was no replication."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    m = float(x.mean())
    if x.size == 1:
        return {"mean": m, "low": m, "high": m, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": m, "low": m - half, "high": m + half, "n": int(x.size)}


def format_interval(s: dict, digits: int = 3) -> str:
    """``0.712 [0.690, 0.731]`` for a :func:`mean_interval` or :func:`interval` dict."""
    est = s.get("estimate", s.get("mean"))
    if est is None or (isinstance(est, float) and math.isnan(est)) or s.get("n") == 0:
        return "n/a"
    if s.get("n") == 1:
        return f"{est:.{digits}f} (n=1)"
    low, high = s.get("low"), s.get("high")
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
