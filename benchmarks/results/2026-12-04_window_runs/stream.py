"""Experiment: does each side's network call depend on how calls follow each other? The 1 mm volume's 90
batches of windows, per side: ``stream`` = 90 calls back to back (as in a sliding-window loop), ``spaced`` = the
same calls with 20 ms of sleep before each (as in per_batch.py), timed per call and summed, sleeps excluded.
Four sides interleaved (rotated) per round, wall and CPU seconds.
    python stream.py [ROUNDS]"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shared import setup  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402


def main():
    import jax
    import torch

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    e = setup()
    variables, batches, probabilities_fn, x_jax, net, x_torch = (
        e.variables, e.batches, e.probabilities_fn, e.x_jax, e.net, e.x_torch)

    def jax_call(i):
        jax.block_until_ready(probabilities_fn(variables, x_jax[i]))

    def torch_call(i):
        with torch.inference_mode():
            torch.softmax(net(x_torch[i]), dim=1)

    def side(call, gap):
        def run():
            wall = cpu = 0.0
            for i in range(len(batches)):
                if gap:
                    time.sleep(gap)
                w, c = time.perf_counter(), time.process_time()
                call(i)
                cpu += time.process_time() - c
                wall += time.perf_counter() - w
            return wall, cpu
        return run

    sides = {"jax_stream": side(jax_call, 0), "jax_spaced": side(jax_call, 0.02),
             "torch_stream": side(torch_call, 0), "torch_spaced": side(torch_call, 0.02)}
    jax_call(0), torch_call(0)
    names = list(sides)
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % 4:] + names[:r % 4]:
            time.sleep(0.02)
            w, c = sides[k]()
            wall[k].append(w)
            cpu[k].append(c)
        print(f"round {r}: " + ", ".join(f"{k} {wall[k][r]:.2f} s (CPU {cpu[k][r]:.2f})" for k in names), flush=True)
    for k in names:
        print(f"{k}: median {np.median(wall[k]):.2f} s, CPU {np.median(cpu[k]):.2f} s")
    print("stream, PyTorch ÷ JAX:", format_ratio(paired_ratio(wall["torch_stream"], wall["jax_stream"])))
    print("spaced, PyTorch ÷ JAX:", format_ratio(paired_ratio(wall["torch_spaced"], wall["jax_spaced"])))
    print("JAX spaced ÷ stream:", format_ratio(paired_ratio(wall["jax_spaced"], wall["jax_stream"]), 3))
    print("PyTorch spaced ÷ stream:", format_ratio(paired_ratio(wall["torch_spaced"], wall["torch_stream"]), 3))


if __name__ == "__main__":
    main()
