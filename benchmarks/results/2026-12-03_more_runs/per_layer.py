"""Every convolution of the 64³ base-8 U-Net (tissue_3d, batch 2), each product alone: this project's oneDNN
custom calls (jaxfcn.native.onednn, oneDNN 3.2 from the onednn-cpu-gomp wheel, the batch split into one slice
per XLA thread) against PyTorch's (its bundled oneDNN, channels_last_3d, 2 threads; aten.convolution_backward
for the gradients). Interleaved in one process, rotated, 20 ms settle; min and median wall ms per call.

    .venv/bin/python benchmarks/results/2026-12-03_more_runs/per_layer.py [rounds]
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402  (the process settings of every benchmark)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jaxfcn.native import onednn  # noqa: E402

torch.set_num_threads(2)
CL = torch.channels_last_3d
# (name, side, in, out, kernel): enc_i conv_0/1, the bottleneck, dec_i conv_0 (on the concatenation) / conv_1, head.
LAYERS = [("enc_0 a", 64, 1, 8, 3), ("enc_0 b", 64, 8, 8, 3), ("enc_1 a", 32, 8, 16, 3), ("enc_1 b", 32, 16, 16, 3),
          ("enc_2 a", 16, 16, 32, 3), ("enc_2 b", 16, 32, 32, 3), ("bott a", 8, 32, 64, 3), ("bott b", 8, 64, 64, 3),
          ("dec_2 a", 16, 64, 32, 3), ("dec_2 b", 16, 32, 32, 3), ("dec_1 a", 32, 32, 16, 3), ("dec_1 b", 32, 16, 16, 3),
          ("dec_0 a", 64, 16, 8, 3), ("dec_0 b", 64, 8, 8, 3), ("head", 64, 8, 4, 1)]
PRODUCTS = ("forward", "input grad", "kernel grad")


def sides(s, ci, co, k, rng):
    x = rng.standard_normal((2, s, s, s, ci), dtype=np.float32)
    dy = rng.standard_normal((2, s, s, s, co), dtype=np.float32)
    w = rng.standard_normal((k, k, k, ci, co), dtype=np.float32) * 0.1
    xj, dyj, wj = map(jnp.asarray, (x, dy, w))
    jax_fns = [jax.jit(onednn.forward), jax.jit(onednn.input_grad),
               jax.jit(lambda x, dy: onednn.kernel_grad(x, dy, w.shape))]
    jax_args = [(xj, wj), (dyj, wj), (xj, dyj)]
    xt, dyt = (torch.from_numpy(a).permute(0, 4, 1, 2, 3).contiguous(memory_format=CL) for a in (x, dy))
    wt = torch.from_numpy(w).permute(4, 3, 0, 1, 2).contiguous()
    pad = [k // 2] * 3

    def torch_forward():
        with torch.inference_mode():
            return torch.nn.functional.conv3d(xt, wt, padding=pad)

    def torch_backward(mask):
        return torch.ops.aten.convolution_backward(dyt, xt, wt, None, [1] * 3, pad, [1] * 3, False, [0] * 3, 1, mask)

    torch_fns = [torch_forward, lambda: torch_backward([True, False, False])[0],
                 lambda: torch_backward([False, True, False])[1]]
    # Both sides compute the same thing (else the timing compares nothing).
    refs = [torch_fns[0]().permute(0, 2, 3, 4, 1), torch_fns[1]().permute(0, 2, 3, 4, 1),
            torch_fns[2]().permute(2, 3, 4, 1, 0)]
    for f, a, ref in zip(jax_fns, jax_args, refs):
        got, ref = np.asarray(f(*a)), ref.numpy()
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5
    return ([lambda f=f, a=a: f(*a).block_until_ready() for f, a in zip(jax_fns, jax_args)], torch_fns)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    rng = np.random.default_rng(0)
    print(f"{common.machine_info()}\n{rounds} rounds; ms per call: min (median)")
    print("| layer | shape | " + " | ".join(f"{p} JAX | {p} PyTorch" for p in PRODUCTS) + " |")
    print("|---" * (2 + 2 * len(PRODUCTS)) + "|")
    totals = np.zeros((len(PRODUCTS), 2))
    for name, s, ci, co, k in LAYERS:
        jax_fns, torch_fns = sides(s, ci, co, k, rng)
        cells = []
        for p, (a, b) in enumerate(zip(jax_fns, torch_fns)):
            if name == "enc_0 a" and p == 1:  # the image's gradient: never computed in a train step (DCE'd)
                cells += ["—", "—"]
                continue
            t = common.interleave({"jax": a, "torch": b}, rounds=rounds, warmup=2, rotate=True)
            for j, side in enumerate(("jax", "torch")):
                totals[p, j] += 1e3 * min(t[side]["wall"])
                cells.append(f"{1e3 * min(t[side]['wall']):.2f} ({common.median_ms(t[side]['wall']):.1f})")
        print(f"| {name} | {s}³ {ci}→{co} | " + " | ".join(cells) + " |", flush=True)
    print("| sum of minima | | " + " | ".join(f"{v:.1f}" for v in totals.ravel()) + " |")


if __name__ == "__main__":
    main()
