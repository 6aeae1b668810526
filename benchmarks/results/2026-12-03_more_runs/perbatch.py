import os, sys, time, resource
from setup_1mm import config, image, model, probabilities as pf, variables  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
from jaxfcn.train import inference as inf
mode = sys.argv[2] if len(sys.argv) > 2 else "plain"
def flt(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def volume():
    patch = (64,) * 3; batch_size = 2
    spatial = image.shape[:3]
    f = [flt()]; marks = []
    padded = jnp.asarray(image)
    if mode == "block": padded = jax.block_until_ready(padded)
    f.append(flt()); marks.append("pad")
    starts = np.array([(a, b, c) for a in inf.window_starts(spatial[0], 64, .5) for b in inf.window_starts(spatial[1], 64, .5)
                       for c in inf.window_starts(spatial[2], 64, .5)], np.int32)
    live = np.ones(len(starts), np.float32)
    weight = jnp.asarray(inf.gaussian_importance(patch))
    gather, add = inf._window_programs()
    total = weights = None
    per = []
    for first in range(0, len(starts), batch_size):
        a = flt()
        bs = jnp.asarray(starts[first:first + batch_size])
        x = gather(padded, bs, patch)
        b = flt()
        probs = pf(variables, x)
        c = flt()
        if total is None:
            total = jnp.zeros(spatial + (probs.shape[-1],), jnp.float32); weights = jnp.zeros(spatial, jnp.float32)
        total, weights = add(total, weights, jnp.asarray(probs), bs, jnp.asarray(live[first:first + batch_size]), weight)
        d = flt()
        per.append((b - a, c - b, d - c))
    out = np.asarray(total / weights[..., None])
    return per
volume()
for r in range(int(sys.argv[1])):
    t = time.perf_counter(); per = volume(); t = time.perf_counter() - t
    net = [p[1] for p in per]
    slow = [i for i, n in enumerate(net) if n > 8000]
    print(f"volume {r}: {t:.2f} s, gather/net/add faults {sum(p[0] for p in per)}/{sum(net)}/{sum(p[2] for p in per)}; "
          f"slow batches {len(slow)}: {slow[:6]}...{slow[-3:]}; first batch {per[0]}", flush=True)
