"""Shared helpers of the benchmark scripts: interleaved timing, a matmul FLOP/s probe, machine info, JSON.

Conventions every script follows (see README.md):

- ``--quick`` (about two minutes on 2 CPU cores) and ``--json PATH``;
- all sides measured in the same process, interleaved (A B A B …), after compilation/warm-up, each clock
  read after ``block_until_ready`` (JAX) / ``torch.cuda.synchronize`` (CUDA); medians reported;
- the same threads, batch and precision on every side.

Example::

    from common import interleave, machine_info
    times = interleave({"jax": run_jax, "torch": run_torch}, rounds=5)   # {name: [s, s, …]}
    print(median_ms(times["jax"]))
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import time
from typing import Callable

from jaxfcn.runtime import keep_host_memory

# Every script measures the process the `jaxfcn` command runs in: single-device CPU programs on the calling
# thread, freed host memory kept for the next run (jaxfcn.runtime.keep_host_memory). All sides of a
# comparison share the process, so PyTorch's allocations get the same glibc settings.
HOST_MEMORY_KEPT = keep_host_memory()


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (about 2 minutes on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    return parser


def block(x):
    """Wait for every JAX array in ``x`` (any pytree; other leaves are ignored) and return ``x``."""
    import jax

    return jax.block_until_ready(x)


# Pause before each timed call. After a parallel region, PyTorch's (and oneDNN's) OpenMP workers spin for
# GOMP_SPINCOUNT iterations before they sleep, and hold the cores meanwhile: a 5 ms JAX convolution timed right
# after a PyTorch one read 9.05 ms, 4.77-4.98 ms after a pause of 10-50 ms (EPYC,
# benchmarks/results/2026-12-03_settle/NOTES.md).
SETTLE_S = 0.02


def interleave(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
               settle: float = SETTLE_S, rotate: bool = False) -> dict[str, dict[str, list]]:
    """Run each ``fn`` ``warmup`` times, then ``rounds`` rounds of A B C …; per call, wall and CPU seconds.

    Each ``fn`` must finish its work before returning (block on its result). Each timed call starts
    ``settle`` seconds after the previous one ended (untimed), so that one side's idle threads do not
    slow the next side. ``rotate`` starts round r at the r-th side (B C A, C A B, …): with many sides a
    fixed slot, e.g. right after a memory-hungry side, can bias one of them. Returns
    ``{name: {"wall": [s…], "cpu": [s…], "faults": [n…]}}``; compare sides with ``paired.paired_ratio``. CPU
    time (all threads of this process) is kept because on a shared machine wall time partly measures the
    neighbours; minor page faults (all threads), because a slow call with a million of them is a memory
    fault of ours, not a neighbour (``README.md``, "Inputs still being copied").
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: {"wall": [], "cpu": [], "faults": []} for name in fns}
    names = list(fns)
    for r in range(rounds):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            time.sleep(settle)
            f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            w, c = time.perf_counter(), time.process_time()
            fn()
            out[name]["cpu"].append(time.process_time() - c)
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    return out


def median_ms(seconds: list[float], per: int = 1) -> float:
    """Median of ``seconds`` in milliseconds, divided by ``per`` (e.g. steps per timed call)."""
    return 1e3 * statistics.median(seconds) / per


def matmul_flops(size: int = 0, repeats: int = 5, frameworks=("jax", "torch")) -> dict[str, float]:
    """Sustained fp32 FLOP/s of one ``size``² matmul (2·size³ FLOPs) per framework; median of ``repeats``.

    This is the machine's practical dense-compute ceiling in this run (same threads, same neighbours,
    same precision setting), the denominator of ``flops_fraction``. ``size`` defaults to 2048 on a CPU and
    8192 on a GPU, where 2048² is too small to fill the chip. Frameworks that are not installed are skipped.
    """
    import jax
    import numpy as np

    size = size or (8192 if jax.default_backend() == "gpu" else 2048)

    flops = 2.0 * size**3
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    result = {}
    if "jax" in frameworks:
        x = jax.device_put(a)
        mm = jax.jit(lambda x: x @ x)
        block(mm(x))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            block(mm(x))
            times.append(time.perf_counter() - t)
        result["jax"] = flops / statistics.median(times)
    if "torch" in frameworks:
        try:
            import torch
        except ImportError:
            return result
        device = torch_device()
        x = torch.from_numpy(a).to(device)
        torch.mm(x, x)
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            torch.mm(x, x)
            sync(device)
            times.append(time.perf_counter() - t)
        result["torch"] = flops / statistics.median(times)
    return result


def torch_device() -> str:
    """'cuda' when JAX runs on a GPU and PyTorch can use one too, else 'cpu' (both sides on the same kind)."""
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


PRECISIONS = ("fp32", "tf32")


def set_precision(precision: str) -> None:
    """Give JAX and PyTorch the same float32 arithmetic for convolutions and matmuls, process-wide.

    ``fp32``: full float32 products on both sides (JAX ``jax_default_matmul_precision="highest"``; PyTorch
    ``allow_tf32 = False`` for cuDNN and cuBLAS). ``tf32``: both may use TensorFloat-32 tensor cores (JAX's
    default precision on NVIDIA GPUs; PyTorch ``allow_tf32 = True``, which is already its default for
    cuDNN convolutions but not for matmuls). CPUs have no TF32: there both settings compute in float32, and
    nothing is changed (so CPU programs stay the ones measured before this option existed).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}', choose from {PRECISIONS}")
    import jax

    if jax.default_backend() != "gpu":
        return
    jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else None)
    try:
        import torch
    except ImportError:
        return
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """Date, host, CPU, cores, accelerator and the versions that decide the numbers."""
    import jax

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "keep_host_memory": HOST_MEMORY_KEPT,
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (if given) atomically: an interrupted run never leaves half a file."""
    if path:
        from jaxfcn.files import write_json_atomic

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json_atomic(path, result, default=float)
