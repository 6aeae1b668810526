"""Verdict rules on synthetic results built to give known verdicts (none of them from a training run).

Each synthetic study has 2–3 targets × 4 sizes × 5 seeds × 6 test subjects, with per-seed and per-subject
noise, so every statistic goes through the same bootstrap and Holm correction as a real study's.
"""
import itertools
import math

import numpy as np
import pytest

from jaxfcn.reproduce import claims

SIZES = (1, 3, 10, 30)
SEEDS = range(5)
CASES = [f"t_s{i:04d}" for i in range(5)] + ["t_real"]
STEPS = list(range(50, 501, 50))


def curve(final: float, speed: float) -> list[float]:
    """A val-Dice curve rising to ``final``; larger ``speed`` reaches it sooner."""
    return [final * (1 - math.exp(-speed * s / 500)) / (1 - math.exp(-speed)) for s in STEPS]


def study(dice, speed=lambda t, n, g, s: 4.0, targets=("easy", "hard"), regimes=("random", "transfer", "frozen_random"),
          status=lambda t, n, g, s: "ok"):
    """Runs with test Dice ``dice(target, size, regime, seed)`` (+ per-subject noise) and val curves rising
    to the mean test Dice at ``speed(...)``."""
    rng = np.random.default_rng(0)
    runs = []
    for t, n, g, s in itertools.product(targets, SIZES, regimes, SEEDS):
        mean = dice(t, n, g, s)
        cases = {c: float(np.clip(mean + 0.02 * rng.normal(), 0, 1)) for c in CASES}
        ok = status(t, n, g, s) == "ok"
        c = curve(mean, speed(t, n, g, s))
        runs.append({"target": t, "train_size": n, "regime": g, "seed": s, "status": status(t, n, g, s),
                     "test_cases": cases if ok else {}, "val_curve": {"steps": STEPS, "dice": c} if ok else None,
                     "final_val_dice": c[-1] if ok else None,
                     "val_dice_auc": float(np.mean(c)) if ok else None})
    return {"runs": runs}


def seed_noise(s):
    return 0.004 * (s - 2)


def paper_like(t, n, g, s):
    base = {"easy": 0.85, "hard": 0.55, "middle": 0.7}[t] + 0.02 * SIZES.index(n) + seed_noise(s)
    gain = {"easy": 0.04, "hard": 0.15, "middle": 0.08}[t] / (1 + SIZES.index(n))
    return base + (gain if g == "transfer" else 0) - (0.02 if g == "frozen_random" else 0)


def contradicting(t, n, g, s):  # transfer hurts at small sizes, helps at large; frozen encoder collapses
    base = {"easy": 0.85, "hard": 0.55}[t] + seed_noise(s)
    gain = {"easy": 0.03, "hard": -0.05}[t] + 0.02 * SIZES.index(n) - 0.05
    return base + (gain if g == "transfer" else 0) - (0.4 if g == "frozen_random" else 0)


def rows_of(results):
    rows, tests = claims.evaluate_claims(results)
    return {r["claim"]: r for r in rows}, tests


def test_claims_1_2_4_supported_when_data_follow_the_paper():
    rows, tests = rows_of(study(paper_like, speed=lambda t, n, g, s: 8.0 if g == "transfer" else 2.0))
    for key in ("1", "2", "4"):
        assert rows[key]["verdict"] == claims.SUPPORTED, rows[key]["evidence"]
    assert rows["2"]["numbers"]["harder"] == "hard"
    assert all(0 <= t["p_holm"] <= 1 and t["p_holm"] >= t["p"] for t in tests)
    # claim 1's statistic is in steps to a common target: transfer reaches it sooner
    time_test = next(t for t in tests if t["name"].startswith("1: log time"))
    assert time_test["estimate"] < 0 and time_test["significant"]


