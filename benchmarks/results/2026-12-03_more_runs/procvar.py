import sys, os, statistics
from setup_1mm import config, image, model, probabilities, variables  # noqa: F401
import jax
import numpy as np
import torch
import common
import sliding_window as sw
torch.set_num_threads(2)
s = sw.network_call_sides(config, variables, image, 0.5, torch.channels_last_3d, 4)
t = common.interleave(s, rounds=int(sys.argv[1]), warmup=2)
j, p = (common.median_ms(t[k]["wall"], 4) for k in ("jax", "torch"))
jc, pc = (common.median_ms(t[k]["cpu"], 4) for k in ("jax", "torch"))
print(f"pid {os.getpid()} jax {j:7.2f} (cpu {jc:6.1f})  torch {p:7.2f} (cpu {pc:6.1f})  torch/jax {p/j:.3f}", flush=True)
