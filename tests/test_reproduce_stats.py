"""The study's statistics against explicit computations: resampling means, p-values, Holm, t-intervals."""
import numpy as np
import pytest
from scipy import stats as sps

from jaxfcn.reproduce.stats import Bootstrap, bootstrap_test, format_interval, holm, interval, mean_interval


def test_mean_interval_matches_t_distribution_by_hand():
    x = [0.71, 0.74, 0.69, 0.80, 0.77]
    s = mean_interval(x)
    m, sd, n = np.mean(x), np.std(x, ddof=1), len(x)
    half = sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n)  # t_{0.975,4} = 2.776
    assert abs(sps.t.ppf(0.975, 4) - 2.7764) < 1e-3
    assert s["n"] == 5 and np.isclose(s["mean"], m)
    assert np.isclose(s["low"], m - half) and np.isclose(s["high"], m + half)
    assert mean_interval([0.5, float("nan")]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    assert format_interval(mean_interval([0.5])) == "0.500 (n=1)" and mean_interval([])["n"] == 0


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.03, 0.04 with m = 4 → 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == pytest.approx([0.5, None, 0.02])  # None is not counted in m
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_grid_mean_equals_the_mean_of_the_explicitly_resampled_table():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(4, 6))
    table[1, 2] = np.nan  # a missing (seed, case) entry is left out, not counted as 0
    boot = Bootstrap(seeds=4, cases={"t": 6}, draws=50, seed=3)
    rows = boot.grid_mean(table, "t")
    assert rows[0] == pytest.approx(np.nanmean(table))
    for b in (1, 17, 50):
        seeds = np.repeat(np.arange(4), boot.seed_weights[b].astype(int))
        cases = np.repeat(np.arange(6), boot.case_weights["t"][b].astype(int))
        assert rows[b] == pytest.approx(np.nanmean(table[np.ix_(seeds, cases)]))
    # the seed draw is shared: the same seeds are resampled for a second target and for per-seed values
    other = Bootstrap(seeds=4, cases={"t": 6, "u": 3}, draws=50, seed=3)
    np.testing.assert_array_equal(other.seed_weights, boot.seed_weights)
    v = np.array([1.0, 2.0, np.nan, 4.0])
    assert boot.seed_mean(v)[0] == pytest.approx(7 / 3)


def test_pair_mean_resamples_models_and_pairs_only_different_seeds():
    rng = np.random.default_rng(1)
    c = rng.uniform(size=(5, 5))
    c = (c + c.T) / 2
    np.fill_diagonal(c, 1.0)  # CKA of a model with itself: never a within-regime pair
    boot = Bootstrap(seeds=5, cases={}, draws=40, seed=2)
    rows = boot.pair_mean(c)
    assert rows[0] == pytest.approx(c[np.triu_indices(5, 1)].mean())
    for b in range(1, 41):
        drawn = np.repeat(np.arange(5), boot.seed_weights[b].astype(int))
        pairs = [c[i, j] for a, i in enumerate(drawn) for j in drawn[a + 1:] if i != j]
        assert (rows[b] == pytest.approx(np.mean(pairs))) if pairs else np.isnan(rows[b])
    # two regimes' models of one seed (i, i) are never paired either: they may share an initialisation
    c[np.diag_indices(5)] = np.nan
    assert boot.pair_mean(c)[0] == pytest.approx(rows[0])


def test_bootstrap_test_p_value_and_interval():
    rng = np.random.default_rng(4)
    replicates = rng.normal(0.3, 0.1, size=9999)
    t = bootstrap_test("x", np.concatenate([[0.3], replicates]), claimed=1)
    lo, hi = np.quantile(replicates, [0.025, 0.975])
    assert (t["low"], t["high"]) == (pytest.approx(lo), pytest.approx(hi)) and t["claimed"] == 1
    assert t["p"] == pytest.approx(2 * (1 + np.sum(replicates <= 0)) / 10000)  # ≈ 2·Φ(−3) = 0.0027
    assert 0.001 < t["p"] < 0.006
    centred = bootstrap_test("y", np.concatenate([[0.01], rng.normal(0.0, 0.1, size=999)]))
    assert centred["p"] > 0.5 and centred["low"] < 0 < centred["high"]
    # no variation among the replicates (e.g. a single pair of models): no test at all
    assert bootstrap_test("z", np.full(100, 0.4))["p"] is None
    assert bootstrap_test("w", np.full(10, np.nan))["p"] is None and interval(np.full(10, np.nan))["low"] is None
