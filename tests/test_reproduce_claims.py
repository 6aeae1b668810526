"""Verdict rules on hand-made results whose verdicts are known by construction."""
import itertools

from jaxfcn.reproduce import claims


def _runs(dice, steps):
    """dice/steps: functions of (target, size, regime, seed)."""
    out = []
    for t, n, r, s in itertools.product(["easy", "hard"], [8, 32, 128], ["random", "transfer", "frozen_random"],
                                        range(3)):
        out.append({"target": t, "train_size": n, "regime": r, "seed": s,
                    "test_dice": dice(t, n, r, s), "steps_to_95": steps(t, n, r, s), "seconds_to_95": 1.0})
    return out


def paper_like_dice(t, n, r, s):
    base = {"easy": 0.85, "hard": 0.55}[t] + 0.02 * [8, 32, 128].index(n) + 0.001 * s
    gain = {"easy": 0.04, "hard": 0.12}[t] / [8, 32, 128].index(n).__add__(1)
    return base + (gain if r == "transfer" else 0) - (0.03 if r == "frozen_random" else 0)


def test_claims_1_2_4_supported_when_data_follow_the_paper():
    res = {"runs": _runs(paper_like_dice, lambda t, n, r, s: 100 + 7 * s if r == "transfer" else 300 + 11 * s)}
    assert claims.claim_training_time(res)["verdict"] == claims.SUPPORTED
    row = claims.claim_gain_dependence(res)
    assert row["verdict"] == claims.SUPPORTED and row["numbers"]["harder"] == "hard"
    assert claims.claim_frozen_encoder(res)["verdict"] == claims.SUPPORTED


def test_claim_2_with_two_sizes_uses_the_sign_of_the_change():
    res = {"runs": [r for r in _runs(paper_like_dice, lambda t, n, r, s: 100) if r["train_size"] != 32]}
    row = claims.claim_gain_dependence(res)
    assert row["verdict"] == claims.SUPPORTED
    assert row["numbers"]["spearman"] == {"easy": -1.0, "hard": -1.0}
    assert "2 sizes: falls" in row["evidence"] and "nan" not in row["evidence"]
    rising = {"runs": [dict(r, test_dice=r["test_dice"] + (0.2 * (r["train_size"] == 128) if r["regime"] == "transfer"
                                                          else 0)) for r in res["runs"]]}
    row = claims.claim_gain_dependence(rising)
    assert row["numbers"]["spearman"] == {"easy": 1.0, "hard": 1.0} and "2 sizes: rises" in row["evidence"]


def test_claims_1_2_4_not_supported_when_data_contradict_the_paper():
    def dice(t, n, r, s):  # transfer hurts more as data grow, frozen encoder collapses
        base = {"easy": 0.85, "hard": 0.55}[t]
        return base + (0.01 * [8, 32, 128].index(n) if r == "transfer" else 0) - (0.5 if r == "frozen_random" else 0)

    res = {"runs": _runs(dice, lambda t, n, r, s: 300 + 5 * s if r == "transfer" else 100 + 3 * s)}
    assert claims.claim_training_time(res)["verdict"] == claims.NOT_SUPPORTED
    assert claims.claim_gain_dependence(res)["verdict"] == claims.NOT_SUPPORTED
    assert claims.claim_frozen_encoder(res)["verdict"] == claims.NOT_SUPPORTED


def test_claim_3_filters_rule():
    little_random = [{"regime": "random", "layer": f"l{i}", "relative_change": 0.2, "verdict": "random-like"} for i in range(4)]
    big_structured = [{"regime": "random", "layer": f"l{i}", "relative_change": 1.2, "verdict": "non-random"}
                      for i in range(4)]
    assert claims.claim_filters({"filters": little_random})["verdict"] == claims.SUPPORTED
    assert claims.claim_filters({"filters": big_structured})["verdict"] == claims.NOT_SUPPORTED
    little_structured = [dict(f, verdict="non-random") for f in little_random]
    assert claims.claim_filters({"filters": little_structured})["verdict"] == claims.MIXED


def _cka(between, within_random, within_transfer, reuse):
    layers = ["enc_0", "enc_1", "bottleneck"]
    return {"encoder_layers": layers,
            "cka": {"t": {"between": {l: between(i) for i, l in enumerate(layers)},
                          "within": {"random": {l: within_random(i) for i, l in enumerate(layers)},
                                     "transfer": {l: within_transfer(i) for i, l in enumerate(layers)}},
                          "reuse": {l: reuse(i) for i, l in enumerate(layers)}}}}


def test_claim_5_rules():
    res = _cka(lambda i: [0.3, 0.32, 0.31], lambda i: [0.8, 0.82, 0.81], lambda i: [0.7, 0.72, 0.71],
               lambda i: [0.5 + 0.1 * i] * 3)
    assert claims.claim_different_representations(res)["verdict"] == claims.SUPPORTED
    assert claims.claim_variability(res)["verdict"] == claims.SUPPORTED  # v_tl 0.29 ≥ v_rd 0.19
    assert claims.claim_reuse_depth(res)["verdict"] == claims.SUPPORTED  # reuse grows with depth

    res = _cka(lambda i: [0.8, 0.82, 0.81], lambda i: [0.8, 0.82, 0.81], lambda i: [0.99, 0.99, 0.99],
               lambda i: [0.9 - 0.2 * i] * 3)
    assert claims.claim_different_representations(res)["verdict"] == claims.NOT_SUPPORTED
    assert claims.claim_variability(res)["verdict"] == claims.NOT_SUPPORTED
    assert claims.claim_reuse_depth(res)["verdict"] == claims.NOT_SUPPORTED


def test_every_claim_reports_insufficient_data_on_empty_results():
    rows = claims.evaluate_claims({"runs": []})
    assert [r["claim"] for r in rows] == ["1", "2", "3", "4", "5a", "5b", "5c"]
    assert all(r["verdict"] == claims.NO_DATA for r in rows)
