import sys, time, statistics
from setup_1mm import config, image, model, probabilities, variables  # noqa: F401
import jax
import numpy as np
import jax.numpy as jnp
import sliding_window as sw
from jaxfcn.train import inference as inf
pf = inf.make_probabilities_fn(model)
patch = (64, 64, 64); bs = 2
spatial = image.shape[:3]
padded = jnp.asarray(image)
starts = np.array([(a, b, c) for a in inf.window_starts(spatial[0], 64, .5) for b in inf.window_starts(spatial[1], 64, .5)
                   for c in inf.window_starts(spatial[2], 64, .5)], np.int32)
live = np.ones(len(starts), np.float32)
weight = jnp.asarray(inf.gaussian_importance(patch))
gather, add = inf._window_programs()
def volume_pass(record):
    total = jnp.zeros(spatial + (4,), jnp.float32); weights = jnp.zeros(spatial, jnp.float32)
    for first in range(0, len(starts), bs):
        t0 = time.perf_counter()
        s = jnp.asarray(starts[first:first + bs])
        x = gather(padded, s, patch); x.block_until_ready()
        t1 = time.perf_counter()
        p = pf(variables, x); p.block_until_ready()
        t2 = time.perf_counter()
        total, weights = add(total, weights, p, s, jnp.asarray(live[first:first + bs]), weight); weights.block_until_ready()
        t3 = time.perf_counter()
        record["gather"].append(t1 - t0); record["net"].append(t2 - t1); record["add"].append(t3 - t2)
    t4 = time.perf_counter(); out = np.asarray(total / weights[..., None]); record["final"].append(time.perf_counter() - t4)
    return out
rec = {k: [] for k in ("gather", "net", "add", "final")}
volume_pass(rec)  # warm
xs = [gather(padded, jnp.asarray(starts[f:f + bs]), patch) for f in np.linspace(0, len(starts) - bs, 5).round().astype(int)]
for rnd in range(3):
    rec = {k: [] for k in ("gather", "net", "add", "final")}
    w = time.perf_counter(); volume_pass(rec); wall = time.perf_counter() - w
    iso = []
    for _ in range(3):
        for x in xs:
            t = time.perf_counter(); pf(variables, x).block_until_ready(); iso.append(time.perf_counter() - t)
    print(f"volume {wall:.2f} s: gather {sum(rec['gather']):.2f} net {sum(rec['net']):.2f} (median {1e3*statistics.median(rec['net']):.1f} ms) add {sum(rec['add']):.2f} (median {1e3*statistics.median(rec['add']):.2f} ms) final {sum(rec['final']):.2f}; isolated net median {1e3*statistics.median(iso):.1f} ms", flush=True)
