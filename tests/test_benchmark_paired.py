"""The benchmarks' paired-ratio interval (benchmarks/paired.py) against scipy, tables and a coverage simulation."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import quantile_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paired import format_ratio, paired_ratio, sign_test_coverage  # noqa: E402


@pytest.mark.parametrize("n", range(6, 41))
def test_interval_equals_scipys_sign_test_interval(n):
    rng = np.random.default_rng(n)
    a, b = rng.lognormal(0.0, 0.2, n), rng.lognormal(0.05, 0.2, n)
    r = paired_ratio(a, b)
    expected = quantile_test(a / b, q=float(np.median(a / b)), p=0.5).confidence_interval(0.95)
    assert (r["low"], r["high"]) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert r["median"] == pytest.approx(float(np.median(a / b)), rel=1e-12)
    assert r["coverage"] >= 0.95


def test_tabulated_ranks():
    # Sign-test intervals for the median (e.g. Conover, Practical Nonparametric Statistics, table A3):
    # n = 10 uses the 2nd and 9th order statistics (coverage 97.85 %), n = 20 the 6th and 15th (95.86 %).
    r10 = paired_ratio(np.arange(1.0, 11.0), np.ones(10))
    assert (r10["low"], r10["high"], r10["median"]) == (2.0, 9.0, 5.5)
    assert r10["coverage"] == pytest.approx(1 - 2 * 11 / 1024)
    r20 = paired_ratio(np.arange(20.0, 0.0, -1.0), np.ones(20))
    assert (r20["low"], r20["high"]) == (6.0, 15.0)
    assert r20["coverage"] == pytest.approx(0.958610, abs=1e-6)


def test_few_rounds_give_the_range_and_say_its_coverage():
    r = paired_ratio([3.0, 1.0, 2.0, 5.0, 4.0], [1.0] * 5)
    assert (r["low"], r["median"], r["high"]) == (1.0, 3.0, 5.0)
    assert r["coverage"] == pytest.approx(0.9375)
    assert format_ratio(r) == "3.00 [1.00, 5.00] (93.8 % interval: 5 rounds)"
    assert format_ratio(paired_ratio(np.arange(1.0, 11.0), np.ones(10))) == "5.50 [2.00, 9.00]"
    assert sign_test_coverage(4, 1) == pytest.approx(0.875)


def test_coverage_by_simulation():
    # Skewed, heavy-ish ratios: the interval must still cover the true median at least 95 % of the time
    # (the sign-test interval at n = 12 covers 96.14 % exactly; 4000 draws have a standard error of 0.3 %).
    rng = np.random.default_rng(0)
    true_median = 1.0
    hits = 0
    for _ in range(4000):
        ratios = true_median * rng.lognormal(0.0, 0.5, 12)
        r = paired_ratio(ratios, np.ones(12))
        hits += r["low"] <= true_median <= r["high"]
    assert hits / 4000 == pytest.approx(sign_test_coverage(12, 3), abs=0.012)
    assert sign_test_coverage(12, 3) == pytest.approx(0.96143, abs=1e-5)


def test_unpaired_times_are_refused():
    with pytest.raises(ValueError, match="3 and 2 rounds"):
        paired_ratio([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-empty"):
        paired_ratio([], [])


def test_across_runs_reads_committed_results(tmp_path, capsys):
    """Each run's ratio is the JSON's own speedup_vs_torch; the summary is the sign-test interval over runs."""
    from across_runs import main

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    paths = sorted(str(p) for p in results.glob("2026-12-03_settle/*.json"))
    summary = main(paths + ["--json", str(tmp_path / "summary.json")])
    full = summary["train step 64³, batch 2, base 8, depth 4, float32, full"]
    expected = [json.loads((results / "2026-12-03_settle" / name).read_text())["full"]["speedup_vs_torch"]
                for name in ("ts3d_64_base8.json", "ts3d_64_base8_run2.json")]
    assert sorted(r["ratio"] for r in full["runs"]) == sorted(expected)
    assert full["across_runs"] == paired_ratio(expected, [1.0] * 2)
    assert full["across_runs"]["median"] == pytest.approx(np.median(expected))
    # The run with the skip concatenated (not the shipped split) is its own setting, not a third run.
    concat = summary["train step 64³, batch 2, base 8, depth 4, float32, JAX skip_join concat, full"]
    assert [r["ratio"] for r in concat["runs"]] == [json.loads(
        (results / "2026-12-03_settle" / "ts3d_64_base8_skip_concat.json").read_text())["full"]["speedup_vs_torch"]]
    window = summary["sliding window 1 mm, 64³ windows, overlap 0.5, base 8, batch 2"]
    assert len(window["runs"]) == 2
    out = capsys.readouterr().out
    assert "skipped (not a train_step or sliding_window result)" in out and "conv3d_parts.json" in out
    assert json.loads((tmp_path / "summary.json").read_text()).keys() == summary.keys()


def test_across_runs_counts_volumes_timed_batch_by_batch_as_their_own_setting():
    """A sliding-window run with --lockstep-rounds gives two ratios: whole volumes, and batch by batch."""
    from across_runs import run_ratios

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "2026-12-04_window_runs"
    result = json.loads((results / "lockstep_1mm_1.json").read_text())
    ratios = run_ratios(result)
    name = "sliding window 1 mm, 64³ windows, overlap 0.5, base 8, batch 2"
    assert ratios == {name: result["speedup_vs_torch"],
                      f"{name}, batch by batch": result["lockstep"]["paired_speedup_vs_torch"]["median"]}
