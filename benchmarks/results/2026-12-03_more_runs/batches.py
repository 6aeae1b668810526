import sys, os, statistics
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, numpy as np, torch
import sliding_window as sw
from jaxfcn.models import build_model
torch.set_num_threads(2)
image = sw.volume(1.0)
bs = [int(b) for b in sys.argv[1].split(",")]
config = sw.model_config(64, bs[0], "fast")
variables = build_model(config.model).init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
fns = {}
for b in bs:
    calls = 8 // b
    s = sw.network_call_sides(sw.model_config(64, b, "fast"), variables, image, 0.5, torch.channels_last_3d, calls)
    fns[f"jax@{b}"] = s["jax"]; fns[f"torch@{b}"] = s["torch"]
t = common.interleave(fns, rounds=int(sys.argv[2]), warmup=2, rotate=True)
for k, v in t.items():
    print(f"{k:10s} per window {common.median_ms(v['wall'], 8):7.2f} ms  cpu {common.median_ms(v['cpu'], 8):7.2f}  min {1e3*min(v['wall'])/8:7.2f}")
