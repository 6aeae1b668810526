"""``report.md``: what the run can show, the claims table, the tests, Dice, CKA with its null baselines,
figures, the verdict rules with their deviations, and provenance."""
from __future__ import annotations

import os

from jaxfcn.analysis.width_null import targets_sharing_a_baseline
from jaxfcn.reproduce.claims import DICE_FLOOR, size_order
from jaxfcn.reproduce.stats import ALPHA, format_interval, format_p
from jaxfcn.files import write_text_atomic

PAPER = ('Karimi, Warfield & Gholipour, "Critical Assessment of Transfer Learning for Medical Image Segmentation '
         'with Fully Convolutional Neural Networks" (arXiv 2006.00356, 2020), published as "Transfer Learning in '
         'Medical Image Segmentation: New Insights from Analysis of the Dynamics of Model Parameters and Learned '
         'Representations", Artificial Intelligence in Medicine 116:102078 (2021), doi 10.1016/j.artmed.2021.102078')
# The smallest design whose verdicts the report presents as a finding.
DESIGN_MINIMUM = {"targets": (3, "targets"), "train_sizes": (4, "training-set sizes"), "seeds": (5, "seeds")}
LEARNS = 0.5  # random-init test Dice at the largest size below this: the grid did not learn that target
REGIME_ORDER = ("random", "transfer", "transfer_encoder", "frozen_random", "frozen_transfer")


def _escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def smoke_test_reasons(results) -> list[str]:
    """Why this run is a pipeline smoke test and not a finding (empty: it meets the design minimum)."""
    design = results.get("design")
    if not design:
        return []
    reasons = ["the --quick grid"] if design.get("grid") == "quick" else []
    for key, (minimum, name) in DESIGN_MINIMUM.items():
        count = len(design.get(key, []))
        if count < minimum:
            reasons.append(f"{name}: {count}, below the design minimum of {minimum}")
    return reasons


def claims_table(rows) -> str:
    return _table(["#", "claim", "evidence", "verdict"],
                  [[r["claim"], r["text"], r["evidence"], f"**{r['verdict']}**"] for r in rows])


def tests_table(tests) -> str:
    if not tests:
        return "(no test could be made)"
    return _table(["test", "estimate [95% interval]", "p", "Holm p", f"significant (α = {ALPHA})"],
                  [[t["name"], format_interval(t, 3), format_p(t.get("p")), format_p(t.get("p_holm")),
                    "yes" if t.get("significant") else "no"] for t in tests])


def _regimes(rows) -> list[str]:
    present = {r["regime"] for r in rows}
    return [g for g in REGIME_ORDER if g in present] + sorted(present - set(REGIME_ORDER))


def dice_table(results) -> str:
    rows = results.get("conditions", [])
    if not rows:
        return "(no evaluated runs)"
    regimes = _regimes(rows)
    cells = {(r["target"], r["train_size"], r["regime"]): r for r in rows}
    body = []
    for target, size in sorted({(r["target"], r["train_size"]) for r in rows}, key=lambda k: (k[0], size_order(k[1]))):
        line = [target, size or "all"]
        for g in regimes:
            r = cells.get((target, size, g))
            if r is None:
                line.append("–")
                continue
            text = format_interval(r["dice"], 3)
            if "dice_real" in r:
                text += f" · real {format_interval(r['dice_real'], 3)}"
            failed = {k: v for k, v in r.get("status", {}).items() if k != "ok"}
            if failed:
                text += " (" + ", ".join(f"{v} {k}" for k, v in failed.items()) + ")"
            line.append(text)
        body.append(line)
    return _table(["target", "n train"] + regimes, body)


def learning_warnings(results) -> list[str]:
    out = []
    by_target = {}
    for r in results.get("conditions", []):
        if r["regime"] == "random":
            by_target.setdefault(r["target"], []).append(r)
    for target, rows in sorted(by_target.items()):
        largest = max(rows, key=lambda r: size_order(r["train_size"]))
        d = largest["dice"].get("estimate")
        if d is None or d < LEARNS:
            out.append(f"{target}: random-init test Dice {'n/a' if d is None else f'{d:.3f}'} at n="
                       f"{largest['train_size'] or 'all'} (< {LEARNS}: this grid did not learn the target"
                       + (f"; claims needing random-init Dice ≥ {DICE_FLOOR} are insufficient there)"
                          if d is None or d < DICE_FLOOR else ")"))
    return out


