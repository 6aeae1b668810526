import os, sys, time, resource
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, numpy as np
import sliding_window as sw
from jaxfcn.models import build_model
image = sw.volume(1.0)
config = sw.model_config(64, 2, "fast")
variables = build_model(config.model).init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
fj, _ = sw.jax_side(config, variables, image, 0.5)
fj()
for r in range(int(sys.argv[1])):
    time.sleep(0.02)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; w = time.perf_counter()
    fj()
    print(f"volume {r}: {time.perf_counter() - w:6.2f} s, faults {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}", flush=True)
