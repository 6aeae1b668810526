"""Where does the single-seed CPU train step spend its time, and which formulation is fastest?

Measures the full train step (``jaxfcn.train.step.make_train_step``: forward, backward, Adam; batch 8,
128², depth 4, base 16, fp32, no augmentation) for several *variants* in the same process, interleaved
(A B C A B C …) after compilation, and reports medians of wall time and of process CPU time, and the
median over rounds of each variant's time relative to the first variant in the same round. A variant is
a model strategy (``model.conv_impl``, ``model.compute_dtype``, the group-norm formulation) plus XLA
compiler options for the step's ``jit``.

    python benchmarks/conv_strategies.py                       # all variants, full size
    python benchmarks/conv_strategies.py --quick               # fewer variants and rounds (~2 min)
    python benchmarks/conv_strategies.py --variants default,eigen_conv --rounds 15
    python benchmarks/conv_strategies.py --profile default     # per-op-category breakdown (jax profiler)
    python benchmarks/conv_strategies.py --layers              # per-layer conv fwd / input-grad / kernel-grad
    python benchmarks/conv_strategies.py --torch               # add the PyTorch twin (eager, channels_last)

CPU time (``time.process_time``, all threads) is reported because this machine's 2 cores are shared:
under contention wall time mostly measures the neighbours, CPU time measures our work.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

# XLA:CPU library choices of jaxlib 0.10 (debug_options_flags.cc): YNNPACK handles dots and 2D f32
# convolutions by default; listing only INDIVIDUAL_DOT sends convolutions back to XLA's Eigen kernels.
YNN_DOTS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}

# name: (model overrides, compiler options, use flax's GroupNorm formulation)
VARIANTS = {
    "flax_groupnorm": ({}, {}, True),  # the step before this work: flax.linen.GroupNorm, XLA defaults
    "default": ({}, {}, False),
    "eigen_conv": ({}, YNN_DOTS_ONLY, False),
    "eigen_reduce_window_pool": ({}, YNN_DOTS_ONLY, False),  # the step before the reshape max-pool
    "ynn_off": ({}, YNN_OFF, False),
    "per_seed": ({"conv_impl": "per_seed"}, {}, False),
    "per_seed_eigen": ({"conv_impl": "per_seed"}, YNN_DOTS_ONLY, False),
    "im2col": ({"conv_impl": "im2col"}, {}, False),
    "bf16": ({"compute_dtype": "bfloat16"}, {}, False),
    "bf16_eigen": ({"compute_dtype": "bfloat16"}, YNN_DOTS_ONLY, False),
    "onednn": ({}, {"xla_cpu_use_onednn": True}, False),
    "fast_math": ({}, {"xla_cpu_enable_fast_math": True}, False),
    "xnn_graph": ({}, {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"}, False),
}
QUICK_VARIANTS = ("flax_groupnorm", "default", "eigen_conv", "per_seed")


def bench_config(size: int = 128, batch: int = 8, depth: int = 4, base: int = 16, classes: int = 4):
    """The benchmark config: 2D, 1 input channel, ``classes`` classes, no augmentation, Adam."""
    from jaxfcn.config import base_config

    c = base_config()
    c.model.in_channels, c.model.num_classes = 1, classes
    c.model.depth, c.model.base_width = depth, base
    c.data.slice_shape = (size, size)
    c.data.augment = False
    c.train.batch_size = batch
    return c


def synthetic_batch(config, seed: int = 0) -> dict:
    import jax

    k1, k2 = jax.random.split(jax.random.key(seed))
    shape = (config.train.batch_size, *config.data.slice_shape)
    return {"image": jax.random.normal(k1, shape + (config.model.in_channels,)),
            "label": jax.random.randint(k2, shape, 0, config.model.num_classes)}


@contextlib.contextmanager
def flax_group_norm():
    """Trace the model with flax.linen.GroupNorm's formulation (same params, same function)."""
    import flax.linen as nn

    from jaxfcn.models import layers

    def reference(x, scale, bias, groups, epsilon=1e-6):
        return nn.GroupNorm(num_groups=groups, epsilon=epsilon).apply({"params": {"scale": scale, "bias": bias}}, x)

    saved = layers.group_norm
    layers.group_norm = reference
    try:
        yield
    finally:
        layers.group_norm = saved


