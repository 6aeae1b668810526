"""All-pairs CKA for a study (10 models × 9 layers) in one call vs a per-pair loop on the same inputs.

Representations are shaped like a depth-5 U-Net's nine sown layers (``enc_0…enc_3``, ``bottleneck``,
``dec_3…dec_1``, ``head_input``) with rows = probe images and columns = H·W·C (the default convention of
:func:`jaxfcn.analysis.features.extract_features`). Ten "models" share a latent signal plus their own
noise, so CKA values are neither 0 nor 1.

Compared, on the same float32 inputs, interleaved per round, after compilation, with the result blocked
on (``block_until_ready``; the per-pair path also reads each value back, as any caller of a per-pair
function must):

* ``all_pairs``: :func:`jaxfcn.analysis.cka.cka_matrix` on the 90 representations: one jitted call.
* ``per_pair_jax``: the same library's per-pair :func:`~jaxfcn.analysis.cka.cka` (jitted inside) in a
  Python loop over the M(M−1)/2 distinct pairs (symmetry and the unit diagonal used, as a careful user
  would), reading each value back.
* ``per_pair_jit_async``: the strongest per-pair baseline: ``jax.jit(cka(..., on_constant="zero"))``, one
  dispatch per pair, no per-pair host sync (values gathered once at the end).
* ``per_pair_numpy``: the Kornblith et al. (2019) reference recipe in numpy (``gram_linear``,
  ``center_gram``, ``cka``) over the same pairs. It is slow, so by default it is timed on a fixed random
  subset of ``--numpy-pairs`` pairs and scaled to all pairs (reported as extrapolated; 0 = every pair).

All three matrices are checked to agree. Goal: all_pairs ≥ 50× faster than per_pair_jax.

    python benchmarks/cka.py --quick            # n=32 probes, 16² inputs, base width 8 (about a minute)
    python benchmarks/cka.py                    # n=64 probes, 32² inputs, base width 16
    python benchmarks/cka.py --json out.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, write_json  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402

MODELS, DEPTH = 10, 5


def layer_shapes(size: int, base_width: int) -> list[tuple[int, int, int]]:
    """(H, W, C) of the nine sown representations of a depth-5 U-Net on size² inputs."""
    enc = [(size >> i, size >> i, base_width << i) for i in range(DEPTH)]  # enc_0..enc_3, bottleneck
    dec = [enc[i] for i in reversed(range(1, DEPTH - 1))]  # dec_3..dec_1 have the encoder's level widths
    return enc + dec + [enc[0]]


def make_features(n: int, size: int, base_width: int, seed: int = 0) -> list[np.ndarray]:
    """MODELS × 9 float32 arrays (n, H·W·C), model-major: index = model · 9 + layer."""
    rng = np.random.default_rng(seed)
    shapes = layer_shapes(size, base_width)
    latent = [rng.standard_normal((n, 8)).astype(np.float32) for _ in shapes]
    mixing = [rng.standard_normal((8, h * w * c)).astype(np.float32) / np.sqrt(8) for h, w, c in shapes]
    features = []
    for _ in range(MODELS):
        for z, a in zip(latent, mixing):
            own = rng.standard_normal(a.shape, dtype=np.float32)
            features.append(np.maximum(z @ (a + 0.7 * own), 0.0))  # ReLU-like, model-specific mixing
    return features


# -------------------------------------------------- Kornblith et al. 2019 reference recipe, in numpy
def np_gram_linear(x):
    return x.dot(x.T)


def np_center_gram(gram):
    gram = gram.copy()
    means = np.mean(gram, 0, dtype=np.float64)
    means -= np.mean(means) / 2
    gram -= means[:, None]
    gram -= means[None, :]
    return gram


def np_cka(gram_x, gram_y):
    gx, gy = np_center_gram(gram_x), np_center_gram(gram_y)
    scaled_hsic = gx.ravel().dot(gy.ravel())
    return scaled_hsic / (np.linalg.norm(gx) * np.linalg.norm(gy))


def per_pair(fn, features) -> np.ndarray:
    m = len(features)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = float(fn(features[i], features[j]))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (about a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 3, quick 3)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy per-pair reference")
    parser.add_argument("--numpy-pairs", type=int, default=200,
                        help="time numpy on this many random pairs and scale to all (0 = all pairs)")
    args = parser.parse_args(argv)

    import jax

    from jaxfcn.analysis.cka import cka, cka_matrix

    n, size, base = (32, 16, 8) if args.quick else (64, 32, 16)
    rounds = args.rounds or 3
    host = make_features(n, size, base)
    device = [jax.device_put(f) for f in host]
    m = len(device)

    def all_pairs():
        return np.asarray(jax.block_until_ready(cka_matrix(device, debiased=False)))

    def per_pair_jax():
        return per_pair(lambda a, b: jax.block_until_ready(cka(a, b, debiased=False)), device)

    pair_jit = jax.jit(lambda a, b: cka(a, b, debiased=False, on_constant="zero"))

    def per_pair_jit_async():
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        values = np.asarray(jax.block_until_ready(jax.numpy.stack([pair_jit(device[i], device[j]) for i, j in pairs])))
        out = np.eye(m)
        for (i, j), v in zip(pairs, values):
            out[i, j] = out[j, i] = v
        return out

    all_pairs_list = [(i, j) for i in range(m) for j in range(i + 1, m)]
    numpy_pairs = all_pairs_list
    if 0 < args.numpy_pairs < len(all_pairs_list):
        pick = np.random.default_rng(0).choice(len(all_pairs_list), args.numpy_pairs, replace=False)
        numpy_pairs = [all_pairs_list[k] for k in np.sort(pick)]
    numpy_scale = len(all_pairs_list) / len(numpy_pairs)

    def per_pair_numpy():
        out = np.full((m, m), np.nan)
        np.fill_diagonal(out, 1.0)
        for i, j in numpy_pairs:
            out[i, j] = out[j, i] = np_cka(np_gram_linear(host[i]), np_gram_linear(host[j]))
        return out

    candidates = {"all_pairs": all_pairs, "per_pair_jax": per_pair_jax, "per_pair_jit_async": per_pair_jit_async}
    if not args.no_numpy:
        candidates["per_pair_numpy"] = per_pair_numpy

    # Warm-up: compiles every shape combination the per-pair loop meets, and checks agreement.
    results = {name: fn() for name, fn in candidates.items()}
    agreement = {name: float(np.nanmax(np.abs(r - results["all_pairs"]))) for name, r in results.items()}
    assert max(agreement.values()) < 1e-4, agreement

    times = {name: [s * (numpy_scale if name == "per_pair_numpy" else 1.0) for s in t["wall"]]
             for name, t in interleave(candidates, rounds, warmup=0).items()}  # the agreement check warmed up
    medians = {name: statistics.median(t) for name, t in times.items()}
    # per-round ratios: both sides of a ratio ran back to back, so load changes between rounds cancel
    paired = {name: paired_ratio(t, times["all_pairs"]) for name, t in times.items() if name != "all_pairs"}
    report = {
        "benchmark": "cka",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
                    "jax": jax.__version__, "numpy": np.__version__},
        "config": {"models": MODELS, "layers": len(layer_shapes(size, base)), "representations": m,
                   "pairs": m * (m - 1) // 2, "probes": n, "input": f"{size}x{size}", "base_width": base,
                   "features_per_layer": [h * w * c for h, w, c in layer_shapes(size, base)],
                   "kernel": "linear", "debiased": False, "rounds": rounds,
                   "numpy_pairs_timed": len(numpy_pairs), "numpy_extrapolated": numpy_scale > 1},
        "seconds": times,
        "median_seconds": medians,
        "speedup_vs_per_pair_jax": medians["per_pair_jax"] / medians["all_pairs"],
        "speedup_vs_per_pair_jit_async": medians["per_pair_jit_async"] / medians["all_pairs"],
        "median_paired_speedup": paired,
        "max_abs_difference": agreement,
    }
    if "per_pair_numpy" in medians:
        report["speedup_vs_per_pair_numpy"] = medians["per_pair_numpy"] / medians["all_pairs"]
    print(f"CKA {MODELS} models × {len(layer_shapes(size, base))} layers = {m} representations, "
          f"{m * (m - 1) // 2} pairs, n={n} probes, {jax.default_backend()}")
    for name, t in medians.items():
        extra = " (extrapolated)" if name == "per_pair_numpy" and numpy_scale > 1 else ""
        ratio = f"  paired speedup × {format_ratio(paired[name], 0)}" if name in paired else ""
        print(f"  {name:18s} median {t * 1e3:10.1f} ms{extra}   "
              f"({', '.join(f'{x * 1e3:.1f}' for x in times[name])}){ratio}")
    print(f"  speedup all_pairs vs per_pair_jax: {report['speedup_vs_per_pair_jax']:.0f}×, "
          f"vs per_pair_jit_async: {report['speedup_vs_per_pair_jit_async']:.0f}×"
          + (f", vs per_pair_numpy: {report['speedup_vs_per_pair_numpy']:.0f}×" if "per_pair_numpy" in medians else ""))
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
