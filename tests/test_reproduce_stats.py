import numpy as np
from scipy import stats as sps

from jaxfcn.reproduce.stats import format_interval, mean_interval, spearman


def test_mean_interval_matches_t_distribution_by_hand():
    x = [0.71, 0.74, 0.69, 0.80, 0.77]
    s = mean_interval(x)
    m, sd, n = np.mean(x), np.std(x, ddof=1), len(x)
    half = sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n)  # t_{0.975,4} = 2.776
    assert abs(sps.t.ppf(0.975, 4) - 2.7764) < 1e-3
    assert s["n"] == 5 and np.isclose(s["mean"], m)
    assert np.isclose(s["low"], m - half) and np.isclose(s["high"], m + half)


def test_mean_interval_drops_nan_and_handles_single_value():
    s = mean_interval([0.5, float("nan")])
    assert s == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    assert format_interval(s) == "0.500 (n=1)"
    assert mean_interval([])["n"] == 0


def test_spearman_sign():
    assert spearman([8, 32, 128, 512], [0.3, 0.2, 0.1, 0.05]) == -1.0
    assert np.isnan(spearman([1, 2, 3], [1, 1, 1]))
