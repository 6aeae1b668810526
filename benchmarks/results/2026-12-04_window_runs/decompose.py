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
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from common import interleave  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402
from sliding_window import jax_side, model_config, torch_side, torch_twin, volume  # noqa: E402


def main():
    import jax
    import torch

    from jaxfcn.models import build_model
    from jaxfcn.runtime import on_device
    from jaxfcn.train.inference import make_probabilities_fn, window_starts

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    config = model_config(64, 2, "fast")
    image = volume(1.0)
    model = build_model(config.model)
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
    fmt = torch.channels_last_3d
    jax_volume, _ = jax_side(config, variables, image, 0.5)
    torch_volume, _ = torch_side(config, variables, image, 0.5, fmt)

    starts = [(a, b, c) for a in window_starts(image.shape[0], 64, 0.5)
              for b in window_starts(image.shape[1], 64, 0.5) for c in window_starts(image.shape[2], 64, 0.5)]
    batches = [np.stack([image[a:a + 64, b:b + 64, c:c + 64] for a, b, c in starts[f:f + 2]])
               for f in range(0, len(starts), 2)]
    probabilities_fn = make_probabilities_fn(model)
    device_variables = on_device(variables)
    x_jax = [on_device(x) for x in batches]
    net = torch_twin(config, variables, fmt)
    x_torch = [torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(memory_format=fmt) for x in batches]

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