@contextlib.contextmanager
def reduce_window_pool():
    """Swap jaxfcn's reshape max-pool for ``flax.linen.max_pool`` (the reduce_window formulation) while tracing."""
    import flax.linen as nn

    from jaxfcn.models import layers

    saved = layers.max_pool
    layers.max_pool = lambda x, window: nn.max_pool(x, (window,) * (x.ndim - 2), strides=(window,) * (x.ndim - 2))
    try:
        yield
    finally:
        layers.max_pool = saved


def build_variant(config, name: str, frozen_parts=()):
    """(compiled step, initial state, batch) for ``VARIANTS[name]``; the state is donated at each call."""
    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, make_train_step

    overrides, options, use_flax_gn = VARIANTS[name]
    use_reduce_window = name.endswith("reduce_window_pool")
    c = config.copy_and_resolve_references()
    for key, value in overrides.items():
        c.model[key] = value
    model = build_model(c.model)
    step = make_train_step(model, c, frozen_parts)
    state = init_train_state(model, c, frozen_parts)
    batch = synthetic_batch(c)
    with flax_group_norm() if use_flax_gn else contextlib.nullcontext(), \
            reduce_window_pool() if use_reduce_window else contextlib.nullcontext():
        compiled = step.lower(state, batch).compile(compiler_options=options)
    return compiled, state, batch


def interleaved(runners: dict, rounds: int, warmup: int = 1) -> dict:
    """Run each ``runners[name]()`` (blocks until done) once per round, in rotating order; medians, ratios.

    Returns ``{name: {"wall_ms", "cpu_ms", "ratio"}}`` where ``ratio`` is the median over rounds of
    wall(name) / wall(first runner) within the same round (robust to drifting machine load).
    """
    names = list(runners)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(warmup + rounds):
        # rotate the order every round: a runner's slot (e.g. right after a memory-hungry one) biases it
        for n in names[r % len(names):] + names[:r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            runners[n]()
            if r >= warmup:
                wall[n].append(time.perf_counter() - w0)
                cpu[n].append(time.process_time() - c0)
    first = names[0]
    return {n: {"wall_ms": 1e3 * statistics.median(wall[n]), "cpu_ms": 1e3 * statistics.median(cpu[n]),
                "ratio": statistics.median(a / b for a, b in zip(wall[n], wall[first])),
                "cpu_ratio": statistics.median(a / b for a, b in zip(cpu[n], cpu[first]))}
            for n in names}


def step_runner(compiled, state, batch):
    import jax

    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)

    return run


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """Best observed fp32 matmul rate (GFLOP/s) on this machine, with the same XLA client."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# --- torch twin (optional side-by-side) ------------------------------------------------------------------

def torch_runner(config, channels_last: bool = True):
    """The PyTorch twin's eager train step (same loss and Adam), on the same synthetic batch."""
    import numpy as np
    import torch

    from jaxfcn.interop.torch import TorchUNet, make_optimizer, segmentation_loss

    torch.set_num_threads(os.cpu_count() or 1)
    net = TorchUNet(config)
    batch = synthetic_batch(config)
    x = torch.from_numpy(np.asarray(batch["image"])).movedim(-1, 1).contiguous()
    y = torch.from_numpy(np.asarray(batch["label"])).long()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(net.parameters(), config.train)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = segmentation_loss(net(x), y, config.train)
        loss.backward()
        opt.step()

    return run


# --- profile: per-op-category time of one compiled step --------------------------------------------------

def _hlo_computations(text: str) -> tuple[dict, str]:
    comps, current, entry = {}, None, None
    for line in text.splitlines():
        m = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
        if m:
            current = m.group(2)
            comps[current] = []
            entry = current if m.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current:
            comps[current].append(line)
    return comps, entry


def _called_ops(comps: dict, line: str) -> list[str]:
    ops = []
    for callee in re.findall(r"calls=%([\w.\-]+)", line):
        for inner in comps.get(callee, []):
            m = re.match(r"\s*(?:ROOT )?%\S+ = \S+ ([\w\-]+)\(", inner)
            if m:
                ops.append(m.group(1))
            ops += _called_ops(comps, inner)
    return ops


