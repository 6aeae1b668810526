"""One U-Net train step, JAX (jaxfcn) against its PyTorch twin, full and frozen-encoder.

A step is forward, Dice+CE loss, backward and an Adam update, on one fixed batch (no augmentation on
either side, constant learning rate). Sides, all in this process, interleaved per round after warm-up:

* ``jax``: ``jaxfcn.train.step.make_train_step`` (jitted, state donated), blocked on the step's loss;
* ``torch_nchw``: :class:`jaxfcn.interop.torch.TorchUNet`, eager, default NCHW memory format;
* ``torch_channels_last``: the same, model and input in ``channels_last`` (the faster eager layout on CPU);
* ``torch_compile``: forward + loss through ``torch.compile`` (inductor), channels_last; skipped with its
  error if it does not work on the machine;
* ``torch_compile_cudagraphs`` (GPU; ask for it with ``--torch``): the same with ``mode="reduce-overhead"``,
  which replays the compiled forward and backward as CUDA graphs, removing PyTorch's per-kernel launch cost.

Frozen-encoder steps: JAX differentiates only the trainable subtree; PyTorch sets ``requires_grad=False``
on the encoder (no encoder backward either). Every side starts from the same converted weights, uses the
same threads (``torch.set_num_threads(len(os.sched_getaffinity(0)))``: every core this process may run on,
as XLA uses; ``taskset -c 0 python …`` gives both sides one core), batch and precision.

Reported: ms/step (median wall; CPU-time medians too), ``speedup_vs_torch`` = best PyTorch ms ÷ JAX ms,
``flops_fraction`` = achieved FLOP/s (XLA ``cost_analysis`` FLOPs of the step lowered with the plain layers
÷ time) ÷ the fp32 matmul FLOP/s measured in this run (the larger of JAX's and PyTorch's), and frozen/full
time ratios.

    python benchmarks/train_step.py                # batch 8, 128², depth 4, base 16, fp32 (the goal's setting)
    python benchmarks/train_step.py --quick        # 64², fewer rounds, no torch.compile (about 2 minutes)
    python benchmarks/train_step.py --dtype bfloat16 --json out.json
    python benchmarks/train_step.py --precision tf32 --profile   # on a GPU: TF32 on both sides, kernel profile
    python benchmarks/train_step.py --dims 3 --size 32 --batch 2  # 3D: 32³ patches (default 3D setting)
    python benchmarks/train_step.py --dims 3 --jax fast,plain     # JAX in two formulations (model.conv_impl)
    python benchmarks/train_step.py --skip-join concat --torch channels_last  # A/B of the decoder's skip join

``--dims 3`` trains the 3D U-Net on (batch, size, size, size) patches (defaults: 32³, batch 2); PyTorch's
channels_last side is then ``channels_last_3d``. ``--jax`` lists ``model.conv_impl`` values, each its own JAX
side (``jax`` is the first, the others ``jax_<impl>``), interleaved with the rest.

On a GPU both sides run there (``torch_device``), each timed call is 20 steps (a step is milliseconds), and
``--precision`` chooses full float32 (default) or TF32 tensor cores for both sides alike (``set_precision``).
``--profile`` then adds a device-kernel profile of the JAX step and of each PyTorch side (``device_profile``).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PRECISIONS, add_common_args, interleave, machine_info, matmul_flops, median_ms,  # noqa: E402
                    set_precision, sync, torch_device, write_json)
from paired import format_ratio, paired_ratio  # noqa: E402

TORCH_VARIANTS = ("nchw", "channels_last", "compile", "compile_cudagraphs")
NUM_CLASSES = 4  # the built-in tissue task: background, CSF, grey matter, white matter


def bench_config(size: int, batch: int, depth: int, base: int, dtype: str, dims: int = 2, conv_impl: str = "fast"):
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth, c.model.base_width = depth, base
    c.model.in_channels, c.model.num_classes = 1, NUM_CLASSES
    c.model.compute_dtype = dtype
    c.model.spatial_dims = c.data.dims = dims
    c.model.conv_impl = conv_impl
    c.data.slice_shape = (size, size)
    c.data.patch_shape = (size, size, size)
    c.data.augment = False  # the twin has no augmentation; both sides compute exactly the same step
    c.train.batch_size = batch
    c.train.lr_schedule = "constant"
    return c


def xla_flops(lowered) -> float:
    """FLOPs of one step by XLA's cost analysis of the program as written (before backend optimisation).

    Not the compiled program's count: XLA:GPU turns convolutions into cuDNN custom calls that its compiled
    cost analysis does not count (an H200 run reported 1.3 GFLOP for a 27 GFLOP step). On a CPU the two
    counts agree within 0.4% (27.14 and 27.24 GFLOP at batch 8, 128²).
    """
    try:
        analysis = lowered.cost_analysis()
    except NotImplementedError:  # a backend without pre-compilation cost analysis: NaN, not a wrong count
        return float("nan")
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


def jax_side(config, batch, frozen, steps, skip_join: str = "auto"):
    """(run(): `steps` steps blocked on the last loss, XLA FLOPs of one step); ``skip_join`` as
    :class:`jaxfcn.models.UNet`'s."""
    import jax

    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, make_train_step

    model = build_model(config.model).clone(skip_join=skip_join)
    state = init_train_state(model, config, frozen)
    step = make_train_step(model, config, frozen)
    batch = jax.device_put(batch)
    # Counted on the textbook layers' program (the same function): XLA's cost analysis counts nothing inside
    # a custom call, and on the CPU `fast` convolves in oneDNN custom calls.
    flops = xla_flops(make_train_step(model.clone(conv_impl="plain"), config, frozen).lower(state, batch))
    holder = {"state": state}

    def run():
        state = holder["state"]
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        holder["state"] = state

    return run, flops, state.params