def test_claims_1_2_4_not_supported_when_data_contradict_the_paper():
    rows, _ = rows_of(study(contradicting, speed=lambda t, n, g, s: 2.0 if g == "transfer" else 8.0))
    for key in ("1", "2", "4"):
        assert rows[key]["verdict"] == claims.NOT_SUPPORTED, rows[key]["evidence"]


def test_a_transfer_run_that_never_learns_is_censored_and_counts_as_slow():
    """The old rule (steps to 95 % of the run's own final Dice) made a flat run the fastest one."""
    def dice(t, n, g, s):
        return 0.02 if g == "transfer" else paper_like(t, n, g, s)

    rows, tests = rows_of(study(dice))
    censored = rows["1"]["numbers"]["censored"]
    assert censored["transfer"] == {"censored": 40, "runs": 40} and censored["random"]["censored"] < 40
    assert rows["1"]["verdict"] == claims.NOT_SUPPORTED
    time_test = next(t for t in tests if t["name"].startswith("1: log time"))
    assert time_test["estimate"] > 0  # slower, not faster


def test_random_init_below_the_floor_makes_claims_insufficient_not_huge_ratios():
    def dice(t, n, g, s):  # the hard target never learns from random init (the quick run's 0.02)
        if t == "hard" and g == "random":
            return 0.02
        return paper_like(t, n, g, s)

    rows, _ = rows_of(study(dice))
    assert "hard (random-init Dice 0.0" in rows["4"]["evidence"] and "insufficient" in rows["4"]["evidence"]
    assert "hard" not in rows["4"]["numbers"]["ratio"]  # no 0.9/0.02-style ratio is ever formed
    assert rows["4"]["verdict"] == claims.SUPPORTED  # decided on the target that learned
    assert any(s.startswith("hard n=") for s in rows["1"]["numbers"]["below_floor"])
    assert rows["2"]["numbers"]["below_floor"] and rows["2"]["verdict"] != claims.SUPPORTED  # (b) needs 2 targets

    def nothing_learns(t, n, g, s):
        return 0.02

    rows, _ = rows_of(study(nothing_learns))
    for key in ("1", "2", "4"):
        assert rows[key]["verdict"] == claims.NO_DATA, rows[key]["evidence"]


def test_a_diverged_seed_is_left_out_and_counted():
    status = lambda t, n, g, s: "diverged" if (g, s) == ("transfer", 3) else "ok"  # noqa: E731
    results = study(paper_like, speed=lambda t, n, g, s: 8.0 if g == "transfer" else 2.0, status=status)
    rows, _ = rows_of(results)
    for key in ("1", "2", "4"):
        assert rows[key]["verdict"] == claims.SUPPORTED, rows[key]["evidence"]
    assert rows["1"]["numbers"]["censored"]["transfer"]["runs"] == 32  # 40 runs less the 8 diverged
    summary = claims.condition_summary(results, is_real=lambda c: c.endswith("_real"), draws=200)
    cell = next(r for r in summary if (r["target"], r["train_size"], r["regime"]) == ("easy", 30, "transfer"))
    assert cell["status"] == {"ok": 4, "diverged": 1} and cell["dice"]["estimate"] > 0.85
    assert cell["dice_real"]["estimate"] == pytest.approx(np.mean(
        [r["test_cases"]["t_real"] for r in results["runs"] if (r["target"], r["train_size"], r["regime"])
         == ("easy", 30, "transfer") and r["status"] == "ok"]))

    everything_diverged = study(paper_like, status=lambda t, n, g, s: "diverged")
    rows, tests = rows_of(everything_diverged)
    assert not tests and all(r["verdict"] == claims.NO_DATA for r in rows.values())


