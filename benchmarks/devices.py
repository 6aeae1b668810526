"""Data-parallel scaling: train-step time over 1, 2, 4 and 8 devices (``--parallel sharding`` and ``pmap``).

The global batch is fixed (8), so D devices each take 8/D examples: ideal scaling divides the step time by D.
A third column trains 8 stacked seeds with the seed axis sharded over the devices (``--seeds 8``: mesh
(seed gcd(8, D), data D/gcd)) and reports the time per seed.

On CPU the "devices" are host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=D``) that share
the same cores: the table then shows the **overhead** of partitioning and collectives, not a speedup (D host
devices on 2 cores cannot be faster than one device using both cores). Each device count runs in its own
process, because the device count is fixed when JAX starts. On a machine with GPUs the same steps run on
1, 2, 4, … GPUs (as many as exist) in one process: that is the real scaling.

Timing: per device count, sharding and pmap (and the seeds program) interleaved in one process after
compilation, ``block_until_ready`` before each clock read, medians over rounds.

    python benchmarks/devices.py --quick              # tiny model (depth 2, width 4, 32²): minutes on 2 cores
    python benchmarks/devices.py --json out.json      # depth 4, width 16, 128² (the default 2D config)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import add_common_args, block, interleave, machine_info, median_ms, write_json  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)
GLOBAL_BATCH = 8
SEEDS = 8


def make_config(quick: bool):
    from jaxfcn.config import base_config

    c = base_config()
    c.model.in_channels, c.model.num_classes = 1, 4
    c.train.batch_size, c.train.lr_schedule = GLOBAL_BATCH, "constant"
    if quick:
        c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
        c.data.slice_shape = (32, 32)
    return c


def synthetic_batch(config, seed: int = 0) -> dict:
    """A fixed batch of the config's shape (the step's cost does not depend on the pixel values)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (GLOBAL_BATCH, *config.data.slice_shape)
    return {"image": rng.standard_normal(shape + (1,), dtype=np.float32),
            "label": rng.integers(0, config.model.num_classes, shape).astype(np.int32)}


def program(config, model, mode: str, devices: int, seeds: int):
    """``run(steps)`` training ``steps`` steps of ``mode`` on ``devices`` devices (``seeds`` 0: one unstacked seed)."""
    from jaxfcn.train.seeds import stacked_step_function
    from jaxfcn.train.parallel import plan_devices
    from jaxfcn.train.step import init_train_state, train_step_function

    plan = plan_devices(mode, GLOBAL_BATCH, num_seeds=seeds, num_devices=devices)
    members = []
    for n in range(max(seeds, 1)):
        config.train.seed = n
        members.append(init_train_state(model, config))
    if seeds:
        fn = stacked_step_function(model, config, (), strategy=config.train.seed_strategy, shared_batch=True,
                                   axis_name=plan.axis_name)
    else:
        fn = train_step_function(model, config, (), axis_name=plan.axis_name)
    box = {"state": plan.place_state(plan.stack(members))}
    step = plan.compile_step(fn, box["state"])
    batch = plan.place_batch(synthetic_batch(config))

    def run(steps: int):
        for _ in range(steps):
            box["state"], metrics = step(box["state"], batch)
        block(metrics)

    return run, plan.describe()


def measure(devices: int, quick: bool, rounds: int, steps: int) -> dict:
    """Median ms per step of each program on ``devices`` devices (this process's devices)."""
    import jax

    from jaxfcn.models import build_model

    config = make_config(quick)
    model = build_model(config.model)
    modes = {"sharding": ("sharding" if devices > 1 else "none", 0)}
    if devices > 1:
        modes["pmap"] = ("pmap", 0)
    modes[f"seeds{SEEDS}_sharding"] = ("sharding" if devices > 1 else "none", SEEDS)
    runs, plans = {}, {}
    for name, (mode, seeds) in modes.items():
        runs[name], plans[name] = program(config, model, mode, devices, seeds)
    times = interleave({name: (lambda r=r: r(steps)) for name, r in runs.items()}, rounds=rounds)
    out = {"devices": devices, "backend": jax.default_backend(), "plans": plans}
    for name, t in times.items():
        per = steps * (SEEDS if name.startswith("seeds") else 1)
        out[name + "_ms"] = median_ms(t["wall"], per)
        out[name + "_cpu_ms"] = median_ms(t["cpu"], per)
    return out


def run_worker(devices: int, quick: bool, rounds: int, steps: int) -> dict:
    """``measure`` in a fresh process with ``devices`` host CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(devices), "--rounds", str(rounds),
           "--steps", str(steps)] + (["--quick"] if quick else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{devices} devices: worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown: wall ms (CPU ms of all threads) per step, and the ratio of wall times to one device."""
    base = rows[0]
    seeds = f"seeds{SEEDS}_sharding"
    lines = [f"| devices | sharding ms/step | × 1 device | pmap ms/step | {SEEDS} seeds, seed axis sharded: ms per seed-step "
             "| × 1 device |", "|---|---|---|---|---|---|"]

    def cell(r, name):
        return f"{r[name + '_ms']:.1f} ({r[name + '_cpu_ms']:.1f})" if name + "_ms" in r else "–"

    for r in rows:
        lines.append(f"| {r['devices']} | {cell(r, 'sharding')} | {r['sharding_ms'] / base['sharding_ms']:.2f} | "
                     f"{cell(r, 'pmap')} | {cell(r, seeds)} | {r[seeds + '_ms'] / base[seeds + '_ms']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 7, quick 5)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed round (default 3, quick 5)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 7)
    steps = args.steps or (5 if args.quick else 3)
    if args.worker:
        print(json.dumps(measure(args.worker, args.quick, rounds, steps)))
        return {}

    gpus = _gpu_count()
    if gpus:  # real devices: every count in one process
        counts = [d for d in DEVICE_COUNTS if d <= gpus]
        rows = [measure(d, args.quick, rounds, steps) for d in counts]
    else:
        rows = []
        for d in DEVICE_COUNTS:
            rows.append(run_worker(d, args.quick, rounds, steps))
            print(f"{d} device(s): sharding {rows[-1]['sharding_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if not gpus:
        print("\nCPU host devices share the same cores: this shows partitioning/collective overhead, not speedup.")
    result = {"rows": rows, "table": text, "quick": args.quick, "global_batch": GLOBAL_BATCH, "machine": machine_info(),
              "headline": {f"sharding_{r['devices']}dev_ms": round(r["sharding_ms"], 2) for r in rows}}
    write_json(args.json, result)
    return result


def _gpu_count() -> int:
    """GPUs JAX can use in this process (0 when restricted to the CPU)."""
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        return 0
    import jax

    return len(jax.devices()) if jax.default_backend() == "gpu" else 0


if __name__ == "__main__":
    main()
