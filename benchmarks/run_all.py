"""Run every benchmark script present and print one combined table (CPU column; GPU column when present).

Each script runs in its own process with ``--json`` (and ``--quick`` if given here), so one failure or
crash does not stop the others. Missing scripts are listed as skipped. On a machine with a GPU, every
script runs twice: once restricted to the CPU (``JAX_PLATFORMS=cpu``, ``CUDA_VISIBLE_DEVICES=``) and once
on the GPU (both JAX and PyTorch see it).

A script's figures in the table are its result's ``headline`` dict when it has one, otherwise its
top-level numeric fields.

    python benchmarks/run_all.py --quick                  # every script, small sizes
    python benchmarks/run_all.py --json all.json          # full sizes, combined JSON
    python benchmarks/run_all.py --only train_step,cka
    python benchmarks/run_all.py --quick --devices gpu    # GPU column only (a lent GPU machine)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import write_json  # noqa: E402

# name: (script, its extra arguments)
SCRIPTS = {"input_pipeline": ("input_pipeline", []), "train_step": ("train_step", []),
           "train_step_3d": ("train_step", ["--dims", "3"]), "conv3d": ("conv3d", []), "seeds": ("seeds", []),
           "sliding_window": ("sliding_window", []), "devices": ("devices", []), "cka": ("cka", []),
           "torch_parity": ("torch_parity", [])}


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible (without importing JAX in this process)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_script(name: str, quick: bool, device: str, timeout: float, extra_env: dict | None = None) -> dict:
    """Run the script of ``SCRIPTS[name]``; returns {"status", "seconds", "result"|"error", "log_tail"}."""
    env = dict(os.environ)
    if device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{name}.json")
        script, extra = SCRIPTS[name]
        cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), "--json", out, *extra] + (["--quick"] if quick else [])
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": time.perf_counter() - start, "error": f"over {timeout:.0f} s"}
        seconds = time.perf_counter() - start
        log = (proc.stdout + proc.stderr).strip().splitlines()
        if proc.returncode != 0 or not os.path.isfile(out):
            last = next((line for line in reversed(log) if line.strip()), "no output")
            return {"status": "failed", "seconds": seconds, "error": f"exit {proc.returncode}: {last[:300]}",
                    "log_tail": log[-20:]}
        with open(out) as f:
            return {"status": "ok", "seconds": seconds, "result": json.load(f), "log_tail": log[-20:]}


def headline(result: dict) -> dict:
    """The figures shown in the table for one script's result."""
    if isinstance(result.get("headline"), dict):
        return result["headline"]
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def print_table(runs: dict, devices: list[str]) -> None:
    rows = []
    for name, by_device in runs.items():
        first = next(iter(by_device.values()))
        if first["status"] == "missing":
            rows.append((name, "(script not present)", ["-"] * len(devices)))
            continue
        keys = []
        for run in by_device.values():
            for k in headline(run.get("result", {})):
                if k not in keys:
                    keys.append(k)
        for run_device, run in by_device.items():
            if run["status"] != "ok":
                rows.append((name, f"{run_device}: {run['status']}", [run.get("error", "")[:60]] + [""] * (len(devices) - 1)))
        for k in keys:
            rows.append((name, k, [fmt(headline(by_device[d].get("result", {})).get(k)) if d in by_device else "-"
                                   for d in devices]))
    w0 = max([len("benchmark")] + [len(r[0]) for r in rows])
    w1 = max([len("figure")] + [len(r[1]) for r in rows])
    print(f"{'benchmark':{w0}s}  {'figure':{w1}s}  " + "  ".join(f"{d.upper():>12s}" for d in devices))
    for name, key, values in rows:
        print(f"{name:{w0}s}  {key:{w1}s}  " + "  ".join(f"{v:>12s}" for v in values))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--json", metavar="PATH", help="write every script's result and the run log as JSON")
    parser.add_argument("--only", default="", help="comma list of script names (default: all)")
    parser.add_argument("--devices", default="", help="comma list of cpu,gpu (default: cpu, plus gpu when present)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per script (default 900; 3600 full)")
    args = parser.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else SCRIPTS) if n]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")
    devices = [d for d in args.devices.split(",") if d] or ["cpu"] + (["gpu"] if gpu_present() else [])
    if set(devices) - {"cpu", "gpu"} or ("gpu" in devices and not gpu_present()):
        parser.error(f"--devices {args.devices}: choose from cpu and gpu (gpu only where nvidia-smi sees one)")
    timeout = args.timeout or (900 if args.quick else 3600)

    runs: dict = {}
    for name in names:
        runs[name] = {}
        if not os.path.isfile(os.path.join(HERE, f"{SCRIPTS[name][0]}.py")):
            runs[name] = {d: {"status": "missing"} for d in devices}
            print(f"[{name}] not present, skipped", flush=True)
            continue
        for device in devices:
            print(f"[{name}] on {device} …", flush=True)
            runs[name][device] = run_script(name, args.quick, device, timeout)
            r = runs[name][device]
            print(f"[{name}] {device}: {r['status']} in {r['seconds']:.0f} s" + (f" ({r['error']})" if r.get("error") else ""),
                  flush=True)
    print()
    print_table(runs, devices)
    combined = {"quick": args.quick, "devices": devices, "runs": runs}
    write_json(args.json, combined)
    failed = [f"{n}/{d}" for n, by in runs.items() for d, r in by.items() if r["status"] not in ("ok", "missing")]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return combined


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any(r["status"] not in ("ok", "missing") for by in result["runs"].values() for r in by.values()) else 0)
