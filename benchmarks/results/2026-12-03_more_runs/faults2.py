"""As faults.py, plus a JAX side whose loop waits for each host-to-device transfer before dispatching; faults per thread."""
import os, sys, time, resource, statistics, glob
from setup_1mm import config, image, model, probabilities, variables  # noqa: F401
import jax
import numpy as np
import torch
import jax.numpy as jnp
import sliding_window as sw
from jaxfcn.train import inference as inf
torch.set_num_threads(2)
fj, _ = sw.jax_side(config, variables, image, 0.5)
ft, _ = sw.torch_side(config, variables, image, 0.5, torch.channels_last_3d)
orig_asarray = jnp.asarray
def blocked_asarray(*a, **k):
    return jax.block_until_ready(orig_asarray(*a, **k))
def fjb():
    try:
        jnp.asarray = blocked_asarray
        fj()
    finally:
        jnp.asarray = orig_asarray
def thread_faults():
    out = {}
    for t in glob.glob("/proc/self/task/*"):
        try:
            name = open(t + "/comm").read().strip(); f = int(open(t + "/stat").read().rsplit(")", 1)[1].split()[7])
            out[(t.rsplit("/", 1)[1], name)] = f
        except OSError:
            pass
    return out
fj(); fjb(); ft()
for r in range(int(sys.argv[1])):
    for name, f in (("jax", fj), ("jax_blocked", fjb), ("torch", ft)):
        time.sleep(0.02)
        a = thread_faults(); w = time.perf_counter()
        f()
        w = time.perf_counter() - w; b = thread_faults()
        top = sorted(((b[k] - a.get(k, 0), k) for k in b), reverse=True)[:2]
        print(f"round {r} {name:11s} {w:6.2f} s  faults by thread: " + ", ".join(f"{n} {k[1]}/{k[0]}" for n, k in top), flush=True)
