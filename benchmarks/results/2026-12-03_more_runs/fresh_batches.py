"""Lead 3 of NOTES.md: do train steps fed a fresh batch each step (as `jaxfcn train` feeds them) run on XLA's pool
threads and fault? 64³ base-8 step (tissue_3d), batch 2; per step: wall ms and minor faults, per thread."""
import glob
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-03_async_inputs"))
from shared import step_64_base8  # noqa: E402  (the set-up, shared with the later step_inputs.py)
import jax  # noqa: E402


def faults_by_thread():
    out = {}
    for task in glob.glob("/proc/self/task/*"):
        try:
            name = open(task + "/comm").read().strip()
            out[name] = out.get(name, 0) + int(open(task + "/stat").read().rsplit(")", 1)[1].split()[7])
        except OSError:
            pass
    return out


state, step, host = step_64_base8()
same = jax.device_put(host[0])
for mode in ("same batch", "fresh batch", "same batch", "fresh batch"):
    rows = []
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10):
        a = faults_by_thread()
        t = time.perf_counter()
        batch = same if mode == "same batch" else jax.device_put(host[i % 4])
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        t = time.perf_counter() - t
        b = faults_by_thread()
        delta = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 100}
        rows.append(f"{1e3 * t:.0f} ms {delta or ''}")
    print(f"{mode}: " + "; ".join(rows), flush=True)