def categorize(ops: list[str], op_name: str, shape: str) -> str:
    """A human category for one top-level HLO instruction, from its ops and its JAX source op name."""
    backward = "transpose(" in op_name
    if "convolution" in ops:
        if not backward:
            return "conv forward"
        dims = [int(d) for d in re.findall(r"\d+", shape.split("[", 1)[1].split("]", 1)[0])] if "[" in shape else []
        # the kernel gradient is kernel-shaped: small spatial window
        return "conv kernel-grad" if len(dims) >= 4 and max(dims[1:-1]) <= 7 else "conv input-grad"
    if "dot" in ops:
        where = "upconv" if "/up_" in op_name else "head" if "/head/" in op_name else "dot"
        return f"{where} dot {'backward' if backward else 'forward'}"
    if "GroupNorm" in op_name or "/norm_" in op_name:
        return "groupnorm " + ("backward" if backward else "forward")
    if {"reduce-window", "select-and-scatter"} & set(ops) or "max_pool" in op_name:
        return "max-pool"
    if "relu" in op_name or ("select_n" in op_name and "block_" in op_name):
        return "relu"
    if "UNet" not in op_name:
        if "jvp(" in op_name or "softmax" in op_name or "one_hot" in op_name or "take_along_axis" in op_name:
            return "loss"
        if ops and set(ops) <= {"iota", "fusion"}:
            return "iota (max-pool indices)"
        return "optimizer/other"
    if set(ops) <= {"transpose", "copy", "bitcast", "fusion", "parameter"}:
        return "layout copy"
    if {"concatenate", "slice", "pad"} & set(ops):
        return "concat/slice/pad"
    return "other"


