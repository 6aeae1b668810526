"""``report.md``: the claims table (from :mod:`jaxfcn.reproduce.claims`), the rules, figures, and provenance."""
from __future__ import annotations

import os

from jaxfcn.reproduce.claims import size_order
from jaxfcn.reproduce.stats import format_interval, mean_interval


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(rows) -> str:
    lines = ["| # | claim | evidence | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['claim']} | {_escape(r['text'])} | {_escape(r['evidence'])} | **{r['verdict']}** |")
    return "\n".join(lines)


def dice_table(results) -> str:
    cells = {}
    for r in results["runs"]:
        cells.setdefault((r["target"], r["train_size"]), {}).setdefault(r["regime"], []).append(r["test_dice"])
    regimes = [g for g in ("random", "transfer", "frozen_random", "frozen_transfer")
               if any(g in v for v in cells.values())]
    lines = ["| target | n train | " + " | ".join(regimes) + " |", "|---|---|" + "---|" * len(regimes)]
    for (target, size), by in sorted(cells.items(), key=lambda item: (item[0][0], size_order(item[0][1]))):
        lines.append(f"| {target} | {size or 'all'} | "
                     + " | ".join(format_interval(mean_interval(by.get(g, []))) for g in regimes) + " |")
    return "\n".join(lines)


def evolution_table(results) -> str:
    """CKA(initialisation, final) per layer for each target and regime (1 = representation unchanged)."""
    evolution = results.get("evolution", {})
    layers = results.get("layers", [])
    if not evolution:
        return "(no runs with two or more snapshots)"
    lines = ["| target | regime | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
    for task, by_regime in evolution.items():
        for regime, evo in by_regime.items():
            lines.append(f"| {task} | {regime} | "
                         + " | ".join(f"{evo['vs_init'][l][-1]:.2f}" if l in evo["vs_init"] else "–" for l in layers)
                         + " |")
    return "\n".join(lines)


def write_report(results, rows, figures: dict[str, str], out_dir: str) -> str:
    """Write ``out_dir/report.md`` atomically and return its path. ``figures``: caption → PNG path."""
    about = results.get("about", {})
    parts = [
        "# jaxfcn study: what does transfer learning do to an FCN?",
        "",
        "Claims from Karimi, Warfield & Gholipour (2020/2021), tested on this run's data. Verdict rules were "
        "fixed before running (below); every number is in `results.json`.",
        "",
        "## Claims",
        "",
        claims_table(rows),
        "",
        "## Test Dice (mean [95% interval] over seeds; foreground classes averaged)",
        "",
        dice_table(results),
        "",
        "## Representation evolution: CKA(initialisation, final) per layer (lowest seed, largest size)",
        "",
        evolution_table(results),
        "",
        "## Figures",
        "",
    ]
    for caption, path in figures.items():
        parts += [f"**{caption}**", "", f"![{caption}]({os.path.relpath(path, out_dir)})", ""]
    parts += ["## Verdict rules", ""]
    parts += [f"- **Claim {r['claim']}**: {r['rule']}" for r in rows]
    parts += ["", "## About this run", ""]
    parts += [f"- **{k}**: {v}" for k, v in about.items()]
    text = "\n".join(parts) + "\n"
    path = os.path.join(out_dir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
