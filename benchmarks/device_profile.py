"""Where a GPU step's time goes: device kernel time against wall time, for JAX and for PyTorch.

On a GPU a step is either bound by its kernels (kernel time ≈ wall time) or by launching them (the device
idles between kernels while the host enqueues the next one: kernel time ≪ wall time). The two summaries
below tell which, per side, and name the kernels that cost most:

- ``wall_ms``: host wall time per step while profiling (the profiler adds a little);
- ``kernel_ms``: summed duration of the device's kernel and copy events per step;
- ``busy_ms`` (JAX only): union of those events, i.e. time during which the device ran anything;
- ``kernels_per_step``: events per step;
- ``top``: the costliest kernel names, ms per step.

Used by ``train_step.py --profile``; the figures are printed and written to its JSON.
"""
from __future__ import annotations

import collections
import glob
import os
import shutil
import tempfile
import time
from typing import Callable

TOP = 12


def union_ns(intervals: list[tuple[int, int]]) -> int:
    """Nanoseconds covered by the union of (start_ns, end_ns) intervals."""
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def traced(fn: Callable[[], object]):
    """Run ``fn()`` once under ``jax.profiler``; returns (the trace as ``jax.profiler.ProfileData``, wall s).

    ``fn`` must block on its results, so the wall time covers the work it traced.
    """
    import jax

    trace_dir = tempfile.mkdtemp(prefix="jaxfcn_profile_")
    try:
        jax.profiler.start_trace(trace_dir)
        t0 = time.perf_counter()
        try:
            fn()
            wall = time.perf_counter() - t0
        finally:
            jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
        return jax.profiler.ProfileData.from_file(path), wall
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def jax_profile(run: Callable[[], object], steps: int) -> dict:
    """Profile ``run()`` (``steps`` JAX steps, blocked) with ``jax.profiler``; the device planes' events.

    XLA's GPU trace has, per device plane, stream lines of kernel and copy events, plus summary lines
    ("XLA Modules", "XLA Ops", …) that span those kernels again; only stream lines are summed.
    """
    import jax

    run()
    data, wall = traced(run)
    per_kernel, intervals, lines = collections.Counter(), [], {}
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            events = list(line.events)
            lines[f"{plane.name} | {line.name}"] = (len(events), sum(e.duration_ns for e in events) / 1e6 / steps)
            if not line.name.startswith("Stream"):
                continue
            for e in events:
                per_kernel[e.name] += e.duration_ns
                intervals.append((e.start_ns, e.start_ns + e.duration_ns))
    if not intervals and jax.default_backend() == "gpu":  # e.g. CUPTI already taken by another profiler
        raise RuntimeError("the JAX trace holds no GPU kernel events (is another profiler subscribed to CUPTI?)")
    return {"wall_ms": wall * 1e3 / steps,
            "kernel_ms": sum(per_kernel.values()) / 1e6 / steps,
            "busy_ms": union_ns(intervals) / 1e6 / steps,
            "kernels_per_step": len(intervals) / steps,
            "top": {k[:90]: round(v / 1e6 / steps, 4) for k, v in per_kernel.most_common(TOP)},
            "lines": {k: [n, round(ms, 4)] for k, (n, ms) in lines.items()}}


def torch_profile(run: Callable[[], object], steps: int) -> dict:
    """Profile ``run()`` (``steps`` PyTorch steps, synchronised) with ``torch.profiler`` (CUDA activity)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    per_kernel, count = collections.Counter(), 0
    for event in prof.events():  # device events (kernels, copies, memsets) carry their device interval
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.time_range.elapsed_us()
            count += 1
    return {"wall_ms": wall * 1e3 / steps,
            "kernel_ms": sum(per_kernel.values()) / 1e3 / steps,
            "kernels_per_step": count / steps,
            "top": {k[:90]: round(v / 1e3 / steps, 4) for k, v in per_kernel.most_common(TOP)}}


def print_profile(name: str, p: dict) -> None:
    busy = f", device busy {p['busy_ms']:.3f}" if "busy_ms" in p else ""
    print(f"profile {name}: wall {p['wall_ms']:.3f} ms/step, kernels {p['kernel_ms']:.3f} ms/step{busy}, "
          f"{p['kernels_per_step']:.0f} kernels/step")
    for kernel, ms in list(p["top"].items())[:6]:
        print(f"    {ms:8.4f} ms  {kernel}")
