import sys, os, statistics
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, numpy as np, torch
import sliding_window as sw
from jaxfcn.models import build_model
torch.set_num_threads(2)
image = sw.volume(1.0)
config = sw.model_config(64, 2, "fast")
variables = build_model(config.model).init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
s = sw.network_call_sides(config, variables, image, 0.5, torch.channels_last_3d, 4)
t = common.interleave(s, rounds=int(sys.argv[1]), warmup=2)
j, p = (common.median_ms(t[k]["wall"], 4) for k in ("jax", "torch"))
jc, pc = (common.median_ms(t[k]["cpu"], 4) for k in ("jax", "torch"))
print(f"pid {os.getpid()} jax {j:7.2f} (cpu {jc:6.1f})  torch {p:7.2f} (cpu {pc:6.1f})  torch/jax {p/j:.3f}", flush=True)
