import sys
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common, jax, jax.numpy as jnp, numpy as np
from jaxfcn.native import onednn
from jaxfcn.models import layers
rng = np.random.default_rng(0)
def fold_out(x, k):
    n, d, h, w, c = x.shape; kd, co = k.shape[0], k.shape[-1]
    folded = jnp.moveaxis(k, 0, 3).reshape(k.shape[1], k.shape[2], c, kd * co)
    z = onednn.forward(x.reshape(n * d, h, w, c), folded).reshape(n, d, h, w, kd, co)
    zp = jnp.pad(z, ((0,0),(1,1),(0,0),(0,0),(0,0),(0,0)))
    return zp[:, 0:d, ..., 0, :] + zp[:, 1:d+1, ..., 1, :] + zp[:, 2:d+2, ..., 2, :]
def fold_in(x, k):
    n, d, h, w, c = x.shape; kd, co = k.shape[0], k.shape[-1]
    xp = jnp.pad(x, ((0,0),(1,1),(0,0),(0,0),(0,0)))
    st = jnp.concatenate([xp[:, i:i + d] for i in range(kd)], axis=-1).reshape(n * d, h, w, kd * c)
    folded = jnp.moveaxis(k, 0, 2).reshape(k.shape[1], k.shape[2], kd * c, co)
    return onednn.forward(st, folded).reshape(n, d, h, w, co)
for s, ci, co in [(64, 8, 8), (64, 16, 8), (32, 16, 16), (32, 32, 16)]:
    x = jnp.asarray(rng.standard_normal((2, s, s, s, ci), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 3, ci, co), dtype=np.float32) * .1)
    f = {"3d": jax.jit(onednn.forward), "fold_out": jax.jit(fold_out), "fold_in": jax.jit(fold_in)}
    ref = np.asarray(f["3d"](x, k))
    for n, g in f.items():
        assert np.allclose(np.asarray(g(x, k)), ref, atol=1e-4), n
    t = common.interleave({n: (lambda g=g: g(x, k).block_until_ready()) for n, g in f.items()}, rounds=21, warmup=2, rotate=True)
    print(s, ci, co, "  ".join(f"{n} {common.median_ms(v['wall']):6.2f} (min {1e3*min(v['wall']):6.2f})" for n, v in t.items()), flush=True)
