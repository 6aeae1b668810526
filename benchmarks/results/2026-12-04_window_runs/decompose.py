"""Experiment: where the 1 mm sliding window's JAX ÷ PyTorch ratio goes. One process, four sides interleaved
(rotated) per round: each side's whole-volume loop (sliding_window.py's jax_side / torch_side, channels_last_3d)
and the same volume's 90 network calls alone (forward + softmax on the loop's own batches of windows, prepared
beforehand). volume ÷ calls is each loop's cost beyond the network; PyTorch ÷ JAX of the calls is the network's
ratio; their product is the volume ratio.
    python decompose.py [ROUNDS]"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shared import setup  # noqa: E402
from common import interleave  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402
from sliding_window import jax_side, torch_side  # noqa: E402


def main():
    import jax
    import torch

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    e = setup()
    jax_volume, _ = jax_side(e.config, e.variables, e.image, 0.5)
    torch_volume, _ = torch_side(e.config, e.variables, e.image, 0.5, e.fmt)
    probabilities_fn, device_variables, x_jax, net, x_torch = e.probabilities_fn, e.variables, e.x_jax, e.net, e.x_torch
    batches = e.batches

    def jax_calls():
        for x in x_jax:  # as in the loop: each result is waited for by the next program's dispatch
            jax.block_until_ready(probabilities_fn(device_variables, x))

    def torch_calls():
        with torch.inference_mode():
            for x in x_torch:
                torch.softmax(net(x), dim=1)

    sides = {"jax_volume": jax_volume, "jax_calls": jax_calls, "torch_volume": torch_volume,
             "torch_calls": torch_calls}
    out = interleave(sides, rounds, warmup=1, rotate=True)
    wall = {k: v["wall"] for k, v in out.items()}
    for r in range(rounds):
        print(f"round {r}: " + ", ".join(f"{k} {wall[k][r]:.2f} s" for k in sides), flush=True)
    print(f"{len(batches)} calls of batch 2")
    print("volume, PyTorch ÷ JAX:", format_ratio(paired_ratio(wall["torch_volume"], wall["jax_volume"])))
    print("network calls, PyTorch ÷ JAX:", format_ratio(paired_ratio(wall["torch_calls"], wall["jax_calls"])))
    print("JAX loop cost, volume ÷ calls:", format_ratio(paired_ratio(wall["jax_volume"], wall["jax_calls"]), 3))
    print("PyTorch loop cost, volume ÷ calls:", format_ratio(paired_ratio(wall["torch_volume"], wall["torch_calls"]), 3))
    for k in sides:
        print(f"{k}: median {np.median(wall[k]):.2f} s, CPU {np.median(out[k]['cpu']):.2f} s, "
              f"faults {out[k]['faults']}")


if __name__ == "__main__":
    main()