def test_claim_2_trend_uses_every_size_with_an_interval():
    def dice(t, n, g, s):  # the gain is lower at 30 than at 1, but over all four sizes it does not fall
        gain = {1: 0.10, 3: 0.16, 10: 0.20, 30: 0.09}[n] * (1.5 if t == "hard" else 1)
        return {"easy": 0.85, "hard": 0.55}[t] + seed_noise(s) + (gain if g == "transfer" else 0)

    rows, tests = rows_of(study(dice))
    slope = next(t for t in tests if t["name"].startswith("2a"))
    assert slope["low"] < slope["estimate"] < slope["high"] and not (slope["significant"] and slope["estimate"] < 0)
    assert set(rows["2"]["numbers"]["gain"]["easy"]) == {"1", "3", "10", "30"}
    assert rows["2"]["verdict"] == claims.MIXED  # (b) harder target gains more: yes; (a) falls with size: no


def test_claim_3_filters_rule():
    def verdict(filters):
        return claims.evaluate_claims({"runs": [], "filters": filters}, draws=10)[0][2]["verdict"]

    little_random = [{"regime": "random", "layer": f"l{i}", "relative_change": 0.2, "verdict": "random-like"}
                     for i in range(4)]
    assert verdict(little_random) == claims.SUPPORTED
    assert verdict([dict(f, relative_change=1.2, verdict="non-random") for f in little_random]) == claims.NOT_SUPPORTED
    assert verdict([dict(f, verdict="non-random") for f in little_random]) == claims.MIXED


# ---------------------------------------------------------------------------------------------- CKA
LAYERS = ["enc_0", "enc_1", "bottleneck"]


def cka_results(within_random, between, within_transfer, untrained, reuse, q95=0.05, seeds=5):
    """One target's CKA matrices over random/transfer/source/untrained models (seed-wise noise ±0.01);
    each argument is a function of the layer index."""
    groups = ["random", "transfer", "source", "untrained"]
    models = [f"{g}/{s}" for g in groups for s in range(seeds)]
    index = {m: i for i, m in enumerate(models)}
    rng = np.random.default_rng(1)
    matrices = {}
    for k, layer in enumerate(LAYERS):
        value = {("random", "random"): within_random(k), ("random", "transfer"): between(k),
                 ("transfer", "transfer"): within_transfer(k), ("untrained", "untrained"): untrained(k),
                 ("source", "transfer"): 0.3, ("random", "source"): 0.3, ("random", "untrained"): 0.2,
                 ("transfer", "untrained"): 0.2, ("source", "untrained"): 0.2, ("source", "source"): 0.5}
        m = np.eye(len(models))
        for a, b in itertools.combinations(models, 2):
            ga, gb = sorted([a.split("/")[0], b.split("/")[0]])
            v = value[(ga, gb)]
            if {ga, gb} == {"source", "transfer"} and a.split("/")[1] == b.split("/")[1]:
                v = reuse(k)  # a transfer model and its own source
            m[index[a], index[b]] = m[index[b], index[a]] = v + 0.01 * rng.normal()
        matrices[layer] = m.tolist()
    members = {g: [index[f"{g}/{s}"] for s in range(seeds)] for g in groups}
    null = {layer: {"mean": 0.0, "q95": q95} for layer in LAYERS}
    return {"encoder_layers": LAYERS, "runs": [],
            "cka": {"t": {"layers": LAYERS, "models": models, "seeds": list(range(seeds)), "members": members,
                          "matrices": matrices, "permutation_null": null}}}


def test_claim_5_rules_supported():
    res = cka_results(within_random=lambda k: 0.8, between=lambda k: 0.4, within_transfer=lambda k: 0.6,
                      untrained=lambda k: 0.3, reuse=lambda k: 0.5 + 0.15 * k)
    rows, _ = rows_of(res)
    assert rows["5a"]["verdict"] == claims.SUPPORTED, rows["5a"]["evidence"]
    assert rows["5b"]["verdict"] == claims.SUPPORTED, rows["5b"]["evidence"]  # transfer seeds agree less
    assert rows["5c"]["verdict"] == claims.SUPPORTED, rows["5c"]["evidence"]  # reuse grows with depth


