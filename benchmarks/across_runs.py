"""JAX ÷ best PyTorch over several runs of one benchmark, with a 95 % interval over runs.

A run's paired interval (``paired.py``) covers the spread between its rounds. Runs minutes apart on this
shared VM can differ by more than that: two 1 mm sliding-window runs 12 minutes apart read 0.92 [0.80, 0.98]
and 1.12 [0.98, 1.16] (``results/2026-12-03_intervals/``). A goal is judged on runs, so this script takes
the result JSONs of ``train_step.py`` and ``sliding_window.py`` runs, groups them by setting, and prints each
run's ratio (JAX median ÷ best PyTorch median, the run's ``speedup_vs_torch``; the sliding window at each
batch, and, for runs with ``--lockstep-rounds``, the paired median of its volumes timed batch by batch)
and, per setting, their median with the sign-test interval over runs (``paired.paired_ratio``).

    python benchmarks/across_runs.py benchmarks/results/2026-12-03_{host_memory,settle,intervals}/*.json
    python benchmarks/across_runs.py --json out.json results/*/ts3d_64_base8*.json

Files of other benchmarks are skipped and named.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402


def jax_variant(config: dict) -> str:
    """``""`` for the shipped JAX side; else what differs (e.g. ``", JAX skip_join concat"``): a run of another
    formulation is another setting, never one more run of the shipped one."""
    parts = []
    if config.get("conv_impl", ["fast"])[:1] != ["fast"]:
        parts.append(f"conv_impl {config['conv_impl'][0]}")
    if config.get("skip_join"):
        parts.append(f"skip_join {config['skip_join'][0]}")
    return f", JAX {', '.join(parts)}" if parts else ""


def run_ratios(result: dict) -> dict[str, float]:
    """``{setting: JAX ÷ best PyTorch}`` of one result JSON (a train step gives its full and frozen steps)."""
    if result.get("benchmark") not in ("train_step", "sliding_window"):
        return {}
    c = result["config"]
    if result["benchmark"] == "train_step":
        shape = f"{c['size']}{'³' if c['dims'] == 3 else '²'}"
        name = (f"train step {shape}, batch {c['batch']}, base {c['base_width']}, depth {c['depth']}, {c['dtype']}"
                f"{jax_variant(c)}")
        return {f"{name}, {regime}": result[regime]["speedup_vs_torch"] for regime in ("full", "frozen")
                if result[regime].get("speedup_vs_torch")}
    name = (f"sliding window {c['spacing_mm']:g} mm, {c['patch']}³ windows, overlap {c['overlap']:g}, "
            f"base {c['base_width']}{jax_variant(c)}")
    ratios = {f"{name}, batch {batch}": row["speedup_vs_torch"] for batch, row in result["by_batch"].items()}
    if "lockstep" in result:  # the same volumes timed batch by batch: a setting of its own, per block size
        block = result["lockstep"].get("block", 1)
        blocks = f", {block} batches per block" if block != 1 else ""
        ratios[f"{name}, batch {c['batches'][0]}, batch by batch{blocks}"] = \
            result["lockstep"]["paired_speedup_vs_torch"]["median"]
    return ratios


def collect(paths: list[str]) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
    """``({setting: [(run date, ratio), …] in date order}, skipped paths)``."""
    by_setting, skipped = defaultdict(list), []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
            ratios = run_ratios(result) if isinstance(result, dict) else {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: not a readable benchmark result ({type(e).__name__}: {e})")
        if not ratios:
            skipped.append(path)
        date = result.get("machine", {}).get("date", "") if isinstance(result, dict) else ""
        for setting, ratio in ratios.items():
            by_setting[setting].append((date, ratio))
    return {k: sorted(v) for k, v in sorted(by_setting.items())}, skipped


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="result JSONs of train_step.py / sliding_window.py runs")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    args = parser.parse_args(argv)
    by_setting, skipped = collect(args.paths)
    summary = {}
    for setting, runs in by_setting.items():
        ratios = [r for _, r in runs]
        summary[setting] = {"runs": [{"date": d, "ratio": r} for d, r in runs],
                            "across_runs": paired_ratio(ratios, [1.0] * len(ratios))}
        print(f"{setting}: {format_ratio(summary[setting]['across_runs'], unit='runs')} over {len(runs)} runs "
              f"({', '.join(f'{r:.2f}' for r in ratios)})")
    if skipped:
        print(f"skipped (not a train_step or sliding_window result): {', '.join(skipped)}")
    write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
