"""Where does the single-seed CPU train step spend its time, and which formulation is fastest?

Measures the full train step (``jaxfcn.train.step.make_train_step``: forward, backward, Adam; batch 8,
128², depth 4, base 16, fp32, no augmentation) for several *variants* in the same process, interleaved
(A B C A B C …) after compilation, and reports medians of wall time and of process CPU time, and the
median over rounds of each variant's time relative to the first variant in the same round, and XLA's
estimate of the bytes each step accesses. A variant is the layers' formulation (``model.conv_impl``:
``plain`` flax layers, ``fast``, ``per_seed``, ``im2col``; :mod:`jaxfcn.models.fast_ops`), the compute
dtype and the XLA compiler options of the step (``default``: none; ``eigen_ynn_reduce``: the kept step,
i.e. the options of ``jaxfcn.models.layers.compiler_options`` and the ``fast`` layers).

    python benchmarks/conv_strategies.py                       # all variants, full size
    python benchmarks/conv_strategies.py --quick               # before / kept / XLA defaults (~2 min)
    python benchmarks/conv_strategies.py --variants eigen_conv,eigen_ynn_reduce --rounds 15
    python benchmarks/conv_strategies.py --profile eigen_ynn_reduce   # time per thunk kind (jax profiler)
    python benchmarks/conv_strategies.py --layers              # per-layer conv fwd / input-grad / kernel-grad
    python benchmarks/conv_strategies.py --torch               # add the PyTorch twin (eager, channels_last)

CPU time (``time.process_time``, all threads) is reported because this machine's 2 cores are shared:
under contention wall time mostly measures the neighbours, CPU time measures our work.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, median_ms, write_json  # noqa: E402  (and the process settings of every benchmark)
from paired import format_ratio, paired_ratio  # noqa: E402
from device_profile import traced, union_ns  # noqa: E402

# XLA:CPU library choices of jaxlib 0.10 (debug_options_flags.cc): YNNPACK handles dots and 2D f32
# convolutions by default; listing only INDIVIDUAL_DOT sends convolutions back to XLA's Eigen kernels.
YNN_DOTS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
# Dots and reductions to YNNPACK, convolutions to Eigen (the kept options, jaxfcn.models.layers). Without
# REDUCE, XLA's tree-reduction rewrite turns every large reduction (group-norm statistics and gradients)
# into a slow 32x32 reduce-window.
YNN_DOTS_REDUCE = {"xla_cpu_experimental_ynn_fusion_type":
                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
YNN_DOTS_REDUCE_ELTWISE = {"xla_cpu_experimental_ynn_fusion_type":
                           "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"}

SCHED_OFF = {"xla_cpu_enable_concurrency_optimized_scheduler": False}
SCHED_ON = {"xla_cpu_enable_concurrency_optimized_scheduler": True}
# name: (model overrides, compiler options)
VARIANTS = {
    "plain": ({"conv_impl": "plain"}, {}),  # the flax layers, XLA defaults
    "default": ({}, {}),
    "eigen_conv": ({}, YNN_DOTS_ONLY),
    "eigen_ynn_reduce": ({}, YNN_DOTS_REDUCE),
    "plain_eigen_ynn_reduce": ({"conv_impl": "plain"}, YNN_DOTS_REDUCE),
    "eigen_ynn_reduce_eltwise": ({}, YNN_DOTS_REDUCE_ELTWISE),
    "eigen_ynn_reduce_sched_off": ({}, {**YNN_DOTS_REDUCE, **SCHED_OFF}),
    "eigen_ynn_reduce_sched_on": ({}, {**YNN_DOTS_REDUCE, **SCHED_ON}),
    "eigen_ynn_reduce_single_thread_eigen": ({}, {**YNN_DOTS_REDUCE, "xla_cpu_multi_thread_eigen": False}),
    "ynn_off": ({}, YNN_OFF),
    "per_seed": ({"conv_impl": "per_seed"}, {}),
    "per_seed_eigen": ({"conv_impl": "per_seed"}, YNN_DOTS_ONLY),
    "im2col": ({"conv_impl": "im2col"}, {}),
    "bf16": ({"compute_dtype": "bfloat16"}, {}),
    "bf16_eigen": ({"compute_dtype": "bfloat16"}, YNN_DOTS_REDUCE),
    # XLA:CPU flags on top of the kept options (Eigen convolutions, YNNPACK dots and reductions)
    "onednn": ({}, {**YNN_DOTS_REDUCE, "xla_cpu_use_onednn": True}),
    "fast_math": ({}, {**YNN_DOTS_REDUCE, "xla_cpu_enable_fast_math": True}),
    "xnn_graph": ({}, {**YNN_DOTS_REDUCE,
                       "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"}),
}
QUICK_VARIANTS = ("plain_eigen_ynn_reduce", "eigen_ynn_reduce", "default")


def bench_config(size: int = 128, batch: int = 8, depth: int = 4, base: int = 16, classes: int = 4, dims: int = 2):
    """The benchmark config: ``dims``-D (size² slices or size³ patches), 1 input channel, ``classes`` classes,
    no augmentation, Adam."""
    from jaxfcn.config import base_config

    c = base_config()
    c.model.in_channels, c.model.num_classes = 1, classes
    c.model.depth, c.model.base_width = depth, base
    c.model.spatial_dims = c.data.dims = dims
    c.data.slice_shape, c.data.patch_shape = (size,) * 2, (size,) * 3
    c.data.augment = False
    c.train.batch_size = batch
    return c


def synthetic_batch(config, seed: int = 0) -> dict:
    import jax

    k1, k2 = jax.random.split(jax.random.key(seed))
    spatial = config.data.slice_shape if config.model.spatial_dims == 2 else config.data.patch_shape
    shape = (config.train.batch_size, *spatial)
    return {"image": jax.random.normal(k1, shape + (config.model.in_channels,)),
            "label": jax.random.randint(k2, shape, 0, config.model.num_classes)}


def build_variant(config, name: str, frozen_parts=()):
    """(compiled step, initial state, batch) for ``VARIANTS[name]``; the state is donated at each call."""
    import jax

    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, train_step_function

    overrides, options = VARIANTS[name]
    c = config.copy_and_resolve_references()
    for key, value in overrides.items():
        c.model[key] = value
    model = build_model(c.model)
    # make_train_step's program without its CPU compiler options (jit-level options would survive
    # .compile(compiler_options={})): every variant states all of its options, "default" none.
    step = jax.jit(train_step_function(model, c, frozen_parts), donate_argnums=0)
    state = init_train_state(model, c, frozen_parts)
    batch = synthetic_batch(c)
    compiled = step.lower(state, batch).compile(compiler_options=options)
    return compiled, state, batch


def interleaved(runners: dict, rounds: int, warmup: int = 1) -> dict:
    """Run each ``runners[name]()`` (blocks until done) once per round, in rotating order; medians, ratios.

    Returns ``{name: {"wall_ms", "cpu_ms", "ratio", "cpu_ratio"}}`` where ``ratio`` is ``paired_ratio`` of
    wall(name) / wall(first runner) within the same round (robust to drifting machine load).
    """
    times = interleave(runners, rounds, warmup, rotate=True)
    first = times[next(iter(runners))]
    return {n: {"wall_ms": median_ms(t["wall"]), "cpu_ms": median_ms(t["cpu"]),
                "ratio": paired_ratio(t["wall"], first["wall"]), "cpu_ratio": paired_ratio(t["cpu"], first["cpu"])}
            for n, t in times.items()}


def step_runner(compiled, state, batch):
    import jax

    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)

    return run


def cost_of(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one call, from XLA's cost analysis of the compiled program.

    On this project's CPU VM the step streams its activations from DRAM at ~3.5 GB/s (8 MB tensors stay in
    the 32 MB L3 only in isolation), so bytes accessed predicts the step time better than FLOPs.
    """
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


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


