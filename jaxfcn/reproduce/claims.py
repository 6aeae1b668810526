"""The paper's five claims, each with a verdict rule fixed before any run, evaluated on ``results.json``.

Regimes: ``random`` (random init, all trained), ``transfer`` (source encoder+decoder, all trained),
``frozen_random`` (encoder frozen at its random init), ``frozen_transfer`` (encoder frozen at the source's).

Each ``claim_*`` function takes the study's results dict and returns a row
``{"claim", "evidence", "verdict", "rule", "numbers"}`` with ``verdict`` in
``supported | not supported | mixed | insufficient data``. The rules are the ``RULES`` strings below; the
report prints them verbatim. They were written before the first study ran and must not be tuned.

Results schema used here (written by :mod:`jaxfcn.reproduce.study`):
- ``runs``: list of ``{"target", "train_size", "regime", "seed", "test_dice", "steps_to_95", "seconds_to_95"}``
- ``filters``: list of ``{"regime", "layer", "relative_change", "verdict"}`` (verdict "random-like"/"non-random",
  from :func:`jaxfcn.analysis.filters.randomness_tests`)
- ``cka``: ``{target: {"within": {regime: {layer: [values]}}, "between": {layer: [values]},
  "reuse": {layer: [values]}}}``; ``between`` = CKA(transfer model, random-init model),
  ``reuse`` = CKA(source model, fine-tuned transfer model), both at the largest training size.
- ``layers``: the ordered layer names; ``encoder_layers``: the encoder's part of them (input side first).
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from jaxfcn.reproduce.stats import format_interval, mean_interval, spearman

SUPPORTED, NOT_SUPPORTED, MIXED, NO_DATA = "supported", "not supported", "mixed", "insufficient data"
RANDOM_LIKE = "random-like"  # the filter randomness verdict of jaxfcn.analysis.filters

RULES = {
    1: "Time ratio r = steps-to-95%-of-final-val-Dice (transfer) / (random), paired by seed, pooled over all "
       "targets and sizes; 95% t-interval of log r. Supported if the interval of r lies below 1; not supported "
       "if it lies above 1 or contains 1 with geometric mean ≥ 1; mixed otherwise.",
    2: "Gain g = mean test Dice (transfer) − (random) per target and size. (a) g falls with training size: "
       "Spearman(size, g) < 0 for every target (with only 2 sizes: g smaller at the larger size). (b) The harder target (lower random-init Dice at the largest "
       "size) has the larger gain at the smallest size. Supported if (a) and (b); not supported if neither; "
       "mixed otherwise.",
    3: "Over conv layers of models trained from random init (source runs and random-init target runs at "
       "the largest size), (a) median relative change "
       "‖W−W0‖/‖W0‖ < 0.5 (a fresh independent draw is at √2 ≈ 1.41), and (b) at least half of the layers "
       "pass the randomness tests. Supported if (a) and (b); not supported if neither; mixed otherwise.",
    4: "Ratio of test Dice, frozen_random / random, at the largest training size, per target. Supported if "
       "the ratio is ≥ 0.9 for every target; not supported if < 0.75 for every target; mixed otherwise.",
    "5a": "Per layer, CKA between transfer and random-init models vs CKA among random-init seeds (largest "
          "size). A layer differs if the upper end of the between-interval is below the lower end of the "
          "within-random interval. Supported if at least half the layers differ; not supported if none; "
          "mixed otherwise.",
    "5b": "Variability v = 1 − CKA among seeds of one regime, per layer. Supported if v(transfer) ≥ "
          "v(random) in at least a third of the layers; not supported if v(transfer) < 0.5·v(random) in "
          "every layer; mixed otherwise.",
    "5c": "Reuse = CKA(source model, fine-tuned transfer model) per encoder layer. Supported if some deeper "
          "encoder layer has mean reuse ≥ the first layer's; not supported if reuse strictly decreases "
          "with depth through the encoder; mixed otherwise.",
}

CLAIM_TEXT = {
    1: "Transfer learning reduces training time on the target task.",
    2: "The accuracy gain from transfer is task- and data-dependent: larger for harder tasks and smaller training sets.",
    3: "Convolutional filters change little during training and still look random at convergence.",
    4: "Accurate FCNs can be built by freezing the encoder at random values and training only the decoder.",
    "5a": "Transfer-learned models learn different representations from random-init models.",
    "5b": "Variability among transfer models can be as high as among random-init models.",
    "5c": "Feature reuse is not confined to early encoder layers; it can be stronger deeper.",
}


def _row(key, evidence, verdict, numbers):
    return {"claim": str(key), "text": CLAIM_TEXT[key], "evidence": evidence, "verdict": verdict,
            "rule": RULES[key], "numbers": numbers}


def size_order(size: int) -> float:
    """Training-set sizes in increasing order; 0 means "all examples", the largest."""
    return math.inf if size == 0 else size


def _by(runs, *keys):
    out = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def claim_training_time(results) -> dict:
    cells = _by(results["runs"], "target", "train_size", "regime", "seed")
    log_ratios = []
    for (target, size, regime, seed), rs in cells.items():
        if regime != "transfer":
            continue
        base = cells.get((target, size, "random", seed))
        if not base:
            continue
        a, b = rs[0]["steps_to_95"], base[0]["steps_to_95"]
        if _finite(a) and _finite(b) and a > 0 and b > 0:
            log_ratios.append(math.log(a / b))
    s = mean_interval(log_ratios)
    if s["n"] < 2:
        return _row(1, "fewer than two paired runs", NO_DATA, {"log_ratio": s})
    gm, low, high = math.exp(s["mean"]), math.exp(s["low"]), math.exp(s["high"])
    if high < 1:
        verdict = SUPPORTED
    elif low > 1 or gm >= 1:
        verdict = NOT_SUPPORTED
    else:
        verdict = MIXED
    evidence = f"steps-to-95% ratio transfer/random = {gm:.2f} [{low:.2f}, {high:.2f}] (geometric mean, n={s['n']})"
    return _row(1, evidence, verdict, {"ratio": {"mean": gm, "low": low, "high": high, "n": s["n"]}})


def _mean_dice(results):
    return {k: float(np.mean([r["test_dice"] for r in rs if _finite(r["test_dice"])] or [np.nan]))
            for k, rs in _by(results["runs"], "target", "train_size", "regime").items()}


TREND_WORDS = {-1.0: "falls", 0.0: "flat", 1.0: "rises"}


def _size_trend(gain_by_size: dict) -> float:
    """How the transfer gain moves with training-set size: Spearman ρ over ≥ 3 sizes; with 2 sizes, where a
    rank correlation says nothing beyond the order, the sign of (gain at the larger − gain at the smaller)."""
    sizes = list(gain_by_size)
    order = [size_order(s) if s else 10**9 for s in sizes]
    if len(sizes) > 2:
        return spearman(order, list(gain_by_size.values()))
    (_, small), (_, large) = sorted(zip(order, gain_by_size.values()))
    return float(np.sign(large - small)) if _finite(small) and _finite(large) else float("nan")


def claim_gain_dependence(results) -> dict:
    dice = _mean_dice(results)
    targets = sorted({t for t, _, _ in dice})
    gains = {}
    for t in targets:
        sizes = sorted({s for tt, s, _ in dice if tt == t}, key=size_order)
        gains[t] = {s: dice.get((t, s, "transfer"), np.nan) - dice.get((t, s, "random"), np.nan) for s in sizes}
    if len(targets) < 2 or any(len(g) < 2 for g in gains.values()):
        return _row(2, "needs ≥ 2 targets and ≥ 2 sizes", NO_DATA, {"gain": gains})
    rho = {t: _size_trend(g) for t, g in gains.items()}
    a = all(_finite(r) and r < 0 for r in rho.values())
    largest = {t: max(g, key=size_order) for t, g in gains.items()}
    hardness = {t: dice.get((t, largest[t], "random"), np.nan) for t in targets}
    hard, easy = min(targets, key=lambda t: hardness[t]), max(targets, key=lambda t: hardness[t])
    g_small = {t: gains[t][min(gains[t], key=size_order)] for t in targets}
    b = g_small[hard] > g_small[easy]
    verdict = SUPPORTED if a and b else NOT_SUPPORTED if not a and not b else MIXED
    parts = [f"{t}: gain by size " + ", ".join(f"{s}→{g:+.3f}" for s, g in gains[t].items())
             + (f" (ρ={rho[t]:+.2f})" if len(gains[t]) > 2 else f" (2 sizes: {TREND_WORDS.get(rho[t], 'undefined')})")
             for t in targets]
    parts.append(f"harder target = {hard} (random Dice {hardness[hard]:.3f}); smallest-size gain {g_small[hard]:+.3f} "
                 f"vs {easy} {g_small[easy]:+.3f}")
    return _row(2, "; ".join(parts), verdict,
                {"gain": {t: {str(s): g for s, g in gains[t].items()} for t in targets}, "spearman": rho,
                 "harder": hard, "part_a": a, "part_b": bool(b)})


def claim_filters(results) -> dict:
    rows = [f for f in results.get("filters", []) if f["regime"] in ("source", "random")]
    if not rows:
        return _row(3, "no filter statistics", NO_DATA, {})
    change = float(np.median([f["relative_change"] for f in rows]))
    random_fraction = float(np.mean([f["verdict"] == RANDOM_LIKE for f in rows]))
    a, b = change < 0.5, random_fraction >= 0.5
    verdict = SUPPORTED if a and b else NOT_SUPPORTED if not a and not b else MIXED
    evidence = (f"median relative change {change:.3f} over {len(rows)} layer-runs; "
                f"{100 * random_fraction:.0f}% of layer-runs pass as random")
    return _row(3, evidence, verdict, {"median_relative_change": change, "random_fraction": random_fraction})


def claim_frozen_encoder(results) -> dict:
    dice = _mean_dice(results)
    targets = sorted({t for t, _, _ in dice})
    ratios = {}
    for t in targets:
        size = max((s for tt, s, _ in dice if tt == t), key=size_order)
        fr, rd = dice.get((t, size, "frozen_random"), np.nan), dice.get((t, size, "random"), np.nan)
        if _finite(fr) and _finite(rd) and rd > 0:
            ratios[t] = (fr / rd, fr, rd, size)
    if not ratios:
        return _row(4, "no frozen_random/random pair", NO_DATA, {})
    verdict = (SUPPORTED if all(r[0] >= 0.9 for r in ratios.values())
               else NOT_SUPPORTED if all(r[0] < 0.75 for r in ratios.values()) else MIXED)
    evidence = "; ".join(f"{t} (n={r[3]}): frozen-random {r[1]:.3f} vs random {r[2]:.3f} → ratio {r[0]:.2f}"
                         for t, r in ratios.items())
    return _row(4, evidence, verdict, {t: {"ratio": r[0], "frozen_random": r[1], "random": r[2]}
                                         for t, r in ratios.items()})


def _layer_summaries(results, pick):
    """{target: {layer: interval}} for the CKA values that ``pick(target_cka)`` selects."""
    out = {}
    for target, c in results.get("cka", {}).items():
        values = pick(c) or {}
        out[target] = {layer: mean_interval(v) for layer, v in values.items()}
    return out


def claim_different_representations(results) -> dict:
    between = _layer_summaries(results, lambda c: c.get("between"))
    within = _layer_summaries(results, lambda c: c.get("within", {}).get("random"))
    differ, total, parts = 0, 0, []
    for t in between:
        for layer, bs in between[t].items():
            ws = within.get(t, {}).get(layer)
            if not ws or bs["n"] < 2 or ws["n"] < 2:
                continue
            total += 1
            differ += bs["high"] < ws["low"]
            parts.append(f"{t}/{layer}: between {format_interval(bs, 2)} vs within-random {format_interval(ws, 2)}")
    if not total:
        return _row("5a", "needs ≥ 2 values per layer on both sides", NO_DATA, {})
    verdict = SUPPORTED if differ >= total / 2 else NOT_SUPPORTED if differ == 0 else MIXED
    return _row("5a", f"{differ}/{total} layers differ; " + "; ".join(parts[:6]) + ("; …" if len(parts) > 6 else ""),
                verdict, {"layers_differ": differ, "layers": total})


def claim_variability(results) -> dict:
    tl = _layer_summaries(results, lambda c: c.get("within", {}).get("transfer"))
    rd = _layer_summaries(results, lambda c: c.get("within", {}).get("random"))
    as_high, much_lower, total, parts = 0, 0, 0, []
    for t in tl:
        for layer, s in tl[t].items():
            r = rd.get(t, {}).get(layer)
            if not r or s["n"] == 0 or r["n"] == 0:
                continue
            v_tl, v_rd = 1 - s["mean"], 1 - r["mean"]
            total += 1
            as_high += v_tl >= v_rd
            much_lower += v_tl < 0.5 * v_rd
            parts.append(f"{t}/{layer}: v_transfer {v_tl:.3f} vs v_random {v_rd:.3f}")
    if not total:
        return _row("5b", "no within-regime CKA", NO_DATA, {})
    verdict = SUPPORTED if as_high >= total / 3 else NOT_SUPPORTED if much_lower == total else MIXED
    return _row("5b", f"{as_high}/{total} layers with v_transfer ≥ v_random; " + "; ".join(parts[:6])
                + ("; …" if len(parts) > 6 else ""), verdict, {"as_high": as_high, "layers": total})


def claim_reuse_depth(results) -> dict:
    reuse = _layer_summaries(results, lambda c: c.get("reuse"))
    encoder_layers = results.get("encoder_layers", [])
    verdicts, parts = [], []
    for t, per_layer in reuse.items():
        means = [per_layer[l]["mean"] for l in encoder_layers if l in per_layer]
        if len(means) < 2:
            continue
        deeper_ge = max(means[1:]) >= means[0]
        decreasing = all(b < a for a, b in zip(means, means[1:]))
        verdicts.append(SUPPORTED if deeper_ge else NOT_SUPPORTED if decreasing else MIXED)
        parts.append(f"{t}: " + ", ".join(f"{l} {m:.2f}" for l, m in zip(encoder_layers, means)))
    if not verdicts:
        return _row("5c", "no source-vs-transfer CKA", NO_DATA, {})
    verdict = verdicts[0] if len(set(verdicts)) == 1 else MIXED
    return _row("5c", "reuse (CKA source vs fine-tuned) by encoder layer: " + "; ".join(parts), verdict,
                {"per_target": verdicts})


def evaluate_claims(results) -> list[dict]:
    return [claim_training_time(results), claim_gain_dependence(results), claim_filters(results),
            claim_frozen_encoder(results), claim_different_representations(results), claim_variability(results),
            claim_reuse_depth(results)]
