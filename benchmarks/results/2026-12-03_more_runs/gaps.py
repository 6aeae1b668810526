"""Which dispatch, taken right after the previous call returned, starts XLA's worker-thread mode? A 1-µs-ish syscall gap
(os.getppid) at one point of the sliding-window loop; whole-volume faults and time."""
import os, sys, time, resource
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, jax.numpy as jnp, numpy as np
import sliding_window as sw
from jaxfcn.models import build_model
from jaxfcn.train import inference as inf
image = sw.volume(1.0)
config = sw.model_config(64, 2, "fast")
model = build_model(config.model)
variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
pf = inf.make_probabilities_fn(model)
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