def categorize(op: str, inner_ops: list[str], backend_config: str, op_name: str) -> str:
    """``"<thunk kind> · <forward|backward>"`` for one top-level HLO instruction of the step.

    The kind comes from what the thunk runs, not from the JAX op name (which names the source op, and
    fusions that recompute a forward value inside a backward transpose would be mislabelled):
    ``convolution`` (an Eigen convolution; its thunk event only covers the launch, see :func:`profile`),
    ``YNNPACK dot`` / ``YNNPACK reduce`` (library fusions), ``XLA dot``, ``transpose/copy`` (a fusion that moves
    data into another layout, typically a convolution kernel-gradient operand), ``scatter/gather``,
    ``elementwise`` (loop fusions: norm, ReLU, max-pool, loss, optimizer) and ``other``.
    """
    # XLA-inserted layout copies carry no JAX op name
    direction = "backward" if "transpose(" in op_name else "forward" if op_name else "no source op"
    inner = set(inner_ops) - {"parameter", "constant", "bitcast", "broadcast", "tuple", "get-tuple-element"}
    if op == "convolution":
        kind = "convolution"
    elif "__ynn_fusion" in backend_config:
        kind = "YNNPACK dot" if "dot" in inner else "YNNPACK reduce" if "reduce" in inner else "YNNPACK other"
    elif op == "dot" or "dot" in inner:
        kind = "XLA dot"
    elif "transpose" in inner or op in ("transpose", "copy"):
        kind = "transpose/copy"
    elif {"scatter", "gather"} & inner or op in ("scatter", "gather"):
        kind = "scatter/gather"
    elif op == "fusion":
        kind = "elementwise"
    else:
        kind = "other"
    if "UNet" not in op_name and kind == "elementwise":
        kind = "elementwise (loss/optimizer)"
    return f"{kind} · {direction}"