def diverged_list(results) -> str:
    bad = [r for r in results.get("source", []) + results.get("runs", []) if r.get("status", "ok") != "ok"]
    if not bad:
        return "None: every run trained to its last step."
    lines = []
    for r in bad:
        what = (f"{r['kind']} {r['target']} n={r['train_size'] or 'all'} {r['regime']} seed {r['seed']}"
                if r["kind"] == "target" else f"source {r['target']} seed {r['seed']}")
        info = r.get("diverged") or {}
        lines.append(f"- {what}: **{r['status']}**" + (f" at step {info['step']}" if info.get("step") else "")
                     + (f" ({info['message']})" if info.get("message") else ""))
    return "\n".join(lines)


def time_table(results) -> str:
    claim = next((r for r in results.get("claims", []) if r["claim"] == "1"), None)
    cells = (claim or {}).get("numbers", {}).get("conditions", [])
    if not cells:
        return "(no condition whose random-init runs reach the floor)"
    regimes = _regimes([{"regime": g} for c in cells for g in c["mean_time"]])
    body = [[c["target"], c["train_size"] or "all", f"{c['tau']:.3f}"]
            + [f"{format_interval(c['mean_time'][g], 0)} · AUC {format_interval(c['auc'][g], 3)}"
               if g in c["mean_time"] else "–" for g in regimes] for c in cells]
    censored = claim["numbers"].get("censored", {})
    note = "Censored (never reached τ) / runs: " + ", ".join(f"{g} {v['censored']}/{v['runs']}"
                                                            for g, v in sorted(censored.items()))
    return _table(["target", "n train", "τ"] + regimes, body) + "\n\n" + note


def cka_section(results) -> str:
    settings = results.get("cka_settings")
    summary = results.get("cka_summary", {})
    if not settings:
        return "(no CKA)"
    probes = ", ".join(f"{t} {n}" for t, n in settings.get("probes", {}).items())
    parts = [f"Estimator: **{settings['estimator']} {settings['kernel']} CKA**. Feature convention: "
             f"{settings['feature_convention']}. Probe images per target: {probes} (a seeded subset of its "
             f"{settings['probe_split']} split, the same for every model). Values are means over pairs of "
             "resampled models with 95% intervals (models resampled, not pairs).",
             "",
             f"Null baselines, measured in this run: **untrained** = CKA between {settings['untrained_baseline']}; "
             f"**permutation** = {settings['permutation_baseline']} ({settings['permutations']} draws per layer; "
             "mean and 95th percentile). A layer differs or is reused only relative to these (rules 5a, 5c).", ""]
    for target, layers in summary.items():
        rows = []
        for layer in [l for l in results.get("layers", layers) if l in layers]:
            s = layers[layer]
            perm = s.get("permutation", {})
            rows.append([layer, *(format_interval(x, 3) if x else "–" for x in (
                s["within"].get("random"), s["within"].get("transfer"), s["vs_random"].get("transfer"),
                s.get("reuse"), s["within"].get("untrained"))),
                f"{perm['mean']:+.3f} ({perm['q95']:.3f})" if perm.get("mean") is not None else "–"])
        parts += [f"**{target}**", "", _table(["layer", "within random-init", "within transfer",
                                               "transfer vs random-init", "reuse (transfer vs own source)",
                                               "untrained (null)", "permutation null mean (95th pct)"], rows), ""]
    return "\n".join(parts + width_null_section(results))


def width_null_section(results) -> list[str]:
    """The untrained baseline against network width (``results["cka_untrained_by_width"]``), as lines."""
    by_width = results.get("cka_untrained_by_width") or {}
    if not by_width:
        return []
    parts = ["**The untrained baseline depends on width.** CKA between independently initialised, untrained "
             "networks of this architecture at other base widths (same probes, estimator and convention; mean "
             "over pairs of networks; * = the study's width). Random features of the same input agree more as "
             "width grows, so this null is a property of the architecture, not of the estimator.", ""]
    for targets, c in targets_sharing_a_baseline(by_width):
        rows = [[f"{w}{' *' if w == c.get('study_width') else ''}"] + [f"{c['mean'][l][i]:.3f}" for l in c["layers"]]
                for i, w in enumerate(c["widths"])]
        shared = (f"; one table for {len(targets)} targets: they share their probe images, and an untrained "
                  "network never sees labels" if len(targets) > 1 else "")
        parts += [f"*{', '.join(targets)}* ({c['seeds']} networks, {c['pairs']} pairs per width{shared})", "",
                  _table(["base width"] + c["layers"], rows), ""]
    return parts