def hlo_categories(hlo_text: str) -> dict:
    """{instruction name: (category, JAX op name, shape)} for the entry computation."""
    comps, entry = _hlo_computations(hlo_text)
    info = {}
    for line in comps[entry]:
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+?) ([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        info[name] = (categorize([op] + _called_ops(comps, line), op_name, shape), op_name, shape)
    return info


def profile(config, name: str, steps: int = 5) -> dict:
    """Per-category milliseconds of XLA thunks per step (jax profiler trace of ``steps`` steps)."""
    import jax

    compiled, state, batch = build_variant(config, name)
    info = hlo_categories(compiled.as_text())
    run = step_runner(compiled, state, batch)
    run(), run()
    trace_dir = tempfile.mkdtemp(prefix="jaxfcn_profile_")
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
        run()
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    per_category = collections.Counter()
    per_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in info:
                    category, op_name, shape = info[event.name]
                    per_category[category] += event.duration_ns / steps / 1e6
                    short = op_name.split("UNet)")[-1].split("/conv_general_dilated")[0]
                    per_op[f"{category}: {short} {shape.split('{')[0]}"] += event.duration_ns / steps / 1e6
    shutil.rmtree(trace_dir, ignore_errors=True)
    total = sum(per_category.values())
    return {"variant": name, "thunk_ms_per_step": total,
            "categories": {k: round(v, 2) for k, v in per_category.most_common()},
            "top_ops": {k: round(v, 2) for k, v in per_op.most_common(25)}}


# --- per layer: conv forward / input-grad / kernel-grad under each XLA library ---------------------------

def layer_shapes(config) -> list[tuple[int, int, int]]:
    """(spatial size, Cin, Cout) of every 3×3 convolution of the U-Net, in order."""
    m = config.model
    size = config.data.slice_shape[0]
    widths = [m.base_width * m.width_multiplier**i for i in range(m.depth)]
    shapes, cin = [], m.in_channels
    for level, w in enumerate(widths):
        s = size // 2**level
        shapes += [(s, cin, w), (s, w, w)]
        cin = w
    for level in reversed(range(m.depth - 1)):
        s = size // 2**level
        shapes += [(s, 2 * widths[level], widths[level]), (s, widths[level], widths[level])]
    return shapes


def per_layer(config, rounds: int) -> list[dict]:
    import jax

    from jaxfcn.models.layers import xla_conv

    def forward(x, w, dy):
        return xla_conv(x, w)

    def input_grad(x, w, dy):
        return jax.vjp(lambda x: xla_conv(x, w), x)[1](dy)[0]

    def kernel_grad(x, w, dy):
        return jax.vjp(lambda w: xla_conv(x, w), w)[1](dy)[0]

    rows = []
    n = config.train.batch_size
    for s, cin, cout in layer_shapes(config):
        keys = jax.random.split(jax.random.key(0), 3)
        args = (jax.random.normal(keys[0], (n, s, s, cin)), jax.random.normal(keys[1], (3, 3, cin, cout)),
                jax.random.normal(keys[2], (n, s, s, cout)))
        runners = {}
        for fname, fn in (("forward", forward), ("input_grad", input_grad), ("kernel_grad", kernel_grad)):
            for lib, options in (("ynn", {}), ("eigen", YNN_DOTS_ONLY)):
                compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
                runners[f"{fname}/{lib}"] = (lambda c=compiled: jax.block_until_ready(c(*args)))
        times = interleaved(runners, rounds)
        rows.append({"shape": f"{s}² {cin}→{cout}", "gflop": 2 * n * s * s * 9 * cin * cout / 1e9,
                     **{k: round(v["cpu_ms"], 2) for k, v in times.items()}})
        print(f"  {rows[-1]['shape']:>14s}  " + "  ".join(f"{k}={v['cpu_ms']:.1f}" for k, v in times.items()), flush=True)
    return rows


def machine() -> dict:
    import jax
    import jaxlib

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = re.search(r"model name\s*:\s*(.*)", flags)
    return {"date": datetime.date.today().isoformat(), "cpu": model.group(1) if model else platform.processor(),
            "cores": os.cpu_count(), "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
            "load_avg": os.getloadavg()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 variants, 5 rounds")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--variants", help=f"comma-separated, first is the reference; from {list(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--profile", metavar="VARIANT", help="per-category breakdown instead of timing")
    parser.add_argument("--layers", action="store_true", help="per-layer conv timings (ynn vs eigen)")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch twin (eager, channels_last)")
    parser.add_argument("--frozen-encoder", action="store_true")
    args = parser.parse_args(argv)

    config = bench_config(size=args.size)
    result = {"benchmark": "conv_strategies", "machine": machine(),
              "config": {"batch": 8, "size": args.size, "depth": 4, "base_width": 16, "dtype": "float32"}}
    print(json.dumps(result["machine"]))
    if args.profile:
        result["profile"] = prof = profile(config, args.profile)
        print(f"profile of '{args.profile}': {prof['thunk_ms_per_step']:.1f} ms of XLA thunks per step")
        for k, v in prof["categories"].items():
            print(f"  {v:8.1f} ms  {100 * v / prof['thunk_ms_per_step']:5.1f}%  {k}")
        print("top ops:")
        for k, v in prof["top_ops"].items():
            print(f"  {v:8.1f} ms  {k}")
    elif args.layers:
        result["layers"] = per_layer(config, args.rounds or 7)
    else:
        names = args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
        rounds = args.rounds or (5 if args.quick else 10)
        frozen = ("encoder",) if args.frozen_encoder else ()
        runners, flops = {}, {}
        for name in names:
            t = time.perf_counter()
            compiled, state, batch = build_variant(config, name, frozen)
            flops[name] = flops_of(compiled)
            runners[name] = step_runner(compiled, state, batch)
            print(f"compiled {name} in {time.perf_counter() - t:.1f} s ({flops[name] / 1e9:.1f} GFLOP/step)", flush=True)
        if args.torch:
            runners["torch_channels_last"] = torch_runner(config)
        times = interleaved(runners, rounds)
        peak = matmul_gflops()
        result.update(rounds=rounds, frozen=list(frozen), matmul_gflops=peak, variants={})
        print(f"\n{'variant':22s} {'wall ms':>9s} {'cpu ms':>9s} {'÷ first':>8s} {'cpu ÷ first':>11s}  GFLOP/s(wall)")
        for name, t in times.items():
            f = flops.get(name, flops[names[0]])
            row = dict(t, gflop=f / 1e9, gflops=f / 1e6 / t["wall_ms"])
            result["variants"][name] = row
            print(f"{name:22s} {t['wall_ms']:9.1f} {t['cpu_ms']:9.1f} {t['ratio']:8.2f} {t['cpu_ratio']:11.2f}  "
                  f"{row['gflops']:.1f}")
        print(f"matmul peak on this machine now: {peak:.1f} GFLOP/s; load average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
