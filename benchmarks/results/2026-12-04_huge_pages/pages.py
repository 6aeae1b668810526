"""Experiment: do transparent huge pages decide which side is faster in a 1 mm sliding-window run?

NumPy asks for huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MiB or more. With
``jaxfcn.runtime.keep_host_memory`` all of the process's large buffers come from glibc's ``brk`` heap, so those
calls mark parts of the heap; whichever buffers (XLA's temporary buffer, oneDNN's scratchpads, PyTorch's
activations) later land there get huge pages, and khugepaged collapses more of the marked ranges while the
process runs. That differs from process to process and over a run. This script times the volume's 90 network
calls per side (as stream.py: back to back, per round, sides alternating which goes first, 20 ms pause before
each side) in one process, and reports the process's huge-page memory after the warm-up and after each round.
Run it under the conditions of run.sh or run_pairs.sh (the environment decides the huge pages).
    python pages.py [ROUNDS [CALLS]]      (CALLS: the first CALLS of the 90 batches; default all)"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "2026-12-04_window_runs"))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from shared import setup  # noqa: E402
from common import HOST_MEMORY_KEPT, SETTLE_S  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402


def huge_kb() -> dict:
    """AnonHugePages of the whole process and of its ``[heap]`` mapping, in kB."""
    total = heap = 0
    name = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                name = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "AnonHugePages:":
                total += int(fields[1])
                heap += int(fields[1]) if name == "[heap]" else 0
    return {"total_kb": total, "heap_kb": heap}


def main():
    import jax
    import torch

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 90
    e = setup()

    def jax_calls():
        for x in e.x_jax[:calls]:
            jax.block_until_ready(e.probabilities_fn(e.variables, x))

    def torch_calls():
        with torch.inference_mode():
            for x in e.x_torch[:calls]:
                torch.softmax(e.net(x), dim=1)

    sides = {"jax": jax_calls, "torch": torch_calls}
    for run in sides.values():  # warm-up
        run()
    pages = [huge_kb()]
    times = {name: [] for name in sides}
    for r in range(rounds):
        for name in (["jax", "torch"] if r % 2 == 0 else ["torch", "jax"]):
            time.sleep(SETTLE_S)
            t = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t)
        pages.append(huge_kb())
    ratio = paired_ratio(times["torch"], times["jax"])
    result = {"condition": os.environ.get("CONDITION", "default"), "host_memory_kept": HOST_MEMORY_KEPT,
              "calls": calls,
              "env": {k: os.environ[k] for k in ("NUMPY_MADVISE_HUGEPAGE", "GLIBC_TUNABLES") if k in os.environ},
              "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
              "median_s": {k: statistics.median(v) for k, v in times.items()},
              "torch_over_jax": ratio, "huge_pages_by_round": pages}
    print(f"{result['condition']}: JAX {result['median_s']['jax']:.2f} s, PyTorch {result['median_s']['torch']:.2f} s "
          f"per {calls} calls; PyTorch ÷ JAX {format_ratio(ratio)}; huge pages MB (heap) "
          + " ".join(f"{p['total_kb'] // 1024}({p['heap_kb'] // 1024})" for p in pages))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
