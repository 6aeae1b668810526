"""Does the input pipeline keep the train step fed? Examples/s supplied vs examples/s consumed.

Supplied: ``dataset.batches`` (host: deterministic indices, gather from the prepared cache) →
``jax.device_put`` → jitted on-device :func:`jaxfcn.data.augment`, blocked until ready.
Consumed: the jitted train step (``jaxfcn.train.step.make_train_step``, which augments inside the step)
on the same batch shape and model, blocked until ready.

Both are measured in the same process, interleaved (supply, step, supply, step, …) after compilation;
each round times ``--batches`` batches, and the report gives medians over rounds and their ratio.
Goal: ratio ≥ 5.

    python benchmarks/input_pipeline.py            # default 2D config: 2 mm, 128², batch 8, U-Net depth 4 width 16
    python benchmarks/input_pipeline.py --quick    # tiny: 6 mm, 32², depth 2 width 4 (seconds)
    python benchmarks/input_pipeline.py --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# common first: the process settings of the `jaxfcn` command (host memory kept), as in every benchmark.
from common import write_json  # noqa: E402


def make_config(quick: bool, task: str, batch_size: int):
    from jaxfcn.config import base_config

    c = base_config()
    c.data.task = task
    c.train.batch_size = batch_size
    if quick:
        c.data.spacing, c.data.slice_shape = 6.0, (32, 32)
        c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    return c


def train_step_for(config, info):
    """``(step(state, batch) -> (state, metrics), state)`` from jaxfcn.train.step."""
    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, make_train_step

    config.model.num_classes, config.model.in_channels = info.num_classes, info.in_channels
    model = build_model(config.model)
    return make_train_step(model, config), init_train_state(model, config)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config (seconds)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--task", default="tissue")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=0, help="batches per timed round (default 50 / 5 quick)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    import jax

    from jaxfcn.data import augment, open_dataset

    config = make_config(args.quick, args.task, args.batch_size)
    dataset = open_dataset(config.data, depth=config.model.depth, progress=True)
    step, state = train_step_for(config, dataset.info)
    # The step index is folded into the key inside the jitted function (an eager fold_in costs ~1-6 ms on CPU).
    aug = jax.jit(lambda key, i, batch: augment(jax.random.fold_in(key, i), batch, config.data))
    batch_size = config.train.batch_size
    n_supply = args.batches or (200 if args.quick else 50)
    n_step = max(2, n_supply // 10) if not args.quick else 20

    stream = dataset.batches(batch_size, seed=0)
    key = jax.random.key(0)

    def supply(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            batch = jax.device_put(next(stream))
            out = aug(key, i, batch)
        jax.block_until_ready(out)
        return n * batch_size / (time.perf_counter() - start)

    def host_only(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            next(stream)
        return n * batch_size / (time.perf_counter() - start)

    fixed = jax.device_put(next(stream))

    def consume(n: int) -> float:
        nonlocal state
        state, metrics = step(state, fixed)  # keeps the dispatch queue in the same state every round
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, fixed)
        jax.block_until_ready(metrics)
        return n * batch_size / (time.perf_counter() - start)

    supply(2), host_only(2), consume(1)  # compile / warm up
    rates = {"supply": [], "host_only": [], "consume": []}
    for _ in range(args.rounds):
        rates["supply"].append(supply(n_supply))
        rates["consume"].append(consume(n_step))
        rates["host_only"].append(host_only(n_supply))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "input_pipeline",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} "
                   f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "config": {"task": args.task, "quick": args.quick, "batch_size": batch_size,
                   "example_shape": list(dataset.info.example_shape), "model_depth": config.model.depth,
                   "base_width": config.model.base_width, "train_examples": dataset.num_examples("train")},
        "supply_examples_per_s": med["supply"],
        "host_only_examples_per_s": med["host_only"],
        "train_step_examples_per_s": med["consume"],
        "ratio_supply_over_consume": med["supply"] / med["consume"],
        "rounds": {k: [round(float(x), 1) for x in v] for k, v in rates.items()},
    }
    print(f"input pipeline ({result['machine']}):")
    print(f"  supplied (host batches + device_put + jitted augment): {med['supply']:10.1f} examples/s")
    print(f"  host batches only:                                    {med['host_only']:10.1f} examples/s")
    print(f"  consumed by the train step:                           {med['consume']:10.1f} examples/s")
    print(f"  ratio supplied / consumed: {result['ratio_supply_over_consume']:.1f}x (goal >= 5x)")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
