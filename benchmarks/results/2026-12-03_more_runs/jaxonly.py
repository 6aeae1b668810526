import os, sys, time, resource
from setup_1mm import config, image, model, probabilities, variables  # noqa: F401
import jax
import numpy as np
import sliding_window as sw
fj, _ = sw.jax_side(config, variables, image, 0.5)
fj()
for r in range(int(sys.argv[1])):
    time.sleep(0.02)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; w = time.perf_counter()
    fj()
    print(f"volume {r}: {time.perf_counter() - w:6.2f} s, faults {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}", flush=True)
