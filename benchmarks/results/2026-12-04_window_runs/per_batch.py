"""Experiment: JAX against PyTorch (channels_last_3d) per batch of the 1 mm volume's 90 batches of windows, to
see whether the network's ratio depends on the windows' content. Per round, each batch is run by both sides
back to back (order alternating by round), 20 ms apart; per batch the median over rounds. Also counts the
subnormal float32 values in JAX's intermediate activations on the batches.
    python per_batch.py [ROUNDS]"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shared import setup  # noqa: E402


def main():
    import jax
    import torch

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    e = setup()
    model, variables, batches, probabilities_fn, x_jax, net, x_torch = (
        e.model, e.variables, e.batches, e.probabilities_fn, e.x_jax, e.net, e.x_torch)
    zeros = np.array([(x == 0).mean() for x in batches])

    def run_jax(i):
        jax.block_until_ready(probabilities_fn(variables, x_jax[i]))

    def run_torch(i):
        with torch.inference_mode():
            torch.softmax(net(x_torch[i]), dim=1)

    run_jax(0), run_torch(0)
    t = {"jax": np.zeros((rounds, len(batches))), "torch": np.zeros((rounds, len(batches)))}
    for r in range(rounds):
        for i in range(len(batches)):
            for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
                time.sleep(0.02)
                w = time.perf_counter()
                (run_jax if side == "jax" else run_torch)(i)
                t[side][r, i] = time.perf_counter() - w
        print(f"round {r} done: JAX {t['jax'][r].sum():.2f} s, PyTorch {t['torch'][r].sum():.2f} s", flush=True)
    jax_ms, torch_ms = 1e3 * np.median(t["jax"], 0), 1e3 * np.median(t["torch"], 0)
    ratio = np.median(t["torch"] / t["jax"], 0)
    print("batch, zero fraction, JAX ms, PyTorch ms, PyTorch ÷ JAX (median over rounds)")
    for i in np.argsort(zeros):
        print(f"{i:3d} {zeros[i]:.3f} {jax_ms[i]:7.1f} {torch_ms[i]:7.1f} {ratio[i]:.3f}")
    for name, mask in (("zero fraction < 0.5", zeros < 0.5), ("0.5-0.9", (zeros >= 0.5) & (zeros < 0.9)),
                       ("≥ 0.9", zeros >= 0.9)):
        if mask.any():
            print(f"{name}: {mask.sum()} batches, JAX {jax_ms[mask].mean():.1f} ms, PyTorch {torch_ms[mask].mean():.1f} ms,"
                  f" median ratio {np.median(ratio[mask]):.3f}")
    print(f"all: JAX {jax_ms.sum() / 1e3:.2f} s, PyTorch {torch_ms.sum() / 1e3:.2f} s, "
          f"correlation(zero fraction, ratio) {np.corrcoef(zeros, ratio)[0, 1]:.2f}")

    # subnormal values in JAX's activations on three batches: the least, a middle and the most zero
    def intermediates(x):
        _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        return jax.tree_util.tree_leaves(state)

    tiny = np.finfo(np.float32).tiny
    for i in (np.argmin(zeros), np.argsort(zeros)[len(zeros) // 2], np.argmax(zeros)):
        leaves = [np.asarray(v) for v in intermediates(x_jax[i])]
        sub = sum(int(((v != 0) & (np.abs(v) < tiny)).sum()) for v in leaves)
        total = sum(v.size for v in leaves)
        print(f"batch {i} (zeros {zeros[i]:.3f}): {sub} subnormal of {total} intermediate values")


if __name__ == "__main__":
    main()