def evolution_table(results) -> str:
    """CKA(initialisation, final) per layer for each target and regime (1 = representation unchanged)."""
    evolution = results.get("evolution", {})
    layers = results.get("layers", [])
    if not evolution:
        return "(no runs with two or more snapshots)"
    body = [[task, regime] + [f"{evo['vs_init'][l][-1]:.2f}" if l in evo["vs_init"] else "–" for l in layers]
            for task, by_regime in evolution.items() for regime, evo in by_regime.items()]
    return _table(["target", "regime"] + layers, body)


def design_text(results) -> str:
    """One paragraph: the grid behind the verdicts (targets, sizes, regimes, seeds, steps)."""
    d = results.get("design") or {}
    if not d:
        return ""
    steps = d.get("target_steps")
    steps = (", ".join(f"{t} {n}" for t, n in steps.items()) if isinstance(steps, dict) else str(steps))
    return (f"Grid `{d.get('grid', 'custom')}`: source {d.get('source')} ({d.get('source_steps')} steps, one "
            f"source model per target seed); targets {', '.join(d.get('targets', []))}; training subjects "
            f"{', '.join(str(n) for n in d.get('train_sizes', []))}; regimes {', '.join(d.get('regimes', []))}; "
            f"seeds {len(d.get('seeds', []))}; target steps {steps}; {d.get('runs')} runs.")


def deviations_table(results) -> str:
    devs = results.get("rules", {}).get("deviations", [])
    if not devs:
        return "None."
    return _table(["date", "rules", "change", "reason"], [[d["date"], d["rules"], d["change"], d["reason"]]
                                                          for d in devs])


def render(results, figures: dict[str, str], out_dir: str) -> str:
    rows = results.get("claims", [])
    rules = results.get("rules", {})
    reasons = smoke_test_reasons(results)
    parts = []
    if reasons:
        parts += [f"**Pipeline smoke test, not a finding**: {'; '.join(reasons)}. It shows that the pipeline runs "
                  "end to end; its verdicts do not answer the paper's claims.", ""]
    parts += ["# jaxfcn study: what does transfer learning do to an FCN?", "",
              f"The claims of {PAPER}, tested on this run's data. Verdict rules (version {rules.get('version', '?')}) "
              "were written before the run; any later change is logged under Deviations. Every number is in "
              "`results.json`.", "", design_text(results), "", "## Claims", "", claims_table(rows), ""]
    warnings = learning_warnings(results)
    if warnings:
        parts += ["**Targets this grid did not learn**:", ""] + [f"- {w}" for w in warnings] + [""]
    parts += ["## Tests (one Holm family over all claims)", "", tests_table(results.get("tests", [])), "",
              "## Test Dice (mean [95% interval] over seeds × test subjects; foreground classes averaged)", "",
              dice_table(results), "", "## Diverged runs", "", diverged_list(results), "",
              "## Claim 1: steps to the common target τ (mean [95% interval] over seeds; censored runs at their "
              "last evaluation) and val-Dice AUC", "", time_table(results), "",
              "## CKA between models (largest training size)", "", cka_section(results),
              "## Representation evolution: CKA(initialisation, final) per layer (lowest seed, largest size)", "",
              evolution_table(results), "", "## Figures", ""]
    for caption, path in figures.items():
        parts += [f"**{caption}**", "", f"![{caption}]({os.path.relpath(path, out_dir)})", ""]
    parts += ["## Verdict rules", ""]
    parts += [f"- **Claim {r['claim']}**: {r['rule']}" for r in rows]
    if rules.get("common"):
        parts += [f"- **All claims**: {rules['common']}"]
    parts += ["", "## Deviations", "", deviations_table(results), "", "## About this run", ""]
    parts += [f"- **{k}**: {v}" for k, v in results.get("about", {}).items()]
    return "\n".join(parts) + "\n"


def write_report(results, figures: dict[str, str], out_dir: str) -> str:
    """Write ``out_dir/report.md`` atomically and return its path. ``figures``: caption → PNG path."""
    path = os.path.join(out_dir, "report.md")
    write_text_atomic(path, render(results, figures, out_dir))
    return path