def torch_side(config, params, batch, frozen, steps, variant, device):
    """run(): `steps` PyTorch steps of the twin in `variant` (nchw | channels_last | compile)."""
    import numpy as np
    import torch

    from jaxfcn.interop.torch import TorchUNet, flax_to_torch, freeze, make_optimizer, segmentation_loss

    net = TorchUNet(config)
    net.load_state_dict(flax_to_torch(params, config))
    net = net.to(device).train()
    x = torch.from_numpy(np.moveaxis(np.asarray(batch["image"]), -1, 1).copy()).to(device)
    y = torch.from_numpy(np.asarray(batch["label"])).long().to(device)
    if variant in ("channels_last", "compile", "compile_cudagraphs"):
        fmt = torch.channels_last if config.model.spatial_dims == 2 else torch.channels_last_3d
        net = net.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    opt = make_optimizer(freeze(net, frozen), config.train)

    def loss_fn(x, y):
        return segmentation_loss(net(x), y, config.train)

    if variant == "compile":
        loss_fn = torch.compile(loss_fn)
    cudagraphs = variant == "compile_cudagraphs"
    if cudagraphs:
        loss_fn = torch.compile(loss_fn, mode="reduce-overhead")
    autocast = config.model.compute_dtype == "bfloat16"

    def run():
        for _ in range(steps):
            if cudagraphs:  # a new iteration: the graphs may overwrite the previous step's outputs
                torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(x, y)
            loss.backward()
            opt.step()
        sync(device)
        return float(loss.detach())

    return run


