"""CKA: definitions against an independent float64 numpy implementation, invariances, all-pairs, numerics."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxfcn.analysis.cka import (MinibatchCKA, centred_grams, cka, cka_from_grams, cka_matrix, hsic_matrix,
                                 permuted_cka, random_permutations)

KERNEL_MODES = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


# ----------------------------------------------- independent reference (textbook formulas, float64)
def np_gram(x, kernel, threshold=1.0, bandwidth="kornblith"):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if kernel == "linear":
        return x @ x.T
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if bandwidth == "kornblith":
        # Kornblith et al.'s reference: sigma^2 = threshold^2 * median of the squared distances of all n^2 pairs
        sigma2 = threshold**2 * np.median(d2)
    else:
        sigma2 = (threshold * np.median(np.sqrt(d2[np.triu_indices(len(x), 1)]))) ** 2
    return np.exp(-d2 / (2 * sigma2))


def np_hsic(k, l, debiased):
    n = len(k)
    if not debiased:  # Gretton et al. 2005: tr(KHLH)/(n-1)^2
        h = np.eye(n) - np.ones((n, n)) / n
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2
    # Song et al. 2012, eq. 5, written out term by term.
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def np_cka(x, y, kernel="linear", debiased=False, threshold=1.0, bandwidth="kornblith"):
    k, l = np_gram(x, kernel, threshold, bandwidth), np_gram(y, kernel, threshold, bandwidth)
    return np_hsic(k, l, debiased) / np.sqrt(np_hsic(k, k, debiased) * np_hsic(l, l, debiased))


def random_features(seed, n=40, widths=(12, 30)):
    """Related representations: shared latent, nonlinear mixing, noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    out = []
    for w in widths:
        a = rng.normal(size=(5, w))
        out.append((np.tanh(z @ a) + 0.5 * rng.normal(size=(n, w))).astype(np.float32))
    return out


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("kernel,debiased", KERNEL_MODES)
def test_matches_float64_numpy_reference(kernel, debiased):
    # Few distinct shapes on purpose: every new shape combination is a new XLA compilation.
    x, y = random_features(0)
    x2, _ = random_features(11)
    for threshold in (0.5, 1.0, 2.0):
        for a, b in [(x, y), (x, x2)]:
            ours = float(cka(a, b, kernel=kernel, debiased=debiased, rbf_threshold=threshold))
            ref = np_cka(a, b, kernel, debiased, threshold)
            assert abs(ours - ref) < 2e-5, (threshold, ours, ref)
        if kernel == "linear":
            break  # the threshold only matters for rbf


@pytest.mark.parametrize("kernel,debiased", KERNEL_MODES)
def test_self_similarity_is_one_and_symmetric(kernel, debiased):
    x, y = random_features(1)
    assert float(cka(x, x, kernel=kernel, debiased=debiased)) == pytest.approx(1.0, abs=1e-5)
    xy = float(cka(x, y, kernel=kernel, debiased=debiased))
    assert xy == pytest.approx(float(cka(y, x, kernel=kernel, debiased=debiased)), abs=1e-6)
    assert xy < 0.99  # not trivially 1


@pytest.mark.parametrize("kernel,debiased", KERNEL_MODES)
def test_invariant_to_orthogonal_transform_isotropic_scaling_and_translation(kernel, debiased):
    x, y = random_features(2)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(y.shape[1], y.shape[1])))
    base = float(cka(x, y, kernel=kernel, debiased=debiased))
    for transformed in (y @ q.astype(np.float32), 37.0 * y, 1e-3 * y, y + 100.0):
        assert float(cka(x, transformed, kernel=kernel, debiased=debiased)) == pytest.approx(base, abs=2e-5)
    # a non-isotropic scaling does change linear CKA (the test above could fail)
    if kernel == "linear":
        skewed = y * np.linspace(0.1, 10, y.shape[1], dtype=np.float32)
        assert abs(float(cka(x, skewed, kernel=kernel, debiased=debiased)) - base) > 1e-3


