"""Whole 1 mm volumes, JAX and PyTorch channels_last interleaved as in sliding_window.py; per call: wall, CPU, minor faults."""
import os, sys, time, resource, statistics
from setup_1mm import config, image, model, probabilities, variables  # noqa: F401
import jax
import numpy as np
import torch
import sliding_window as sw
torch.set_num_threads(2)
fj, _ = sw.jax_side(config, variables, image, 0.5)
ft, _ = sw.torch_side(config, variables, image, 0.5, torch.channels_last_3d)
fj(); ft()
for r in range(int(sys.argv[1])):
    for name, f in (("jax", fj), ("torch", ft)):
        time.sleep(0.02)
        f0 = resource.getrusage(resource.RUSAGE_SELF); w = time.perf_counter()
        f()
        w = time.perf_counter() - w; f1 = resource.getrusage(resource.RUSAGE_SELF)
        print(f"round {r} {name:5s} {w:6.2f} s  cpu {f1.ru_utime + f1.ru_stime - f0.ru_utime - f0.ru_stime:6.2f}  minflt {f1.ru_minflt - f0.ru_minflt:8d}  nivcsw {f1.ru_nivcsw - f0.ru_nivcsw:6d} nvcsw {f1.ru_nvcsw - f0.ru_nvcsw:7d}", flush=True)
