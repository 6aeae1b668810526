"""How long do PyTorch's OpenMP workers keep a core after a call? Time a JAX oneDNN conv (slices on XLA's pool)
right after a PyTorch conv, after a pause of s ms; and a JAX-only baseline."""
import time, numpy as np, sys
sys.path.insert(0,'/work/main/benchmarks'); import common
import jax, jax.numpy as jnp
from jaxfcn.native import onednn
import torch
torch.set_num_threads(2)
x = jax.random.normal(jax.random.key(0), (2, 32, 32, 32, 16)); w = jax.random.normal(jax.random.key(1), (3, 3, 3, 16, 16))
fw = jax.jit(onednn.forward)
tx = torch.randn(2, 16, 32, 32, 32).contiguous(memory_format=torch.channels_last_3d); tw = torch.randn(16, 16, 3, 3, 3)
def jx(): fw(x, w).block_until_ready()
def tc(): torch.nn.functional.conv3d(tx, tw, padding=1)
for _ in range(3): jx(); tc()
pauses = [0, 1, 2, 5, 10, 20, 50]
T = {p: [] for p in pauses}; base = []
with torch.inference_mode():
    for r in range(25):
        for p in pauses:
            tc(); time.sleep(p / 1e3)
            t = time.perf_counter(); jx(); T[p].append(time.perf_counter() - t)
        jx(); time.sleep(0.05); t = time.perf_counter(); jx(); base.append(time.perf_counter() - t)
print(f"JAX after JAX + 50 ms: {np.median(base)*1e3:.2f} ms")
for p in pauses: print(f"JAX right after PyTorch, pause {p:3d} ms: {np.median(T[p])*1e3:.2f} ms")