def test_claim_5_rules_not_supported():
    res = cka_results(within_random=lambda k: 0.8, between=lambda k: 0.8, within_transfer=lambda k: 0.97,
                      untrained=lambda k: 0.3, reuse=lambda k: [0.9, 0.3, 0.29][k])
    rows, _ = rows_of(res)
    assert rows["5a"]["verdict"] == claims.NOT_SUPPORTED, rows["5a"]["evidence"]
    assert rows["5b"]["verdict"] == claims.NOT_SUPPORTED, rows["5b"]["evidence"]
    assert rows["5c"]["verdict"] == claims.NOT_SUPPORTED, rows["5c"]["evidence"]  # only enc_0 is reused


def test_claim_5_is_judged_against_the_null_baselines():
    """The biased-CKA artefact: every value ≈ 0.98, untrained networks and shuffled probes included."""
    res = cka_results(within_random=lambda k: 0.985, between=lambda k: 0.975, within_transfer=lambda k: 0.98,
                      untrained=lambda k: 0.983, reuse=lambda k: 0.985, q95=0.975)
    rows, _ = rows_of(res)
    assert rows["5a"]["verdict"] == claims.NO_DATA and "not above both nulls" in rows["5a"]["evidence"]
    assert rows["5c"]["verdict"] == claims.NOT_SUPPORTED  # reuse no higher than between untrained networks
    # the same between/within contrast above the nulls does count
    res = cka_results(within_random=lambda k: 0.985, between=lambda k: 0.9, within_transfer=lambda k: 0.98,
                      untrained=lambda k: 0.3, reuse=lambda k: 0.985)
    assert rows_of(res)[0]["5a"]["verdict"] == claims.SUPPORTED


def test_claims_5a_5b_resample_models_not_pairs():
    """Model 4 of the random-init seeds is an outlier: the 10 within-random CKA values share models, so a
    t-interval treating them as independent is too narrow; resampling the models is not."""
    res = cka_results(within_random=lambda k: 0.8, between=lambda k: 0.7, within_transfer=lambda k: 0.6,
                      untrained=lambda k: 0.3, reuse=lambda k: 0.5)
    m = np.asarray(res["cka"]["t"]["matrices"]["enc_0"])
    outlier = res["cka"]["t"]["members"]["random"][4]
    m[outlier, :5] = m[:5, outlier] = 0.45
    m[outlier, outlier] = 1.0
    res["cka"]["t"]["matrices"]["enc_0"] = m.tolist()
    pairs = [m[i, j] for i, j in itertools.combinations(res["cka"]["t"]["members"]["random"], 2)]
    naive = claims.stats.mean_interval(pairs)
    ours = claims.cka_summary(res)["t"]["enc_0"]["within"]["random"]
    assert ours["estimate"] == pytest.approx(naive["mean"])
    assert ours["high"] - ours["low"] > 1.25 * (naive["high"] - naive["low"])  # measured 1.37×
    # two seeds: one within-regime pair, nothing to resample: no test, insufficient data
    rows, tests = rows_of(cka_results(within_random=lambda k: 0.8, between=lambda k: 0.4,
                                      within_transfer=lambda k: 0.6, untrained=lambda k: 0.3, reuse=lambda k: 0.5,
                                      seeds=2))
    assert not tests and {rows[k]["verdict"] for k in ("5a", "5b", "5c")} == {claims.NO_DATA}


def test_every_claim_reports_insufficient_data_on_empty_results():
    rows, tests = claims.evaluate_claims({"runs": []}, draws=10)
    assert [r["claim"] for r in rows] == ["1", "2", "3", "4", "5a", "5b", "5c"]
    assert all(r["verdict"] == claims.NO_DATA for r in rows) and tests == []


def test_rules_and_deviations_are_stated():
    assert set(claims.RULES) == set(claims.CLAIM_ORDER)
    assert all({"date", "rules", "change", "reason"} <= set(d) for d in claims.DEVIATIONS)
    assert str(claims.DICE_FLOOR) in claims.RULES[4] and "censored" in claims.RULES[1]
