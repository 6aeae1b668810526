"""Sliding-window volumes, alternating, JAX only, one process: the shipped code (`waited`: the volume and weights
go through jaxfcn.runtime.on_device) against the code before the change (`raced`: jnp.asarray, which does not
wait; volumes.log). Real 1 mm volume, tissue_3d's untrained U-Net, 64³ windows, 2 per call. Per volume: seconds
and minor page faults of XLA's pool threads (tf_XLA*) and of the whole process. An earlier version of this script
had a plain jax.device_put as its raced side, which showed no slow volume (volumes_device_put.log, and
volumes_device_put_loaded.log with two busy-loop processes alongside). Usage: python volumes.py ROUNDS"""
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-03_more_runs"))
from setup_1mm import config, image, variables  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shared import pool_faults  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sliding_window as sw  # noqa: E402

from jaxfcn.train import inference  # noqa: E402

waited_placement = inference.on_device


def raced_placement(tree, device=None):
    return jax.tree.map(jnp.asarray, tree)  # a no-op for the variables, which are device arrays already


run, _ = sw.jax_side(config, variables, image, 0.5)
run()
seconds = {"waited": [], "raced": []}
slow = {"waited": 0, "raced": 0}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for side in ("waited", "raced") if r % 2 == 0 else ("raced", "waited"):
        inference.on_device = waited_placement if side == "waited" else raced_placement
        time.sleep(0.02)
        f0, p0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, pool_faults(), time.perf_counter()
        run()
        t = time.perf_counter() - t0
        pool, total = pool_faults() - p0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        seconds[side].append(t)
        slow[side] += pool > 100_000
        print(f"round {r} {side:6s}: {t:6.2f} s, pool-thread faults {pool:9d}, all faults {total:9d}", flush=True)
inference.on_device = waited_placement
for side in seconds:
    print(f"{side:6s}: median {statistics.median(seconds[side]):.2f} s over {len(seconds[side])} volumes, "
          f"{slow[side]} with > 100 000 pool-thread faults")