def hlo_categories(hlo_text: str) -> dict:
    """{instruction name: (category, JAX op name, shape)} for the entry computation."""
    comps, entry = _hlo_computations(hlo_text)
    info = {}
    for line in comps[entry]:
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+?) ([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        if op in ("parameter", "constant", "bitcast", "tuple", "get-tuple-element"):
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        info[name] = (categorize(op, _called_ops(comps, line), line, op_name), op_name, shape)
    return info


def profile(config, name: str, steps: int = 5, frozen_parts=()) -> dict:
    """Where one compiled step spends its time (jax profiler trace of ``steps`` steps), per step.

    - ``categories``: summed thunk time per :func:`categorize` category, over both worker threads.
    - ``busy_ms``: wall time during which at least one named thunk runs; ``idle_ms = wall − busy``.
      XLA:CPU's Eigen convolution thunks return once the convolution is launched and complete
      asynchronously, so their events are short: nearly all convolution time falls in ``idle_ms``,
      when no other thunk can run because everything waits on the convolution.
    """
    compiled, state, batch = build_variant(config, name, frozen_parts)
    info = hlo_categories(compiled.as_text())
    run = step_runner(compiled, state, batch)
    run(), run()
    data, wall = traced(lambda: [run() for _ in range(steps)])
    wall_ms = wall / steps * 1e3
    per_category, per_op, intervals = collections.Counter(), collections.Counter(), []
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name not in info:
                    continue
                category, op_name, shape = info[event.name]
                per_category[category] += event.duration_ns / steps / 1e6
                short = op_name.split("UNet)")[-1].split("/conv_general_dilated")[0]
                per_op[f"{category}: {short} {shape.split('{')[0]}"] += event.duration_ns / steps / 1e6
                intervals.append((event.start_ns, event.start_ns + event.duration_ns))
    busy = union_ns(intervals) / 1e6 / steps
    return {"variant": name, "wall_ms": wall_ms, "thunk_ms_per_step": sum(per_category.values()),
            "busy_ms": busy, "idle_ms": wall_ms - busy,
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

    from jaxfcn.models.layers import conv as xla_conv

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
        print(f"profile of '{args.profile}': {prof['wall_ms']:.1f} ms wall per step (under the profiler); "
              f"{prof['busy_ms']:.1f} ms with a named thunk running, {prof['idle_ms']:.1f} ms without "
              f"(asynchronous convolutions); {prof['thunk_ms_per_step']:.1f} ms of thunk time on both threads")
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
        runners, flops, traffic = {}, {}, {}
        for name in names:
            t = time.perf_counter()
            compiled, state, batch = build_variant(config, name, frozen)
            flops[name], traffic[name] = cost_of(compiled)
            runners[name] = step_runner(compiled, state, batch)
            print(f"compiled {name} in {time.perf_counter() - t:.1f} s ({flops[name] / 1e9:.1f} GFLOP/step, "
                  f"{traffic[name] / 1e9:.2f} GB accessed/step)", flush=True)
        if args.torch:
            runners["torch_channels_last"] = torch_runner(config)
        times = interleaved(runners, rounds)
        peak = matmul_gflops()
        result.update(rounds=rounds, frozen=list(frozen), matmul_gflops=peak, variants={})
        print(f"\n{'variant':38s} {'wall ms':>9s} {'cpu ms':>9s} {'÷ first [95 %]':>20s} {'cpu ÷ first':>11s} "
              f"{'GFLOP/s':>8s} {'GB/step':>8s}")
        for name, t in times.items():
            f = flops.get(name, flops[names[0]])
            row = dict(t, gflop=f / 1e9, gflops=f / 1e6 / t["wall_ms"], gb_accessed=traffic.get(name, 0.0) / 1e9)
            result["variants"][name] = row
            print(f"{name:38s} {t['wall_ms']:9.1f} {t['cpu_ms']:9.1f} {format_ratio(t['ratio']):>20s} "
                  f"{t['cpu_ratio']['median']:11.2f} "
                  f"{row['gflops']:8.1f} {row['gb_accessed']:8.2f}")
        print(f"matmul peak on this machine now: {peak:.1f} GFLOP/s; load average {os.getloadavg()}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
