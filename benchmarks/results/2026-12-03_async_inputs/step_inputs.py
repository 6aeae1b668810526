"""Does a train step run on XLA's pool threads (and fault in its temporary buffer) when its batch is still being
copied to the device at dispatch? 64³ base-8 step (tissue_3d), batch 2, fresh host batch each step, three ways
of handing it over, interleaved in blocks: jax.device_put with no wait; jaxfcn.runtime.on_device (copies and
waits: what `jaxfcn train` does since commit 52bc0f4); the numpy arrays passed to the jitted step (what it did
before). Usage: python step_inputs.py STEPS_PER_BLOCK BLOCKS
Per step: wall ms and minor faults on XLA's pool threads (tf_XLA*)."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shared import pool_faults, step_64_base8  # noqa: E402
import jax  # noqa: E402

from jaxfcn.runtime import on_device  # noqa: E402


def hand_over(mode, host):
    if mode == "device_put":
        return jax.device_put(host)
    if mode == "on_device":
        return on_device(host)
    return host


state, step, host = step_64_base8()
state, metrics = step(state, jax.device_put(host[0]))
jax.block_until_ready(metrics["loss"])
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
modes = ("device_put", "on_device", "numpy")
times = {m: [] for m in modes}
faulted = {m: 0 for m in modes}
for block in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2):
    for mode in modes:
        rows = []
        for i in range(steps):
            a = pool_faults()
            t = time.perf_counter()
            state, metrics = step(state, hand_over(mode, host[i % 4]))
            jax.block_until_ready(metrics["loss"])
            t = time.perf_counter() - t
            f = pool_faults() - a
            times[mode].append(1e3 * t)
            faulted[mode] += f > 10_000
            rows.append(f"{1e3 * t:.0f}" + (f"({f})" if f > 100 else ""))
        print(f"block {block} {mode}: ms(pool faults) " + " ".join(rows), flush=True)
for m in modes:
    print(f"{m:16s} median {statistics.median(times[m]):6.1f} ms, steps with >10k pool faults: "
          f"{faulted[m]} of {len(times[m])}")
