"""Centred kernel alignment (CKA) between representations, for one pair or many at once.

Definitions (n examples; representation X is (n, d1), Y is (n, d2); rows are the same examples):

* Kernels. Linear: ``K = X Xᵀ``. RBF: ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``. The bandwidth, by
  ``rbf_bandwidth``:

  - ``"kornblith"`` (default; the reference code of Kornblith et al. 2019, ``gram_rbf``):
    ``σ² = rbf_threshold² · median{‖x_i − x_j‖² : all n² pairs (i, j)}``, the n zero diagonal entries
    and both orders of every pair included (``np.median``: the mean of the two middle values when n² is
    even). If that median is 0 the mean of the n² squared distances is used instead.
  - ``"distinct_pairs"`` (an option, not the reference): ``σ = rbf_threshold · median{‖x_i − x_j‖ : i < j}``
    (the mean distance over i < j if that median is 0).
* Biased HSIC (Gretton et al. 2005): ``HSIC₀(K, L) = tr(K H L H) / (n − 1)²`` with ``H = I − 11ᵀ/n``.
* Unbiased HSIC (Song et al. 2012, "Feature selection via dependence maximization", JMLR 13, eq. 5), with
  ``K̃, L̃`` the kernels with their diagonals set to 0, n ≥ 4::

      HSIC₁(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))

  It equals ``⟨U(K), U(L)⟩_F / (n(n−3))`` where ``U`` is U-centring (Székely & Rizzo 2014): for i ≠ j
  ``U(K)_ij = K̃_ij − s_i/(n−2) − s_j/(n−2) + S/((n−1)(n−2))`` (``s = K̃1``, ``S = 1ᵀK̃1``), and 0 on the
  diagonal. This Gram-space form is what we compute.
* CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of neural network representations revisited",
  ICML): ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``. ``debiased=True`` uses HSIC₁
  ("debiased CKA"; the default everywhere), otherwise HSIC₀. CKA is invariant to orthogonal transforms and isotropic scaling of X
  or Y, and (both estimators centre) to translations.
* Minibatch CKA (Nguyen, Raghu & Kornblith 2021, "Do wide and deep networks learn the same things?",
  ICLR): over probe batches b = 1…k, ``CKA_mb = Σ_b HSIC₁(K_b, L_b) / sqrt(Σ_b HSIC₁(K_b, K_b) ·
  Σ_b HSIC₁(L_b, L_b))``. HSIC₁ is unbiased, so the sums estimate the population HSIC without the
  batch-size-dependent bias of HSIC₀; the probe set can then be far larger than memory.

All pairs at once: :func:`cka_matrix` centres each representation's Gram matrix once, flattens it, and
gets every pair's HSIC from one contraction ``G Gᵀ`` — O(M·n²·d + M²·n²) for M representations instead of
the per-pair O(M²·n²·d). Representations of the same shape (e.g. one layer across seeds) are stacked and
vmapped; different widths meet only as n×n Grams. ``block_rows`` bounds memory to O(M·block_rows·n) by
building the centred Grams a block of rows at a time (the centring needs only row sums, which for the
linear kernel are known in closed form).

Numerics: float32 throughout, matmuls at ``Precision.HIGHEST`` (no TF32/bf16 passes on accelerators).
Features are centred in two passes and, outside minibatch accumulation, scaled to unit Frobenius norm
(CKA is scale-invariant; this keeps Grams O(1)). A representation that is constant over the n examples
(‖X − mean‖_F ≤ ``CONSTANT_RTOL``·‖X‖_F) has no similarity structure: CKA with it is 0/0. By default
that is a ``ValueError`` naming it; ``on_constant="zero"`` instead defines every CKA involving it as 0
(diagonal included), which keeps large studies with a dead layer running. NaN/inf inputs are an error.

Null values: with n examples of d ≫ n dimensions, *biased* linear CKA between independent
representations is far from 0 (two independent isotropic Gaussian sets, n = 32: ≈ 0.76 at d = 100 and
≈ 0.998 at d = 12,800), while the debiased estimate is centred on 0. Calibrate with both estimators' nulls
before reading a value as similarity: :func:`permuted_cka` gives the permutation null (rows of one
representation shuffled) from the centred Grams of :func:`centred_grams`.

Example::

    x = jax.random.normal(jax.random.key(0), (64, 100))
    cka(x, 2.0 * x @ orthogonal)                       # 1.0 (debiased by default)
    grams, constant = centred_grams([x, y, z], debiased=True)
    cka_from_grams(grams, constant)                    # (3, 3), equal to cka_matrix([x, y, z], debiased=True)
    cka_matrix([x, y, z], debiased=True)               # (3, 3)
    acc = MinibatchCKA(); [acc.update([a, b]) for a, b in batches]; acc.result()
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KERNELS = ("linear", "rbf")
RBF_BANDWIDTHS = ("kornblith", "distinct_pairs")
ON_CONSTANT = ("error", "zero")
# A representation whose centred norm is below this fraction of its raw norm is constant up to float32
# rounding (centring n equal float32 values leaves residuals of order 1e-7 of their size).
CONSTANT_RTOL = 1e-5
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------- checks
def _check_options(kernel: str, on_constant: str, block_rows, rbf_bandwidth: str = "kornblith") -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel '{kernel}' (choose from {', '.join(KERNELS)})")
    if rbf_bandwidth not in RBF_BANDWIDTHS:
        raise ValueError(f"unknown rbf_bandwidth '{rbf_bandwidth}' (choose from {', '.join(RBF_BANDWIDTHS)})")
    if on_constant not in ON_CONSTANT:
        raise ValueError(f"unknown on_constant '{on_constant}' (choose from {', '.join(ON_CONSTANT)})")
    if block_rows is not None and (not isinstance(block_rows, (int, np.integer)) or block_rows < 1):
        raise ValueError(f"block_rows must be a positive integer or None, got {block_rows!r}")


def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples (the unbiased HSIC divides by n(n-3)), got n={n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 examples, got n={n}")


def _layout(features) -> tuple[tuple, tuple, np.ndarray, int]:
    """Validate shapes and plan the computation without touching the data.

    Returns ``(arrays, groups, perm, n)``. ``arrays`` are the representations in a canonical order (sorted
    by shape, then input position) and ``groups`` the sizes of its runs of equal shape (each run is
    stacked and vmapped), or ``("stacked",)`` for one (M, n, d…) array. ``perm`` (M, M) maps canonical
    back to input order; it is a runtime argument, so any ordering of the same shapes reuses one compiled
    program (``cka(x, y)`` and ``cka(y, x)`` included).
    """
    if hasattr(features, "ndim") and hasattr(features, "shape"):
        if features.ndim < 3:
            raise ValueError(f"a stacked features array must be (M, n, d...), got shape {features.shape}")
        return (features,), ("stacked",), np.eye(features.shape[0], dtype=np.float32), features.shape[1]
    arrays = tuple(features)
    if not arrays:
        raise ValueError("no representations given")
    keys = []
    for i, r in enumerate(arrays):
        shape = tuple(np.shape(r))
        if len(shape) < 2:
            raise ValueError(f"representation {i} must be (n, d...), got shape {shape}")
        keys.append((shape[0], int(np.prod(shape[1:])), shape, i))
    ns = sorted({k[0] for k in keys})
    if len(ns) != 1:
        raise ValueError(f"all representations must have the same number of examples (rows), got {ns}")
    order = [k[3] for k in sorted(keys)]
    sizes = []
    for pos, i in enumerate(order):
        if pos and keys[i][1] == keys[order[pos - 1]][1]:
            sizes[-1] += 1
        else:
            sizes.append(1)
    perm = np.eye(len(arrays), dtype=np.float32)[np.argsort(order)]
    return tuple(arrays[i] for i in order), tuple(sizes), perm, ns[0]


def _stack_groups(arrays: tuple, groups: tuple) -> list:
    """Inside jit: one float32 (S, n, d) stack per group of consecutive equal-width representations."""
    if groups == ("stacked",):
        x = arrays[0]
        return [x.reshape(*x.shape[:2], -1).astype(jnp.float32)]
    flat = [a.reshape(a.shape[0], -1).astype(jnp.float32) for a in arrays]
    bounds = np.cumsum((0,) + groups)
    return [jnp.stack(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


# ------------------------------------------------------------------------------------ per representation
def _prepare(x: jax.Array, kernel: str, debiased: bool, threshold, normalize: bool, keep_gram: bool,
             bandwidth: str) -> dict:
    """Everything needed to produce (rows of) one representation's centred Gram matrix.

    The centred Gram is ``K' − a_i − a_j`` (``K'`` the kernel; when debiased its diagonal is zeroed
    before and after): biased ``a = m − ḡ/2`` (``m`` the row means of K, ``ḡ`` their mean) gives ``HKH``;
    debiased ``a = s/(n−2) − S/(2(n−1)(n−2))`` (``s`` row sums of K with zero diagonal, ``S = Σs``) gives
    U-centring. ``keep_gram`` keeps the RBF kernel matrix (n²) instead of recomputing rows later.
    """
    n = x.shape[0]
    finite = jnp.all(jnp.isfinite(x))
    xc = x - jnp.mean(x, axis=0)
    xc = xc - jnp.mean(xc, axis=0)  # second pass removes the rounding left by the first (stable centring)
    # Squared norms: features beyond ~1e18 would overflow float32 here; network activations never are.
    raw_sq, cen_sq = jnp.sum(jnp.square(x)), jnp.sum(jnp.square(xc))
    constant = (cen_sq <= CONSTANT_RTOL**2 * raw_sq) | ~finite
    if normalize:
        xc = xc * jax.lax.rsqrt(jnp.where(constant, 1.0, cen_sq))
    xc = jnp.where(constant, 0.0, xc)  # constant ⇒ exactly zero centred Gram, so nothing downstream is NaN
    sqn = jnp.sum(jnp.square(xc), axis=1)
    state = {"xc": xc, "sqn": sqn, "constant": constant, "finite": finite}
    if kernel == "linear":
        # Xc is centred, so K1 = Xc(Xcᵀ1) = 0: the row sums are known exactly without forming K.
        if debiased:
            s = -sqn  # row sums of K with its diagonal zeroed
            a = s / (n - 2) - jnp.sum(s) / (2 * (n - 1) * (n - 2))
        else:
            a = jnp.zeros(n, x.dtype)
        state.update(gamma=jnp.zeros((), x.dtype), a=a)
        return state
    # RBF: all pairwise distances once, for the median bandwidth and exact row sums.
    sq = jnp.where(jnp.eye(n, dtype=bool), 0.0, _sq_dists(xc, sqn, xc))  # exact zeros, not rounding, on the diagonal
    sigma_sq = jnp.square(threshold) * (_median_sq_distance_all_pairs(sq) if bandwidth == "kornblith"
                                        else jnp.square(_median_pairwise_distance(sq)))
    gamma = jnp.where(sigma_sq > 0, 1.0 / (2.0 * sigma_sq), 0.0)
    k = jnp.where(constant, 0.0, jnp.exp(-gamma * sq))
    if debiased:
        k = jnp.where(jnp.eye(n, dtype=bool), 0.0, k)
        s = jnp.sum(k, axis=1)
        a = s / (n - 2) - jnp.sum(s) / (2 * (n - 1) * (n - 2))
    else:
        m = jnp.mean(k, axis=1)
        a = m - jnp.mean(m) / 2
    state.update(gamma=gamma, a=a)
    if keep_gram:
        state["k"] = k
    return state


def _median_sq_distance_all_pairs(sq: jax.Array) -> jax.Array:
    """Median of the n² squared distances, diagonal included, as ``np.median`` takes it (the mean of the
    n² values if that median is 0): the bandwidth of Kornblith et al.'s reference ``gram_rbf``."""
    flat = jnp.sort(sq.reshape(-1))
    m = flat.shape[0]
    median = 0.5 * (flat[(m - 1) // 2] + flat[m // 2])
    return jnp.where(median > 0, median, jnp.mean(flat))


def _median_pairwise_distance(sq: jax.Array) -> jax.Array:
    """Median of ``sqrt(sq_ij)`` over pairs i < j (the mean if that median is 0).

    Sorting the n(n−1) off-diagonal entries (each pair twice, diagonal pushed to +inf) and averaging the
    middle two of the first n(n−1) gives exactly the median over the m = n(n−1)/2 distinct pairs; this
    avoids gathering the upper triangle, which XLA compiles slowly.
    """
    n = sq.shape[0]
    off = ~jnp.eye(n, dtype=bool)
    dist = jnp.sqrt(jnp.where(off, sq, jnp.inf)).reshape(-1)
    m = n * (n - 1) // 2
    ordered = jnp.sort(dist)
    median = 0.5 * (ordered[m - 1] + ordered[m])
    mean = jnp.sum(jnp.where(off, jnp.sqrt(sq), 0.0)) / (n * (n - 1))
    return jnp.where(median > 0, median, mean)


def _sq_dists(rows: jax.Array, row_sqn: jax.Array, x: jax.Array) -> jax.Array:
    sqn = jnp.sum(jnp.square(x), axis=1)
    d = row_sqn[:, None] + sqn[None, :] - 2.0 * jnp.dot(rows, x.T, precision=_HIGHEST)
    return jnp.maximum(d, 0.0)


def _centre(k: jax.Array, a_rows: jax.Array, a: jax.Array, row_index: jax.Array, debiased: bool) -> jax.Array:
    k = k - a_rows[:, None] - a[None, :]
    if debiased:
        k = jnp.where(row_index[:, None] == jnp.arange(a.shape[0])[None, :], 0.0, k)
    return k


def _centred_gram(state: dict, kernel: str, debiased: bool) -> jax.Array:
    """The whole (n, n) centred Gram matrix."""
    xc, a = state["xc"], state["a"]
    k = jnp.dot(xc, xc.T, precision=_HIGHEST) if kernel == "linear" else state["k"]
    return _centre(k, a, a, jnp.arange(a.shape[0]), debiased)


def _centred_gram_rows(state: dict, start, rows: int, kernel: str, debiased: bool) -> jax.Array:
    """Rows ``start … start+rows−1`` of the centred Gram matrix, (rows, n); rows past n are zero."""
    xc, sqn, a = state["xc"], state["sqn"], state["a"]
    n = xc.shape[0]
    pad = (-n) % rows
    idx = start + jnp.arange(rows)
    xr = jax.lax.dynamic_slice_in_dim(jnp.pad(xc, ((0, pad), (0, 0))), start, rows)
    ar = jax.lax.dynamic_slice_in_dim(jnp.pad(a, (0, pad)), start, rows)
    if kernel == "linear":
        k = jnp.dot(xr, xc.T, precision=_HIGHEST)
    else:
        sr = jax.lax.dynamic_slice_in_dim(jnp.pad(sqn, (0, pad)), start, rows)
        k = jnp.where(state["constant"], 0.0, jnp.exp(-state["gamma"] * _sq_dists(xr, sr, xc)))
        if debiased:
            k = jnp.where(idx[:, None] == jnp.arange(n)[None, :], 0.0, k)
    k = _centre(k, ar, a, idx, debiased)
    return jnp.where((idx < n)[:, None], k, 0.0)


def _hsic_scale(n: int, debiased: bool) -> float:
    return 1.0 / (n * (n - 3)) if debiased else 1.0 / (n - 1) ** 2


def _normalise(products: jax.Array, constant: jax.Array) -> jax.Array:
    """CKA from HSIC products; every entry involving a constant representation is defined as 0."""
    diag = jnp.sum(products * jnp.eye(products.shape[0], dtype=products.dtype), axis=1)  # no gather
    ok = ~constant & (diag > 0)
    root = jnp.sqrt(jnp.where(ok, diag, 1.0))
    cka = products / (root[:, None] * root[None, :])
    return jnp.where(ok[:, None] & ok[None, :], cka, 0.0)


# ---------------------------------------------------------------------------------------- all pairs
@functools.partial(jax.jit, static_argnames=("groups", "kernel", "debiased", "block_rows", "normalize", "bandwidth"))
def _all_pairs(arrays: tuple, threshold, perm, *, groups: tuple, kernel: str, debiased: bool, block_rows,
               normalize: bool, bandwidth: str):
    """All-pairs CKA (``normalize``) or HSIC, in input order, plus per-representation flags.

    One centred Gram per representation, flattened into the rows of ``G``; ``G Gᵀ`` holds every pair's
    ``⟨K_i, K_j⟩_F``. Chunked: the same contraction accumulated over blocks of Gram rows.
    """
    stacks = _stack_groups(arrays, groups)
    n = stacks[0].shape[1]
    chunked = block_rows is not None and block_rows < n

    def prepare(x):
        return _prepare(x, kernel, debiased, threshold, normalize, keep_gram=not chunked, bandwidth=bandwidth)

    # Chunked RBF: one representation's n² distance matrix at a time (lax.map), not all of them at once.
    states = [jax.lax.map(prepare, s) if chunked and kernel == "rbf" else jax.vmap(prepare)(s) for s in stacks]
    if not chunked:
        flat = jnp.concatenate([jax.vmap(lambda st: _centred_gram(st, kernel, debiased))(st).reshape(s.shape[0], -1)
                                for st, s in zip(states, stacks)])
        products = jnp.dot(flat, flat.T, precision=_HIGHEST)
    else:
        def add_block(b, acc):
            parts = [jax.vmap(lambda st: _centred_gram_rows(st, b * block_rows, block_rows, kernel, debiased))(st)
                     for st in states]
            flat = jnp.concatenate([p.reshape(p.shape[0], -1) for p in parts])  # (M, block_rows·n)
            return acc + jnp.dot(flat, flat.T, precision=_HIGHEST)

        m = perm.shape[0]
        products = jax.lax.fori_loop(0, -(-n // block_rows), add_block, jnp.zeros((m, m), jnp.float32))
    # Back to input order with a permutation matrix: exact, and cheaper to compile than a gather.
    products = jnp.dot(jnp.dot(perm, products, precision=_HIGHEST), perm.T, precision=_HIGHEST)
    constant = jnp.dot(perm, jnp.concatenate([st["constant"] for st in states]).astype(jnp.float32)) > 0.5
    finite = jnp.dot(perm, jnp.concatenate([st["finite"] for st in states]).astype(jnp.float32)) > 0.5
    result = _normalise(products, constant) if normalize else products * _hsic_scale(n, debiased)
    return result, constant, finite


def _raise_on_problems(constant, finite, on_constant: str, labels=None) -> None:
    if isinstance(constant, jax.core.Tracer):
        if on_constant == "error":
            raise ValueError("on_constant='error' needs concrete values; under jit/vmap pass on_constant='zero'")
        return
    name = (lambda i: f"{labels[i]}") if labels is not None else (lambda i: f"representation {i}")
    bad = np.flatnonzero(~np.asarray(finite))
    if bad.size:
        raise ValueError(f"{name(int(bad[0]))} contains NaN or inf")
    const = np.flatnonzero(np.asarray(constant))
    if const.size and on_constant == "error":
        which = ", ".join(name(int(i)) for i in const[:5]) + (" …" if const.size > 5 else "")
        raise ValueError(f"{which}: constant over the examples (zero variance), CKA is undefined; "
                         "pass on_constant='zero' to define it as 0")


def _run(features, kernel, debiased, rbf_threshold, block_rows, normalize, rbf_bandwidth):
    _check_options(kernel, "zero", block_rows, rbf_bandwidth)
    arrays, groups, perm, n = _layout(features)
    _check_n(n, debiased)
    return _all_pairs(arrays, jnp.float32(rbf_threshold), perm, groups=groups, kernel=kernel, debiased=debiased,
                      block_rows=block_rows, normalize=normalize, bandwidth=rbf_bandwidth)


def hsic_matrix(features, *, kernel: str = "linear", debiased: bool = True, rbf_threshold: float = 1.0,
                block_rows: int | None = None, rbf_bandwidth: str = "kornblith"):
    """HSIC estimates (M, M) between all representations of one probe batch, plus their constant flags.

    ``HSIC₁`` (debiased) or ``HSIC₀`` exactly as in the module docstring; features are centred but not
    rescaled, so the values of different batches can be summed (minibatch CKA).
    Returns ``(hsic (M, M) float32, constant (M,) bool)`` in the input order. NaN/inf inputs raise.
    """
    hsic, constant, finite = _run(features, kernel, debiased, rbf_threshold, block_rows, False, rbf_bandwidth)
    _raise_on_problems(constant, finite, "zero")
    return hsic, constant


def cka_matrix(features, *, kernel: str = "linear", debiased: bool = True, rbf_threshold: float = 1.0,
               block_rows: int | None = None, on_constant: str = "error", labels: Sequence[str] | None = None,
               rbf_bandwidth: str = "kornblith"):
    """CKA between every pair of M representations, (M, M) float32, in one jitted computation.

    ``features``: a sequence of M arrays (n, d_i…) (widths may differ; trailing axes are flattened) or one
    stacked array (M, n, d…). Equal shapes are stacked and vmapped (e.g. one layer across seeds).
    ``block_rows`` builds the centred Grams ``block_rows`` rows at a time (memory O(M·block_rows·n)
    instead of O(M·n²)). ``labels`` name representations in error messages; ``on_constant``: see the
    module docstring. Equal to :func:`cka` on every pair; symmetric; diagonal 1.
    """
    _check_options(kernel, on_constant, block_rows, rbf_bandwidth)
    result, constant, finite = _run(features, kernel, debiased, rbf_threshold, block_rows, True, rbf_bandwidth)
    _raise_on_problems(constant, finite, on_constant, labels)
    return result


def cka(x, y, *, kernel: str = "linear", debiased: bool = True, rbf_threshold: float = 1.0,
        on_constant: str = "error", rbf_bandwidth: str = "kornblith"):
    """CKA between x (n, d1…) and y (n, d2…): a float32 scalar in [0, 1] (debiased: may dip below 0).

    Definitions and references in the module docstring. Debiased by default (needs n ≥ 4): the biased
    estimate of independent representations is far above 0 when n is small against the width.
    """
    return cka_matrix([x, y], kernel=kernel, debiased=debiased, rbf_threshold=rbf_threshold,
                      on_constant=on_constant, rbf_bandwidth=rbf_bandwidth)[0, 1]


# ------------------------------------------------------------------------------------ centred Grams
@functools.partial(jax.jit, static_argnames=("groups", "kernel", "debiased", "bandwidth"))
def _centred_grams(arrays: tuple, threshold, *, groups: tuple, kernel: str, debiased: bool, bandwidth: str):
    grams, constant, finite = [], [], []
    for stack in _stack_groups(arrays, groups):
        states = jax.vmap(lambda x: _prepare(x, kernel, debiased, threshold, True, True, bandwidth))(stack)
        grams.append(jax.vmap(lambda state: _centred_gram(state, kernel, debiased))(states))
        constant.append(states["constant"])
        finite.append(states["finite"])
    return jnp.concatenate(grams), jnp.concatenate(constant), jnp.concatenate(finite)


def centred_grams(features, *, kernel: str = "linear", debiased: bool = True, rbf_threshold: float = 1.0,
                  rbf_bandwidth: str = "kornblith", labels: Sequence[str] | None = None):
    """The centred Gram matrices of M representations: ``(grams (M, n, n) float32, constant (M,) bool)``.

    Each representation is centred and scaled to unit Frobenius norm, then its kernel is centred:
    ``HKH`` (biased) or U-centred (debiased), the matrices whose Frobenius inner products are the HSIC
    estimates of the module docstring up to the factor 1/(n−1)² or 1/(n(n−3)). A study can keep these
    n² numbers per (model, layer) instead of the features, whatever the layer's width: :func:`cka_from_grams`
    and :func:`permuted_cka` need nothing else. ``features`` as for :func:`cka_matrix`; constant
    representations get an all-zero Gram and ``constant`` True; NaN/inf inputs raise (naming ``labels``).
    """
    _check_options(kernel, "zero", None, rbf_bandwidth)
    arrays, groups, perm, n = _layout(features)
    _check_n(n, debiased)
    grams, constant, finite = _centred_grams(arrays, jnp.float32(rbf_threshold), groups=groups, kernel=kernel,
                                             debiased=debiased, bandwidth=rbf_bandwidth)
    back = np.argmax(perm, axis=1)  # each input's position in the canonical (grouped) order
    grams, constant, finite = np.asarray(grams)[back], np.asarray(constant)[back], np.asarray(finite)[back]
    _raise_on_problems(constant, finite, "zero", labels)
    return grams, constant


def cka_from_grams(grams, constant=None) -> np.ndarray:
    """CKA (M, M) float64 between representations given by their centred Grams (M, n, n) (same n and
    estimator): ``⟨K_a, K_b⟩_F / (‖K_a‖_F ‖K_b‖_F)``. Entries involving a constant representation (or an
    all-zero Gram) are 0, as ``on_constant="zero"`` defines them."""
    g = np.asarray(grams, np.float64)
    g = g.reshape(g.shape[0], -1)
    products = g @ g.T
    diag = np.diag(products).copy()
    ok = diag > 0
    if constant is not None:
        ok &= ~np.asarray(constant, bool)
    root = np.sqrt(np.where(ok, diag, 1.0))
    out = products / np.outer(root, root)
    out[~ok, :] = 0.0
    out[:, ~ok] = 0.0
    return out


def random_permutations(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` seeded permutations of ``range(n)``, (count, n) int64."""
    rng = np.random.default_rng([seed, 6151])
    return np.stack([rng.permutation(n) for _ in range(count)]) if count else np.zeros((0, n), np.int64)


def permuted_cka(gram_x, gram_y, permutations) -> np.ndarray:
    """The permutation null: CKA(X, ΠY) for each row Π of ``permutations`` (P, n), from centred Grams.

    Shuffling the examples (rows) of Y breaks any correspondence between the two representations while
    keeping each one's own structure, so these values are what the estimator reports for unrelated
    representations of exactly these shapes and spectra. Both centrings commute with a simultaneous
    permutation of rows and columns (``H Π = Π H``; U-centring uses only row sums and the total), so the
    centred Gram of ΠY is ``Π L Πᵀ``: no recentring, no features needed. Returns (P,) float64.
    """
    kx, ly = np.asarray(gram_x, np.float64), np.asarray(gram_y, np.float64)
    scale = math.sqrt(float(np.sum(kx * kx)) * float(np.sum(ly * ly)))
    perms = np.asarray(permutations)
    if scale == 0:
        return np.zeros(len(perms))
    return np.array([float(np.sum(kx * ly[np.ix_(p, p)])) for p in perms]) / scale


# -------------------------------------------------------------------------------------- minibatches
class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): accumulate HSIC over probe batches, normalise at the end.

    Each :meth:`update` takes the same M representations (same order, any widths) of one probe batch;
    batch sizes may differ (each batch's HSIC is properly normalised). Memory is that of one batch.

    Example::

        acc = MinibatchCKA(kernel="linear")
        for images in probe_batches:
            acc.update([features_a(images), features_b(images)])
        acc.result()   # (2, 2)
    """

    def __init__(self, *, kernel: str = "linear", debiased: bool = True, rbf_threshold: float = 1.0,
                 block_rows: int | None = None, on_constant: str = "error", rbf_bandwidth: str = "kornblith"):
        _check_options(kernel, on_constant, block_rows, rbf_bandwidth)
        self.kernel, self.debiased, self.rbf_bandwidth = kernel, debiased, rbf_bandwidth
        self.rbf_threshold = rbf_threshold
        self.block_rows, self.on_constant = block_rows, on_constant
        self._sum = None
        self.batches = 0

    def update(self, features) -> None:
        hsic, _ = hsic_matrix(features, kernel=self.kernel, debiased=self.debiased, rbf_threshold=self.rbf_threshold,
                              block_rows=self.block_rows, rbf_bandwidth=self.rbf_bandwidth)
        if self._sum is not None and hsic.shape != self._sum.shape:
            raise ValueError(f"batch has {hsic.shape[0]} representations, earlier batches had {self._sum.shape[0]}")
        self._sum = hsic if self._sum is None else self._sum + hsic
        self.batches += 1

    def result(self) -> jax.Array:
        """CKA (M, M) from the accumulated HSIC sums."""
        if self._sum is None:
            raise ValueError("no batches accumulated")
        # A representation constant in every batch has zero self-HSIC sum (exactly: its Grams are zero).
        constant = jnp.diagonal(self._sum) == 0
        _raise_on_problems(constant, jnp.ones_like(constant), self.on_constant)
        return _normalise(self._sum, constant)
