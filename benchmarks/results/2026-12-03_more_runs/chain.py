"""Does one deferred execution make the following ones run on XLA's workers (faulting)? Network calls on ready inputs,
before and after one call on an input still being copied from the host."""
import os, sys, time, resource
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, jax.numpy as jnp, numpy as np
import sliding_window as sw
from jaxfcn.models import build_model
from jaxfcn.train.inference import make_probabilities_fn
config = sw.model_config(64, 2, "fast")
model = build_model(config.model)
variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
pf = make_probabilities_fn(model)
host = np.random.default_rng(0).standard_normal((2, 64, 64, 64, 1), dtype=np.float32)
x = jax.block_until_ready(jnp.asarray(host))
def calls(n, label):
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = time.perf_counter()
        pf(variables, x).block_until_ready()
        out.append((round(1e3 * (time.perf_counter() - t)), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
    print(label, out, flush=True)
pf(variables, x).block_until_ready()
calls(8, "ready inputs           ")
for trial in range(3):
    fresh = jnp.asarray(host + trial)   # not blocked: the copy may still run
    pf(variables, fresh).block_until_ready()
    calls(12, f"after a fresh input {trial} ")
    if sys.argv[1:] == ["sleep"]:
        time.sleep(0.05)
