"""Experiment: the sliding window's per-batch loop (three programs: gather, network, add) against one fused
program per batch (gather + network + softmax + weighted add, sums donated). JAX only, 1 mm volume, 64³
windows, batch 2, interleaved rounds after a warm-up; prints wall/CPU/faults per side and the paired ratio."""
from __future__ import annotations

import functools
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from common import interleave  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402
from sliding_window import model_config, volume  # noqa: E402


def fused_predict(model, variables, image, patch, overlap, batch_size):
    """The shipped ``WindowSums`` set-up and division, with each batch as one fused program."""
    import jax.numpy as jnp

    from jaxfcn.train.inference import WindowSums

    class FusedWindowSums(WindowSums):
        def add_batch(self, index):
            if self.total is None:
                self.total = jnp.zeros(self._padded_shape + (model.num_classes,), jnp.float32)
                self.weights = jnp.zeros(self._padded_shape, jnp.float32)
            rows = slice(index * self._batch_size, (index + 1) * self._batch_size)
            self.total, self.weights = _fused(model, self._patch)(
                self._variables, self._volume, self.total, self.weights, jnp.asarray(self._starts[rows]),
                jnp.asarray(self._live[rows]), self._weight)

    sums = FusedWindowSums(None, variables, image, patch, overlap, batch_size)
    for index in range(sums.batches):
        sums.add_batch(index)
    return sums.probabilities()


@functools.cache
def _fused(model, patch):
    import jax

    from jaxfcn.models.layers import compiler_options
    from jaxfcn.train.inference import _add_windows, _gather_windows

    def step(variables, padded, total, weights, starts, live, weight):
        windows = _gather_windows(padded, starts, patch)
        probs = jax.nn.softmax(model.apply(variables, windows, train=False), axis=-1)
        return _add_windows(total, weights, probs, starts, live, weight)

    return jax.jit(step, donate_argnums=(2, 3), compiler_options=compiler_options())


def main():
    import jax

    from jaxfcn.models import build_model
    from jaxfcn.train.inference import make_probabilities_fn, predict_sliding_window

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    config = model_config(64, 2, "fast")
    image = volume(1.0)
    model = build_model(config.model)
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
    probabilities_fn = make_probabilities_fn(model)
    held = {}

    def loop():
        held["loop"] = predict_sliding_window(probabilities_fn, variables, image, (64,) * 3, 0.5, 2)

    def fused():
        held["fused"] = fused_predict(model, variables, image, (64,) * 3, 0.5, 2)

    import time
    t = time.perf_counter(); fused(); print(f"fused first call (compile + run) {time.perf_counter() - t:.2f} s", flush=True)
    t = time.perf_counter(); loop(); print(f"loop first call (compile + run) {time.perf_counter() - t:.2f} s", flush=True)
    print("max |Δp|", float(np.abs(held["loop"] - held["fused"]).max()), flush=True)
    out = interleave({"loop": loop, "fused": fused}, rounds, warmup=0, rotate=True)
    for r in range(rounds):
        print(f"round {r}: loop {out['loop']['wall'][r]:.2f} s ({out['loop']['faults'][r]} faults), "
              f"fused {out['fused']['wall'][r]:.2f} s ({out['fused']['faults'][r]} faults)", flush=True)
    print("loop ÷ fused (paired):", format_ratio(paired_ratio(out["loop"]["wall"], out["fused"]["wall"])))
    print("loop ÷ fused CPU (paired):", format_ratio(paired_ratio(out["loop"]["cpu"], out["fused"]["cpu"])))


if __name__ == "__main__":
    main()
