"""Per-seed cost of training K seeds in one program, for each strategy of ``jaxfcn.train.seeds``.

For every strategy and K in (1, 2, 4, 8) the K-seed train step (``jaxfcn.train.seeds.stacked_step_function``: forward,
backward, Adam for every seed; shared batch) is compiled and timed in the same process as the ordinary
single-seed step (``make_train_step``), interleaved (baseline, s1/K1, s1/K2, …, baseline, …) after
compilation. Per-seed time = K-seed step time / K; the reported ratio is the median over rounds of
(per-seed time) / (single-seed step time of the same round). Goal: K=8 at ≤ 1.0× on CPU.

    python benchmarks/seeds.py                     # batch 8, 128², depth 4, base 16, fp32 (the README table)
    python benchmarks/seeds.py --quick             # 32², depth 3, base 8, K = 8, vmap/per_seed/unrolled, 3 rounds
    python benchmarks/seeds.py --strategies per_seed,vmap --ks 1,8 --rounds 7 --json out.json
    python benchmarks/seeds.py --dims 3 --ks 4          # the 3D U-Net (16³ patches, batch 2, depth 3, base 8)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, median_ms, write_json  # noqa: E402  (and the process settings of every benchmark)
from paired import format_ratio, paired_ratio  # noqa: E402

QUICK_STRATEGIES = ("vmap", "per_seed", "unrolled")


def build(config, strategy: str | None, k: int, frozen_parts=()):
    """A runner for the K-seed step of ``strategy`` (None: the ordinary single-seed step)."""
    import jax

    from jaxfcn.models import build_model
    from jaxfcn.train import seeds
    from jaxfcn.train.step import init_train_state, make_train_step
    from conv_strategies import synthetic_batch

    model = build_model(config.model)
    batch = synthetic_batch(config)
    if strategy is None:
        step = make_train_step(model, config, frozen_parts)
        state = init_train_state(model, config, frozen_parts)
    else:
        from jaxfcn.models.layers import compiler_options
        from jaxfcn.train.step import seed_key

        step = jax.jit(seeds.stacked_step_function(model, config, frozen_parts, strategy=strategy),
                       donate_argnums=0, compiler_options=compiler_options())
        state = seeds.stack_states([init_train_state(model, config, frozen_parts, rng=seed_key(n)) for n in range(k)])
    compiled = step.lower(state, batch).compile()
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)

    return run


def measure(config, strategies, ks, rounds: int, frozen_parts=()) -> dict:
    runners = {"single": build(config, None, 1, frozen_parts)}
    for strategy in strategies:
        for k in ks:
            t = time.perf_counter()
            runners[(strategy, k)] = build(config, strategy, k, frozen_parts)
            print(f"compiled {strategy} K={k} in {time.perf_counter() - t:.1f} s", flush=True)
    times = interleave(runners, rounds, warmup=1, rotate=True)  # the order rotates (a slot can bias a runner)
    single = times["single"]
    out = {"single_ms": median_ms(single["wall"]), "single_cpu_ms": median_ms(single["cpu"]), "strategies": {}}
    for strategy in strategies:
        rows = {}
        for k in ks:
            t = times[(strategy, k)]
            per_seed_wall = [s / k for s in t["wall"]]
            rows[k] = {"step_ms": median_ms(t["wall"]),
                       "per_seed_ms": median_ms(per_seed_wall),
                       "per_seed_ratio": paired_ratio(per_seed_wall, single["wall"]),
                       "per_seed_cpu_ratio": paired_ratio([s / k for s in t["cpu"]], single["cpu"])}
        out["strategies"][strategy] = rows
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 3 rounds (~2 min)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--strategies", help="comma-separated (default: all)")
    parser.add_argument("--ks", help="comma-separated K values (default 1,2,4,8; quick 8)")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--frozen-encoder", action="store_true")
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3),
                        help="3: the 3D U-Net on 16³ patches, batch 2, depth 3, base 8 (with or without --quick)")
    args = parser.parse_args(argv)

    import jax

    from conv_strategies import bench_config, machine
    from jaxfcn.train.seeds import SEED_STRATEGIES, choose_seed_strategy

    if args.dims == 3:
        config = bench_config(size=16, batch=2, depth=3, base=8, dims=3)
    elif args.quick:
        config = bench_config(size=32, batch=4, depth=3, base=8)
    else:
        config = bench_config()
    # --quick keeps it near 2 minutes: K=8 only, and not im2col/map (3x and 20x slower in the full table)
    strategies = args.strategies.split(",") if args.strategies else (
        list(QUICK_STRATEGIES) if args.quick else list(SEED_STRATEGIES))
    ks = [int(k) for k in (args.ks or ("8" if args.quick else "1,2,4,8")).split(",")]
    rounds = args.rounds or (3 if args.quick else 5)
    frozen = ("encoder",) if args.frozen_encoder else ()
    result = {"benchmark": "seeds", "machine": machine(), "rounds": rounds, "frozen": list(frozen),
              "auto": choose_seed_strategy(jax.default_backend()),
              "config": {"batch": config.train.batch_size, "size": config.data.slice_shape[0], "dims": args.dims,
                         "depth": config.model.depth, "base_width": config.model.base_width, "dtype": "float32"}}
    print(json.dumps(result["machine"]))
    result.update(measure(config, strategies, ks, rounds, frozen))
    k_max = max(ks)
    result["headline"] = {"single_ms": round(result["single_ms"], 1), **{
        f"{strategy} K={k_max} per-seed ratio": round(rows[k_max]["per_seed_ratio"]["median"], 3)
        for strategy, rows in result["strategies"].items()}}
    print(f"\nsingle-seed step: {result['single_ms']:.1f} ms wall, {result['single_cpu_ms']:.1f} ms CPU")
    print(f"per-seed time ÷ single-seed step (same round; median of {rounds} rounds [95 % interval]), wall [cpu]:")
    print(f"{'strategy':10s}" + "".join(f"{'K=' + str(k):>29s}" for k in ks))
    for strategy, rows in result["strategies"].items():
        print(f"{strategy:10s}" + "".join(f"{format_ratio(rows[k]['per_seed_ratio']):>22s} "
                                          f"[{rows[k]['per_seed_cpu_ratio']['median']:4.2f}]" for k in ks))
    print(f"--seed-strategy auto on {jax.default_backend()}: {result['auto']}; load average {os.getloadavg()}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