@pytest.mark.parametrize("kernel,debiased", KERNEL_MODES)
def test_cka_matrix_equals_per_pair_cka(kernel, debiased):
    feats = random_features(4) + random_features(5)[:1]  # widths 12, 30, 12: a vmapped group and a single
    mat = np.asarray(cka_matrix(feats, kernel=kernel, debiased=debiased))
    chunked = np.asarray(cka_matrix(feats, kernel=kernel, debiased=debiased, block_rows=7))  # 40 % 7 ≠ 0
    assert mat.shape == (3, 3)
    np.testing.assert_allclose(mat, mat.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-5)
    for i in range(3):
        for j in range(3):
            pair = float(cka(feats[i], feats[j], kernel=kernel, debiased=debiased))
            assert mat[i, j] == pytest.approx(pair, abs=1e-5)
            assert chunked[i, j] == pytest.approx(pair, abs=1e-5)


def test_cka_matrix_stacked_input_and_vmap():
    stack = np.stack(random_features(6, widths=(12, 12, 12, 12)))  # (M, n, d): e.g. one layer of 4 seeds
    mat = np.asarray(cka_matrix(stack, debiased=False))
    ref = np.array([[np_cka(a, b) for b in stack] for a in stack])
    np.testing.assert_allclose(mat, ref, atol=2e-5)
    # cka is jittable/vmappable when constant features are defined rather than raised
    pairs = jax.vmap(lambda a, b: cka(a, b, debiased=False, on_constant="zero"))(stack[:2], stack[2:])
    np.testing.assert_allclose(pairs, [ref[0, 2], ref[1, 3]], atol=2e-5)


def test_debiased_is_closer_to_population_value():
    """Y = first k coordinates of isotropic X: population linear CKA = ‖Σxy‖²/(‖Σxx‖‖Σyy‖) = sqrt(k/d)."""
    d, k, n = 64, 16, 32
    truth = np.sqrt(k / d)
    err_biased, err_debiased = [], []
    for seed in range(5):
        x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
        err_biased.append(abs(float(cka(x, x[:, :k], debiased=False)) - truth))
        err_debiased.append(abs(float(cka(x, x[:, :k], debiased=True)) - truth))
    assert np.mean(err_debiased) < 0.5 * np.mean(err_biased)
    assert np.mean(err_debiased) < 0.1
    # independent X, Y: population CKA is 0; the biased estimate is far from it at n < d
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, k)).astype(np.float32)
    assert abs(float(cka(x, y, debiased=True))) < 0.5 * float(cka(x, y, debiased=False))


