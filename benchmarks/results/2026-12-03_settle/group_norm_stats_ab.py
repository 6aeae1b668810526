import sys, time, math, numpy as np
sys.path.insert(0,'/work/main/benchmarks'); import common
import jax, jax.numpy as jnp
import train_step as ts
from jaxfcn.models import fast_ops
old = fast_ops._spatial_sum
def wide(width):
    def f(v):
        n, c = v.shape[0], v.shape[-1]
        s = math.prod(v.shape[1:-1])
        k = max(d for d in range(1, max(1, width // c) + 1) if s % d == 0)
        return v.reshape(n, s // k, k * c).sum(1).reshape(n, k, c).sum(1)
    return f
variants = {"old": old, "w64": wide(64), "w128": wide(128)}
size, base, D, depth, rounds = [int(a) for a in sys.argv[1:6]]
frozen = ("encoder",) if len(sys.argv) > 6 else ()
B = 2 if D == 3 else 8
rng = np.random.default_rng(0)
cfg = ts.bench_config(size, B, depth, base, "float32", D)
batch = {"image": rng.normal(size=(B,) + (size,) * D + (1,)).astype("float32"),
         "label": rng.integers(0, cfg.model.num_classes, size=(B,) + (size,) * D).astype("int32")}
runs = {}
for name, f in variants.items():
    fast_ops._spatial_sum = f
    run, _, _ = ts.jax_side(cfg, batch, frozen, 3); run(); run()
    runs[name] = run
T = {k: [] for k in runs}
for r in range(rounds):
    for k, f in runs.items():
        t = time.perf_counter(); f(); T[k].append((time.perf_counter() - t) / 3)
for k in T: print(k, f"{np.median(T[k])*1e3:.2f} ms", "paired old/this", f"{np.median(np.array(T['old']) / np.array(T[k])):.3f}")
