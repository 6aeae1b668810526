"""Which dispatch, taken right after the previous call returned, starts XLA's worker-thread mode? A 1 ms pause at one
point of the sliding-window loop (or none); whole-volume faults and time."""
import os, sys, time, resource
from setup_1mm import config, image, model, probabilities as pf, variables  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
from jaxfcn.train import inference as inf
spatial = image.shape[:3]
starts = np.array([(a, b, c) for a in inf.window_starts(spatial[0], 64, .5) for b in inf.window_starts(spatial[1], 64, .5)
                   for c in inf.window_starts(spatial[2], 64, .5)], np.int32)
live = np.ones(len(starts), np.float32)
weight = jnp.asarray(inf.gaussian_importance((64,) * 3))
gather, add = inf._window_programs()
def gap(where, mode):
    if where == mode: time.sleep(0.001)
def volume(mode):
    padded = jnp.asarray(image)
    total = jnp.zeros(spatial + (4,), jnp.float32); weights = jnp.zeros(spatial, jnp.float32)
    for first in range(0, len(starts), 2):
        bs = jnp.asarray(starts[first:first + 2])
        x = gather(padded, bs, (64,) * 3)
        gap("gather", mode)
        probs = pf(variables, x)
        gap("net", mode)
        total, weights = add(total, weights, probs, bs, jnp.asarray(live[first:first + 2]), weight)
        gap("add", mode)
    return np.asarray(total / weights[..., None])
modes = sys.argv[2].split(",")
for m in modes: volume(m)
for r in range(int(sys.argv[1])):
    for m in modes:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = time.perf_counter()
        volume(m)
        print(f"round {r} {m:7s} {time.perf_counter() - t:6.2f} s faults {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}", flush=True)