def main(argv=None) -> dict:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2: slices; 3: cubic patches")
    parser.add_argument("--size", type=int, default=0,
                        help="slice or patch side (default 2D: 128, 64 with --quick; 3D: 32)")
    parser.add_argument("--batch", type=int, default=0, help="default 8 in 2D, 2 in 3D")
    parser.add_argument("--jax", default="fast", help="comma list of model.conv_impl values, one JAX side each")
    parser.add_argument("--skip-join", default="", help="comma list of concat,split: one more JAX side each "
                        "(jax_skip-<value>) with the decoder's skips joined that way (the jax side: the default rule)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 7; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per timed call (default 3, 2 with --quick; on a GPU 20, 10 with --quick)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="float32 products on both sides, or TF32 on both (GPUs only; CPUs compute fp32)")
    parser.add_argument("--profile", action="store_true", help="add a device-kernel profile of every side (GPU)")
    parser.add_argument("--torch", default="", help="comma list of nchw,channels_last,compile,compile_cudagraphs "
                        "(default: the first three; without compile with --quick)")
    args = parser.parse_args(argv)
    size = args.size or (32 if args.dims == 3 else 64 if args.quick else 128)
    args.batch = args.batch or (2 if args.dims == 3 else 8)
    from jaxfcn.models.fast_ops import CONV_IMPLS

    from jaxfcn.models.unet import SKIP_JOINS

    impls = [i for i in args.jax.split(",") if i]
    if not impls or set(impls) - set(CONV_IMPLS):
        parser.error(f"--jax {args.jax}: choose from {', '.join(CONV_IMPLS)}")
    joins = [j for j in args.skip_join.split(",") if j]
    if set(joins) - set(SKIP_JOINS):
        parser.error(f"--skip-join {args.skip_join}: choose from {', '.join(SKIP_JOINS)}")
    rounds = args.rounds or (3 if args.quick else 7)
    variants = [v for v in (args.torch or ("nchw,channels_last" if args.quick else "nchw,channels_last,compile"))
                .split(",") if v]
    unknown = set(variants) - set(TORCH_VARIANTS)
    if unknown:
        parser.error(f"--torch: unknown {sorted(unknown)}; choose from {', '.join(TORCH_VARIANTS)}")

    import numpy as np
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = torch_device()
    set_precision(args.precision)
    steps = args.steps or {(False, "cpu"): 3, (True, "cpu"): 2, (False, "cuda"): 20, (True, "cuda"): 10}[
        (args.quick, device)]
    config = bench_config(size, args.batch, args.depth, args.base, args.dtype, args.dims, impls[0])
    rng = np.random.default_rng(0)
    spatial = (size,) * args.dims
    batch = {"image": rng.standard_normal((args.batch, *spatial, 1), dtype=np.float32),
             "label": rng.integers(0, NUM_CLASSES, (args.batch, *spatial)).astype(np.int32)}

    fns, flops, errors = {}, {}, {}
    for regime, frozen in (("full", ()), ("frozen", ("encoder",))):
        run, flops[regime], params = jax_side(config, batch, frozen, steps)
        fns[f"{regime}/jax"] = run
        for impl in impls[1:]:
            other = bench_config(size, args.batch, args.depth, args.base, args.dtype, args.dims, impl)
            fns[f"{regime}/jax_{impl}"] = jax_side(other, batch, frozen, steps)[0]
        for join in joins:
            fns[f"{regime}/jax_skip-{join}"] = jax_side(config, batch, frozen, steps, join)[0]
        for variant in variants:
            name = f"{regime}/torch_{variant}"
            try:
                fn = torch_side(config, params, batch, frozen, steps, variant, device)
                fn()  # torch.compile compiles here; failures are reported, not fatal
                fns[name] = fn
            except Exception as e:  # noqa: BLE001 - any backend failure means "does not work here"
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    peak = matmul_flops()
    times = interleave(fns, rounds=rounds, warmup=1)
    peak_after = matmul_flops()  # bracket the run: the neighbours' load changes the ceiling too
    profiles = {}
    if args.profile:
        from device_profile import jax_profile, print_profile, torch_profile

        # JAX first: once torch.profiler has subscribed to CUPTI, JAX's profiler cannot in this process.
        for name, fn in sorted(fns.items(), key=lambda item: not item[0].endswith("/jax")):
            try:
                profiles[name] = (jax_profile if name.endswith("/jax") else torch_profile)(fn, steps)
                print_profile(name, profiles[name])
            except Exception as e:  # noqa: BLE001 - a profiler failure must not lose the timings
                errors[f"profile {name}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"

    ms = {name: median_ms(t["wall"], steps) for name, t in times.items()}
    cpu_ms = {name: median_ms(t["cpu"], steps) for name, t in times.items()}
    ceiling = max(max(peak.values()), max(peak_after.values()))
    regimes = {}
    for regime in ("full", "frozen"):
        torch_ms = {k.split("/", 1)[1]: v for k, v in ms.items() if k.startswith(regime + "/torch_")}
        jax_impls_ms = {k.split("/", 1)[1]: v for k, v in ms.items() if k.startswith(regime + "/jax_")}
        best = min(torch_ms, key=torch_ms.get) if torch_ms else None
        jax_ms = ms[f"{regime}/jax"]
        jax_wall = times[f"{regime}/jax"]["wall"]
        # Paired per round (neighbouring measurements share the machine's load): torch/JAX ratios (paired.py).
        paired = {k: paired_ratio(times[f"{regime}/{k}"]["wall"], jax_wall) for k in torch_ms}
        regimes[regime] = {
            "jax_ms": jax_ms,
            "jax_other_impls_ms": jax_impls_ms,
            "jax_other_paired_vs_jax": {k: paired_ratio(times[f"{regime}/{k}"]["wall"], jax_wall)
                                        for k in jax_impls_ms},
            "paired_speedup_vs_torch": paired,
            "torch_ms": torch_ms,
            "best_torch": best,
            "speedup_vs_torch": torch_ms[best] / jax_ms if best else None,
            "xla_flops_per_step": flops[regime],
            "jax_gflops_per_s": flops[regime] / jax_ms * 1e-6,
            "flops_fraction": flops[regime] / (jax_ms * 1e-3) / ceiling,
            "torch_flops_fraction": {k: flops[regime] / (v * 1e-3) / ceiling for k, v in torch_ms.items()},
        }
    result = {
        "benchmark": "train_step",
        "machine": machine_info(),
        "config": {"batch": args.batch, "size": size, "dims": args.dims, "conv_impl": impls, "skip_join": joins,
                   "depth": args.depth, "base_width": args.base,
                   "dtype": args.dtype, "precision": args.precision if device == "cuda" else "fp32",
                   "classes": NUM_CLASSES, "optimizer": "adam", "rounds": rounds,
                   "steps_per_call": steps, "torch_device": device, "torch_threads": torch.get_num_threads(),
                   "quick": args.quick},
        "matmul_gflops_per_s": {"before": {k: v * 1e-9 for k, v in peak.items()},
                                "after": {k: v * 1e-9 for k, v in peak_after.items()}},
        "full": regimes["full"],
        "frozen": regimes["frozen"],
        "speedup_vs_torch": regimes["full"]["speedup_vs_torch"],
        "flops_fraction": regimes["full"]["flops_fraction"],
        "frozen_over_full": {"jax": ms["frozen/jax"] / ms["full/jax"],
                             **{v: ms[f"frozen/torch_{v}"] / ms[f"full/torch_{v}"] for v in variants
                                if f"full/torch_{v}" in ms and f"frozen/torch_{v}" in ms}},
        "ms_per_step": ms,
        "cpu_ms_per_step": cpu_ms,
        "rounds_ms": {name: [round(1e3 * s / steps, 1) for s in t["wall"]] for name, t in times.items()},
        "errors": errors,
        "profiles": profiles,
    }
    full, frozen = regimes["full"], regimes["frozen"]
    result["headline"] = {
        "jax_ms": full["jax_ms"],
        "best_torch_ms": full["torch_ms"].get(full["best_torch"]) if full["best_torch"] else None,
        "best_torch": full["best_torch"],
        "speedup_vs_torch": full["speedup_vs_torch"],
        "flops_fraction": full["flops_fraction"],
        "frozen_jax_ms": frozen["jax_ms"],
        "frozen_speedup_vs_torch": frozen["speedup_vs_torch"],
        "frozen_over_full_jax": result["frozen_over_full"]["jax"],
    }
    for prefix, g in (("", full), ("frozen_", frozen)):  # the per-round ratio against the best PyTorch, 95 %
        if g["best_torch"]:
            vs_best = g["paired_speedup_vs_torch"][g["best_torch"]]
            result["headline"][f"{prefix}paired_vs_best_torch"] = format_ratio(vs_best)
    print_table(result)
    write_json(args.json, result)
    return result


def print_table(r: dict) -> None:
    c = r["config"]
    print(f"train step: batch {c['batch']}, {c['size']}{'³' if c['dims'] == 3 else '²'}, depth {c['depth']}, "
          f"base {c['base_width']}, {c['dtype']}, JAX conv_impl {','.join(c['conv_impl'])} "
          f"({c['precision']} products), "
          f"{r['machine']['backend']} {r['machine']['device']} ({r['machine']['cpus']} cpus, torch threads {c['torch_threads']}); "
          f"medians of {c['rounds']} rounds × {c['steps_per_call']} steps")
    names = sorted({k.split("/", 1)[1] for k in r["ms_per_step"]}, key=lambda n: (n != "jax", n))
    print(f"{'side':24s} {'full ms':>9s} {'frozen ms':>10s} {'frozen/full':>12s} {'full cpu-ms':>12s}")
    for n in names:
        full, frozen = r["ms_per_step"].get(f"full/{n}"), r["ms_per_step"].get(f"frozen/{n}")
        ratio = f"{frozen / full:.2f}" if full and frozen else "-"
        cpu = r["cpu_ms_per_step"].get(f"full/{n}")
        print(f"{n:24s} {full or float('nan'):9.1f} {frozen or float('nan'):10.1f} {ratio:>12s} {cpu or float('nan'):12.1f}")
    for regime in ("full", "frozen"):
        g = r[regime]
        paired = ", ".join(f"{k} {format_ratio(v)}" for k, v in g["paired_speedup_vs_torch"].items())
        print(f"{regime}: speedup_vs_torch {g['speedup_vs_torch'] or float('nan'):.2f} (best torch: {g['best_torch']}; "
              f"per-round paired torch/JAX: {paired}), "
              f"flops_fraction {g['flops_fraction']:.3f} ({g['jax_gflops_per_s']:.1f} GFLOP/s of "
              f"{g['xla_flops_per_step'] / 1e9:.2f} GFLOP/step)")
        if g["jax_other_paired_vs_jax"]:
            print(f"{regime}: other JAX sides ÷ jax, paired: "
                  + ", ".join(f"{k} {format_ratio(v, 3)}" for k, v in g["jax_other_paired_vs_jax"].items()))
    print("matmul GFLOP/s:", {k: {f: round(v, 1) for f, v in d.items()} for k, d in r["matmul_gflops_per_s"].items()})
    for name, err in r["errors"].items():
        print(f"skipped {name}: {err}")


if __name__ == "__main__":
    main()