def test_the_library_default_is_debiased():
    """cka()/cka_matrix() without arguments give the debiased estimate, whose null for independent data of
    n ≪ d is ≈ 0 (the biased one is ≈ 0.98 here)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(32, 1600)).astype(np.float32), rng.normal(size=(32, 1600)).astype(np.float32)
    assert float(cka(x, y)) == pytest.approx(np_cka(x.astype(np.float64), y.astype(np.float64), debiased=True),
                                             abs=1e-4)
    assert abs(float(cka(x, y))) < 0.1 < 0.9 < float(cka(x, y, debiased=False))
    np.testing.assert_allclose(np.asarray(cka_matrix([x, y])), np.asarray(cka_matrix([x, y], debiased=True)))


def test_minibatch_cka_matches_reference_and_single_batch():
    feats = random_features(7, n=60, widths=(10, 25))
    batches = [(feats[0][s], feats[1][s]) for s in (slice(0, 25), slice(25, 50), slice(50, 60))]
    acc = MinibatchCKA()
    for a, b in batches:
        acc.update([a, b])
    sums = np.zeros((2, 2))
    for a, b in batches:
        grams = [np_gram(a, "linear"), np_gram(b, "linear")]
        sums += [[np_hsic(g, h, True) for h in grams] for g in grams]
    ref = sums[0, 1] / np.sqrt(sums[0, 0] * sums[1, 1])
    assert float(acc.result()[0, 1]) == pytest.approx(ref, abs=2e-5)
    hsic, _ = hsic_matrix([feats[0], feats[1]])
    assert float(hsic[0, 1]) == pytest.approx(np_hsic(np_gram(feats[0], "linear"), np_gram(feats[1], "linear"), True),
                                              rel=1e-4)
    one = MinibatchCKA()
    one.update(feats)
    assert float(one.result()[0, 1]) == pytest.approx(float(cka(*feats, debiased=True)), abs=1e-5)


def test_float32_stable_with_large_offset_and_scale():
    x, y = random_features(8)
    x_shifted = (x * 1e3 + 5e4).astype(np.float32)  # offset ≫ spread: naive Gram centring loses digits
    for kernel, debiased in KERNEL_MODES:
        ours = float(cka(x_shifted, y * 1e-4, kernel=kernel, debiased=debiased))
        assert ours == pytest.approx(np_cka(x_shifted, y * 1e-4, kernel, debiased), abs=1e-4)


def test_errors_and_constant_features():
    x, y = random_features(10)
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="same number of examples"):
        cka(x, y[:5])
    with pytest.raises(ValueError, match="unknown kernel"):
        cka(x, y, kernel="poly")
    const = np.full((40, 12), 3.7, np.float32)
    with pytest.raises(ValueError, match="constant"):
        cka(x, const)
    with pytest.raises(ValueError, match="enc_1.*constant"):
        cka_matrix([x, const], labels=["enc_0", "enc_1"])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cka(bad, y)
    for kernel, debiased in KERNEL_MODES:
        mat = np.asarray(cka_matrix([const, x], kernel=kernel, debiased=debiased, on_constant="zero"))
        assert np.all(np.isfinite(mat))
        assert np.all(mat[0] == 0) and np.all(mat[:, 0] == 0)
        assert mat[1, 1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n", [40, 9])  # n² even (median of the two middle values) and odd
def test_rbf_bandwidth_is_kornblith_reference_by_default(n):
    x, y = (f[:n] for f in random_features(12))
    for threshold in (0.5, 1.0):
        for debiased in (False, True):
            ours = float(cka(x, y, kernel="rbf", debiased=debiased, rbf_threshold=threshold))
            assert ours == pytest.approx(np_cka(x, y, "rbf", debiased, threshold), abs=2e-5)
            option = float(cka(x, y, kernel="rbf", debiased=debiased, rbf_threshold=threshold,
                               rbf_bandwidth="distinct_pairs"))
            assert option == pytest.approx(np_cka(x, y, "rbf", debiased, threshold, "distinct_pairs"), abs=2e-5)
    # the two bandwidths are different estimators on these data (so each comparison above can fail)
    assert abs(np_cka(x, y, "rbf", False, 0.5) - np_cka(x, y, "rbf", False, 0.5, "distinct_pairs")) > 1e-3
    with pytest.raises(ValueError, match="unknown rbf_bandwidth"):
        cka(x, y, kernel="rbf", rbf_bandwidth="mean")


@pytest.mark.parametrize("kernel,debiased", [("linear", True), ("rbf", False)])
def test_centred_grams_give_cka_matrix_and_the_permutation_null(kernel, debiased):
    feats = random_features(13) + random_features(14)[:1]  # widths 12, 30, 12
    grams, constant = centred_grams(feats, kernel=kernel, debiased=debiased)
    assert grams.shape == (3, 40, 40) and not constant.any()
    np.testing.assert_allclose(cka_from_grams(grams, constant),
                               np.asarray(cka_matrix(feats, kernel=kernel, debiased=debiased)), atol=2e-5)
    perms = random_permutations(40, 4, seed=1)
    null = permuted_cka(grams[0], grams[1], perms)
    direct = [np_cka(feats[0], feats[1][p], kernel, debiased) for p in perms]
    np.testing.assert_allclose(null, direct, atol=2e-5)
    # a constant representation: zero Gram, CKA 0 with everything
    const = np.full((40, 12), 2.0, np.float32)
    grams, constant = centred_grams([feats[0], const], kernel=kernel, debiased=debiased)
    assert constant.tolist() == [False, True] and not grams[1].any()
    assert cka_from_grams(grams, constant)[0, 1] == 0 and np.all(permuted_cka(grams[0], grams[1], perms) == 0)


def test_permutation_null_is_centred_for_debiased_and_far_from_zero_for_biased():
    """Independent isotropic Gaussians, n = 32 ≪ d = 1600: biased CKA ≈ 0.98 where the truth is 0."""
    rng = np.random.default_rng(21)
    x, y = rng.normal(size=(32, 1600)).astype(np.float32), rng.normal(size=(32, 1600)).astype(np.float32)
    perms = random_permutations(32, 50)
    nulls = {}
    for debiased in (False, True):
        grams, _ = centred_grams([x, y], debiased=debiased)
        nulls[debiased] = permuted_cka(grams[0], grams[1], perms)
        assert float(cka_from_grams(grams)[0, 1]) == pytest.approx(np_cka(x, y, debiased=debiased), abs=2e-5)
    assert nulls[False].mean() > 0.95
    assert abs(nulls[True].mean()) < 0.01 and nulls[True].std() < 0.05
