"""Filter dynamics across snapshots, and "do trained filters still look random?" (the paper's claim 3).

Filter banks are the ``kernel`` leaves of a params tree, brought to the layout ``(*spatial, Cin, Cout)``:
convolutions as stored, the head as its 1×…×1 kernel, and each up-convolution's ``(Cin, 2^d·Cout)``
matrix as its ``2×…×2`` transposed-convolution taps (see :class:`jaxfcn.models.layers.UpConv`).

Dynamics (:func:`parameter_changes`), per layer and snapshot step t, against step 0:
``relative_change = ‖W_t − W_0‖_F / ‖W_0‖_F`` and ``cosine = ⟨W_t, W_0⟩ / (‖W_t‖_F ‖W_0‖_F)``.

Randomness (:func:`randomness_tests`): each layer is compared with fresh draws of the *same initialiser*
at the *same raw shape* (so the fan-in scaling is the one the model used). Three tests, each of one
aspect of "looks like a random initialisation":

1. ``ks``: two-sample Kolmogorov–Smirnov test of the weights' marginal distribution against pooled fresh
   draws (scipy ``ks_2samp``, exact/asymptotic p-value). Sensitive to scale and shape changes; blind to
   any arrangement of the weights (a perfectly smooth bank can have a Gaussian marginal).
2. ``smoothness``: pooled lag-1 spatial autocorrelation of the kernels,
   ``ρ₁ = mean_{neighbour pairs (p,q)} w_p w_q / mean_p w_p²`` (neighbours along every spatial axis,
   within each (Cin, Cout) kernel; no mean removal, so a constant "blur" component counts as smooth).
   For iid zero-mean weights ρ₁ ≈ 0; learned filters are usually smoother (ρ₁ > 0). Only for kernels
   with a spatial extent > 1.
3. ``spectrum``: the reshaped kernel ``W`` (p = k^d·Cin rows × q = Cout columns, transposed so p ≥ q)
   has ``S = WᵀW/p``; for iid entries its eigenvalues follow Marchenko–Pastur with ratio ``c = q/p``, whose
   normalised second moment is ``m₂ = mean(λ²)/mean(λ)² = 1 + c``. We test
   ``m₂ = q·‖WᵀW‖²_F / ‖W‖⁴_F`` (a linear spectral statistic, hence asymptotically Gaussian by the
   Bai–Silverstein CLT). Low-rank or otherwise structured banks have m₂ above the MP value. Also
   reported, descriptively: the fraction of eigenvalues above the MP edge ``(1+√c)²`` and the KS distance
   between the eigenvalue distribution (normalised to mean 1) and the MP law.

Null distributions of (2) and (3) are Monte-Carlo: fresh banks from the initialiser at the layer's shape
(this includes every finite-size effect: 3×3 kernels, a truncated normal, few eigenvalues). Small layers
get enough draws for an exact two-sided Monte-Carlo p-value; large layers, where both statistics are
averages of many independent terms and close to Gaussian, use ``z = (stat − mean)/sd`` of the null and
``p = 2(1 − Φ(|z|))`` (details in :func:`randomness_tests`). ``tests/test_filters.py`` checks the
false-positive rate empirically.

Multiple testing: all p-values of one call (layers × tests) are corrected together with Holm's
step-down procedure, so the family-wise error rate is ≤ ``alpha`` (default 0.05): a call on random
filters flags *any* layer with probability ≤ alpha. A layer's verdict is ``random-like`` when none of its
tests is rejected, otherwise ``non-random`` with the rejected tests named.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

ALPHA = 0.05
TESTS = ("ks", "smoothness", "spectrum")


# ----------------------------------------------------------------------------------- filter banks
def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def network_order(layer: str) -> tuple:
    """Sort key: encoder levels upwards, decoder from the bottleneck up (``up_i`` before ``block_i``), head."""
    parts = layer.split("/")
    part = {"encoder": 0, "decoder": 1, "head": 2}.get(parts[0], 3)
    rest = []
    for token in parts[1:]:
        name, _, index = token.rpartition("_")
        number = int(index) if index.isdigit() else 0
        if part == 1 and name in ("up", "block"):
            rest += [-number, 0 if name == "up" else 1]
        else:
            rest += [number, 0]
    return (part, rest, layer)


def kernel_leaves(params) -> dict[str, np.ndarray]:
    """``{"encoder/block_0/conv_0": kernel, …}``: every ``kernel`` leaf, raw shape, in network order."""
    import jax

    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if str(getattr(keys[-1], "key", keys[-1])) == "kernel":
            out[_path(keys[:-1])] = np.asarray(leaf)
    return {k: out[k] for k in sorted(out, key=network_order)}


def as_filter_bank(name: str, kernel: np.ndarray, spatial_dims: int) -> np.ndarray:
    """A raw kernel as ``(*spatial, Cin, Cout)``; up-convolutions (``…/up_i``) become their 2×…×2 taps."""
    kernel = np.asarray(kernel)
    if kernel.ndim == 2 and name.rsplit("/", 1)[-1].startswith("up_"):
        taps = 2**spatial_dims
        cin, cout = kernel.shape[0], kernel.shape[1] // taps
        bank = kernel.reshape(cin, *([2] * spatial_dims), cout)
        return np.moveaxis(bank, 0, spatial_dims)
    if kernel.ndim != spatial_dims + 2:
        raise ValueError(f"{name}: kernel of shape {kernel.shape} is not a {spatial_dims}D filter bank")
    return kernel


# ------------------------------------------------------------------------------------ dynamics
def _flat_kernels(params) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64).ravel() for k, v in kernel_leaves(params).items()}


def parameter_changes(snapshots: Mapping[int, object]) -> list[dict]:
    """Rows ``{layer, step, relative_change, cosine}`` for every kernel and snapshot step (vs the first)."""
    steps = sorted(snapshots)
    if not steps:
        raise ValueError("no snapshots")
    reference = _flat_kernels(snapshots[steps[0]])
    rows = []
    for step in steps:
        current = _flat_kernels(snapshots[step])
        if current.keys() != reference.keys():
            raise ValueError(f"snapshot {step} has different layers than snapshot {steps[0]}")
        for layer, w0 in reference.items():
            wt = current[layer]
            n0, nt = np.linalg.norm(w0), np.linalg.norm(wt)
            rows.append({"layer": layer, "step": step,
                         "relative_change": float(np.linalg.norm(wt - w0) / n0) if n0 > 0 else math.nan,
                         "cosine": float(wt @ w0 / (n0 * nt)) if n0 > 0 and nt > 0 else math.nan})
    return rows


# ---------------------------------------------------------------------------------- statistics
def lag1_autocorrelation(bank: np.ndarray, spatial_dims: int) -> np.ndarray | float:
    """Pooled ρ₁ (see module docstring) of ``(..., *spatial, Cin, Cout)``; leading axes are batch axes."""
    bank = np.asarray(bank, np.float64)
    lead = bank.ndim - spatial_dims - 2
    products, pairs = 0.0, 0
    for axis in range(lead, lead + spatial_dims):
        n = bank.shape[axis]
        if n < 2:
            continue
        a = np.take(bank, np.arange(n - 1), axis=axis)
        b = np.take(bank, np.arange(1, n), axis=axis)
        products = products + np.sum(a * b, axis=tuple(range(lead, bank.ndim)))
        pairs += a[(0,) * lead].size
    if pairs == 0:
        return math.nan
    cells = bank[(0,) * lead].size
    power = np.sum(bank**2, axis=tuple(range(lead, bank.ndim))) / cells
    return (products / pairs) / np.where(power > 0, power, 1.0)


def _as_matrix(bank: np.ndarray, spatial_dims: int) -> np.ndarray:
    """``(..., *spatial, Cin, Cout)`` → ``(..., p, q)`` with p = k^d·Cin ≥ q (transposed if needed)."""
    lead = bank.shape[:bank.ndim - spatial_dims - 2]
    w = bank.reshape(*lead, -1, bank.shape[-1])
    return w if w.shape[-2] >= w.shape[-1] else np.swapaxes(w, -1, -2)


def spectral_m2(bank: np.ndarray, spatial_dims: int) -> np.ndarray | float:
    """``m₂ = q·‖WᵀW‖²_F / ‖W‖⁴_F`` of the reshaped bank (1 + q/p for Marchenko–Pastur)."""
    w = _as_matrix(np.asarray(bank, np.float64), spatial_dims)
    q = w.shape[-1]
    gram = np.swapaxes(w, -1, -2) @ w
    total = np.sum(w**2, axis=(-2, -1))
    return q * np.sum(gram**2, axis=(-2, -1)) / np.where(total > 0, total, 1.0) ** 2


def marchenko_pastur_cdf(x: np.ndarray, c: float) -> np.ndarray:
    """CDF of the Marchenko–Pastur law with ratio 0 < c ≤ 1 and unit variance (support [(1−√c)², (1+√c)²])."""
    lo, hi = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    grid = np.linspace(lo, hi, 4001)
    density = np.sqrt(np.maximum((hi - grid) * (grid - lo), 0.0)) / (2 * math.pi * c * np.maximum(grid, 1e-300))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    return np.interp(x, grid, cdf / cdf[-1], left=0.0, right=1.0)


def spectrum_summary(bank: np.ndarray, spatial_dims: int) -> dict:
    """Eigenvalues of ``WᵀW`` normalised to mean 1 vs Marchenko–Pastur: ratio c, edge, fraction above it,
    KS distance (descriptive)."""
    w = _as_matrix(np.asarray(bank, np.float64), spatial_dims)
    p, q = w.shape
    eig = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)
    eig = eig / eig.mean() if eig.mean() > 0 else eig
    c = q / p
    edge = (1 + math.sqrt(c)) ** 2
    emp = np.arange(1, q + 1) / q
    model = marchenko_pastur_cdf(eig, c)
    ks = float(max(np.max(np.abs(emp - model)), np.max(np.abs(emp - 1.0 / q - model))))
    return {"mp_ratio": c, "mp_edge": edge, "fraction_above_mp_edge": float(np.mean(eig > edge)),
            "top_eigenvalue_over_edge": float(eig[-1] / edge), "mp_ks_distance": ks}


def holm(pvalues, alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections (family-wise error ≤ alpha); NaN p-values are never rejected."""
    p = np.asarray(pvalues, np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite])]
    rejected = np.zeros(p.shape, bool)
    m = len(order)
    for rank, i in enumerate(order):
        if p[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def _two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else math.nan


# ----------------------------------------------------------------------------- fresh draws
# The model's named initialisers (jaxfcn.models.layers.KERNEL_INITS) as jax.nn.initializers.variance_scaling
# arguments: (scale, mode, distribution). Drawing them in numpy is exact in distribution and avoids an XLA
# compilation per kernel shape (threefry + erfinv compile for seconds on CPU); tests/test_filters.py
# checks the numpy draws against the jax initialiser itself.
VARIANCE_SCALING = {
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
}
# Standard deviation of a standard normal truncated to [-2, 2] (jax divides by it to keep the variance).
_TRUNCATED_STD = 0.87962566103423978


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as jax's variance_scaling computes them (in_axis=-2, out_axis=-1)."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def numpy_draws(name: str, shape: tuple[int, ...], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` fresh draws (count, *shape) of the named initialiser, exactly as jax defines it."""
    if name not in VARIANCE_SCALING:
        raise ValueError(f"unknown initialiser '{name}' (choose from {', '.join(VARIANCE_SCALING)})")
    scale, mode, distribution = VARIANCE_SCALING[name]
    fan_in, fan_out = fans(shape)
    variance = scale / {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
    size = (count, *shape)
    if distribution == "uniform":
        return rng.uniform(-1.0, 1.0, size) * math.sqrt(3.0 * variance)
    return _truncated_standard_normal(size, rng) * math.sqrt(variance) / _TRUNCATED_STD


def _truncated_standard_normal(size: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal conditioned on [-2, 2], by rejection (exact; 95% of draws are accepted)."""
    out = rng.standard_normal(size)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out


def _fresh_draws(init: Callable | str, shape: tuple[int, ...], count: int, seed: int, chunk: int):
    """Yield arrays (≤ chunk, *shape) of fresh draws; each draw has the raw shape (hence the same fan-in).

    ``init``: a name of :data:`VARIANCE_SCALING` (numpy) or any jax initialiser ``init(key, shape)``.
    """
    rng = np.random.default_rng(seed)
    if not isinstance(init, str):
        import jax

        draw = jax.jit(jax.vmap(lambda key: init(key, shape)))
    done = 0
    while done < count:
        k = min(chunk, count - done)
        if isinstance(init, str):
            yield numpy_draws(init, shape, k, rng)
        else:
            keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), k)
            yield np.asarray(draw(keys), np.float64)
        done += k


# --------------------------------------------------------------------------------- the tests
def _spectrum_scale(m2):
    """log(m₂ − 1): the spectral statistic on a scale where its null is close to Gaussian (m₂ ≥ 1 always)."""
    return np.log(np.maximum(np.asarray(m2, np.float64) - 1.0, 1e-300))


def _null_statistics(initializer, layer: str, shape: tuple, spatial_dims: int, draws: int, seed: int,
                     ks_values: int) -> dict:
    """Smoothness and spectral statistics of ``draws`` fresh banks, plus ≥ ``ks_values`` pooled fresh weights."""
    chunk = max(1, min(draws, 2_000_000 // max(int(np.prod(shape)), 1)))
    smooth, m2, pooled, pooled_size = [], [], [], 0
    for batch in _fresh_draws(initializer, shape, draws, seed, chunk):
        banks = np.stack([as_filter_bank(layer, d, spatial_dims) for d in batch])
        smooth.append(np.atleast_1d(lag1_autocorrelation(banks, spatial_dims)))
        m2.append(np.atleast_1d(spectral_m2(banks, spatial_dims)))
        if pooled_size < ks_values:
            pooled.append(batch.reshape(-1)[:ks_values - pooled_size])
            pooled_size += pooled[-1].size
    return {"smoothness": np.concatenate(smooth), "spectrum": np.concatenate(m2), "pooled": np.concatenate(pooled)}


def _p_value(value: float, null: np.ndarray, exact: bool, transform=None) -> tuple[float, float, float, float]:
    """(p, z, null mean, null sd): exact two-sided Monte-Carlo p when ``exact``, else normal approximation
    of the (transformed) statistic; mean/sd/z are on the transformed scale."""
    t = transform or (lambda v: np.asarray(v, np.float64))
    tv, tnull = float(t(value)), t(null)
    if not math.isfinite(tv) or len(tnull) < 2:  # e.g. smoothness of a 1×1 kernel: not applicable
        return math.nan, math.nan, math.nan, math.nan
    mean, sd = float(np.mean(tnull)), float(np.std(tnull, ddof=1))
    if not sd > 0:
        return math.nan, math.nan, mean, sd
    z = (tv - mean) / sd
    if exact:
        tail = min(np.sum(tnull >= tv), np.sum(tnull <= tv))
        return min(1.0, 2.0 * (1 + tail) / (len(tnull) + 1)), z, mean, sd
    return _two_sided_p(z), z, mean, sd


def randomness_tests(kernels: Mapping[str, np.ndarray], initializer: Callable | str, *, spatial_dims: int,
                     alpha: float = ALPHA, null_draws: int = 200, draw_budget: int = 20_000_000,
                     seed: int = 0) -> list[dict]:
    """Per layer: the three tests of the module docstring, Holm-corrected together, and a verdict.

    ``kernels``: ``{layer: raw kernel}`` (e.g. :func:`kernel_leaves` of trained params);
    ``initializer``: the model's ``kernel_init`` name or a jax initialiser ``init(key, shape)``.

    Monte-Carlo null: a layer gets ``R = max(null_draws, draw_budget // size)`` fresh banks, capped at
    ``R* = ⌈4m/alpha⌉`` (m = number of tests in the family). With ``R = R*`` the exact two-sided MC p-value
    ``2(1 + #{more extreme})/(R + 1)`` is used (fine enough for Holm to reject); otherwise (large layers) a
    normal approximation of the statistic (smoothness: ρ₁; spectrum: log(m₂ − 1), which is close to
    Gaussian there). ``*_p_method`` records which. Banks of equal shape share their null draws.

    Returns one dict per layer with every statistic, its null mean/sd and z, the p-values, the spectrum
    summary, ``rejected`` (Holm at family-wise ``alpha``) and ``verdict`` (``random-like`` | ``non-random``).
    """
    from scipy import stats

    if isinstance(initializer, str) and initializer not in VARIANCE_SCALING:
        raise ValueError(f"unknown initialiser '{initializer}' (choose from {', '.join(VARIANCE_SCALING)})")
    m = len(TESTS) * len(kernels)
    exact_draws = math.ceil(4 * m / alpha)
    cache: dict[tuple, dict] = {}
    rows = []
    for index, (layer, raw) in enumerate(kernels.items()):
        raw = np.asarray(raw, np.float64)
        bank = as_filter_bank(layer, raw, spatial_dims)
        draws = min(exact_draws, max(null_draws, draw_budget // raw.size))
        key = (raw.shape, bank.shape, draws)
        if key not in cache:
            # ≥ 20 000 pooled fresh weights: the two-sample KS is then close to the one-sample test.
            cache[key] = _null_statistics(initializer, layer, raw.shape, spatial_dims, draws,
                                          seed + 7919 * len(cache), ks_values=max(20_000, raw.size))
        null = cache[key]
        ks = stats.ks_2samp(raw.ravel(), null["pooled"])
        q_p = sorted(_as_matrix(bank, spatial_dims).shape)
        row = {"layer": layer, "shape": list(raw.shape), "bank_shape": list(bank.shape), "size": int(raw.size),
               "null_draws": draws, "ks_statistic": float(ks.statistic), "ks_p": float(ks.pvalue),
               "ks_p_method": "scipy ks_2samp", "weight_std": float(raw.std()),
               "init_std": float(null["pooled"].std()), "spectrum_mp_expectation": 1.0 + q_p[0] / q_p[1]}
        for name, value, transform in (("smoothness", lag1_autocorrelation(bank, spatial_dims), None),
                                       ("spectrum", spectral_m2(bank, spatial_dims), _spectrum_scale)):
            exact = draws >= exact_draws
            p, z, mean, sd = _p_value(float(value), null[name], exact, transform)
            if name == "spectrum" and q_p[0] < 2:
                p = z = math.nan  # a single singular value has no spectrum to compare
            row.update({f"{name}_statistic": float(value), f"{name}_null_mean": mean, f"{name}_null_sd": sd,
                        f"{name}_z": z, f"{name}_p": p,
                        f"{name}_p_method": "monte-carlo" if exact else "normal approximation"})
        if q_p[0] >= 2:
            row.update(spectrum_summary(bank, spatial_dims))
        rows.append(row)
    pvalues = np.array([[row[f"{t}_p"] for t in TESTS] for row in rows], np.float64).reshape(-1)
    rejected = holm(pvalues, alpha).reshape(len(rows), len(TESTS))
    for row, rej in zip(rows, rejected):
        row["alpha"] = alpha
        row["tests_in_family"] = int(np.isfinite(pvalues).sum())
        row["rejected"] = [t for t, r in zip(TESTS, rej) if r]
        row["verdict"] = "non-random" if row["rejected"] else "random-like"
    return rows
