"""Filter dynamics and the "do trained filters still look random?" tests, validated on known cases."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxfcn.analysis import filters as F


def fresh(shape, seed, name="he_normal"):
    return F.numpy_draws(name, shape, 1, np.random.default_rng(seed))[0]


def test_parameter_changes_known_values():
    rng = np.random.default_rng(0)
    w0 = {"encoder": {"block_0": {"conv_0": {"kernel": rng.normal(size=(3, 3, 1, 4))}}},
          "head": {"kernel": rng.normal(size=(1, 1, 4, 2)), "bias": np.zeros(2)}}
    delta = rng.normal(size=(3, 3, 1, 4))
    w1 = jax.tree.map(lambda a: a, w0)
    w1["encoder"]["block_0"]["conv_0"]["kernel"] = w0["encoder"]["block_0"]["conv_0"]["kernel"] + delta
    w2 = jax.tree.map(lambda a: 2 * a, w0)
    rows = {(r["layer"], r["step"]): r for r in F.parameter_changes({0: w0, 10: w1, 20: w2})}
    assert set(layer for layer, _ in rows) == {"encoder/block_0/conv_0", "head"}  # kernels only
    k0 = w0["encoder"]["block_0"]["conv_0"]["kernel"]
    r = rows[("encoder/block_0/conv_0", 10)]
    assert r["relative_change"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(k0))
    cos = np.sum(k0 * (k0 + delta)) / (np.linalg.norm(k0) * np.linalg.norm(k0 + delta))
    assert r["cosine"] == pytest.approx(cos)
    assert rows[("head", 10)]["relative_change"] == 0 and rows[("head", 10)]["cosine"] == pytest.approx(1)
    assert rows[("head", 20)]["relative_change"] == pytest.approx(1.0)  # 2W: ‖W‖/‖W‖
    assert rows[("head", 20)]["cosine"] == pytest.approx(1.0)


def test_upconv_kernel_becomes_its_transposed_conv_taps():
    cin, cout = 3, 5
    kernel = np.arange(cin * 4 * cout, dtype=np.float64).reshape(cin, 4 * cout)
    bank = F.as_filter_bank("decoder/up_0", kernel, spatial_dims=2)
    assert bank.shape == (2, 2, cin, cout)
    taps = kernel.reshape(cin, 2, 2, cout)  # UpConv docstring: K[c, a, b, o]
    for a in range(2):
        for b in range(2):
            np.testing.assert_array_equal(bank[a, b], taps[:, a, b, :])
    with pytest.raises(ValueError, match="not a 2D filter bank"):
        F.as_filter_bank("encoder/block_0/conv_0", np.zeros((3, 3, 3, 1, 2)), spatial_dims=2)


@pytest.mark.parametrize("name,shape", [("he_normal", (3, 3, 16, 32)), ("he_uniform", (16, 4 * 8))])
def test_numpy_draws_follow_the_jax_initialiser(name, shape):
    from jaxfcn.models.layers import kernel_initializer

    ours = F.numpy_draws(name, shape, 2, np.random.default_rng(1)).ravel()
    theirs = np.asarray(kernel_initializer(name)(jax.random.key(0), shape)).ravel()
    assert stats.ks_2samp(ours, theirs).pvalue > 0.01
    assert ours.std() == pytest.approx(theirs.std(), rel=0.05)
    assert np.abs(ours).max() <= np.abs(theirs).max() * 1.1  # same truncation / uniform limit


def test_holm_step_down():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted finite: 0.005 ≤ .05/4 ✓, 0.01 ≤ .05/3 ✓, 0.03 > .05/2 ✗ → stop
    np.testing.assert_array_equal(F.holm(p, 0.05), [True, False, False, True, False])


def test_fresh_random_filters_pass_and_false_positive_rate_is_controlled():
    shapes = [(3, 3, 4, 8), (3, 3, 8, 8), (1, 1, 8, 3), (3, 3, 16, 16), (8, 4 * 8)]
    names = ["conv", "conv", "head", "conv", "up_0"]
    kernels = {f"layer_{i}/{names[i % 5]}": fresh(shapes[i % 5], 100 + i) for i in range(40)}
    rows = F.randomness_tests(kernels, "he_normal", spatial_dims=2, null_draws=150, seed=1)
    assert all(r["verdict"] == "random-like" for r in rows), [r["rejected"] for r in rows if r["rejected"]]
    pvalues = np.array([r[f"{t}_p"] for r in rows for t in F.TESTS], float)
    pvalues = pvalues[np.isfinite(pvalues)]  # 1×1 kernels have no smoothness test
    assert len(pvalues) > 80
    # raw p-values of random filters are calibrated: ~uniform, ~5 % below 0.05
    assert np.mean(pvalues < 0.05) <= 0.12
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001
    # and in 3D
    rows3 = F.randomness_tests({"enc3d": fresh((3, 3, 3, 4, 8), 17), "decoder/up_0": fresh((8, 8 * 4), 18)}, "he_normal",
                               spatial_dims=3, null_draws=150)
    assert [r["verdict"] for r in rows3] == ["random-like", "random-like"]
    assert rows3[1]["bank_shape"] == [2, 2, 2, 8, 4]


def smooth_trained_bank(shape, steps=300, seed=0):
    """Really optimise a filter bank towards smoothness (Tikhonov: TV + fidelity to its random start)."""
    w0 = jnp.asarray(fresh(shape, seed), jnp.float32)

    def loss(w):
        tv = jnp.sum(jnp.diff(w, axis=0) ** 2) + jnp.sum(jnp.diff(w, axis=1) ** 2)
        return tv + 0.5 * jnp.sum((w - w0) ** 2)

    opt = optax.adam(1e-2)

    @jax.jit
    def step(w, state):
        grads = jax.grad(loss)(w)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(w, updates), state

    w, state = w0, opt.init(w0)
    for _ in range(steps):
        w, state = step(w, state)
    assert float(loss(w)) < 0.5 * float(loss(w0))  # the optimisation really happened
    return np.asarray(w, np.float64)


def test_smooth_trained_filters_are_flagged_non_random():
    shape = (3, 3, 8, 16)
    smooth = smooth_trained_bank(shape)
    kernels = {"smooth": smooth, "random": fresh(shape, 3)}
    rows = {r["layer"]: r for r in F.randomness_tests(kernels, "he_normal", spatial_dims=2)}
    assert rows["smooth"]["verdict"] == "non-random"
    assert "smoothness" in rows["smooth"]["rejected"]
    assert rows["smooth"]["smoothness_statistic"] > 0.3 and rows["smooth"]["smoothness_z"] > 5
    assert rows["random"]["verdict"] == "random-like"


def test_each_test_detects_its_own_departure():
    rng = np.random.default_rng(5)
    shape = (3, 3, 8, 16)
    scaled = 3.0 * fresh(shape, 11)  # same arrangement, wrong scale: only the marginal differs
    low_rank = (rng.normal(size=(72, 2)) @ rng.normal(size=(2, 16))).reshape(shape)
    low_rank *= fresh(shape, 12).std() / low_rank.std()
    rows = {r["layer"]: r for r in F.randomness_tests({"scaled": scaled, "low_rank": low_rank}, "he_normal",
                                                      spatial_dims=2)}
    assert rows["scaled"]["rejected"] == ["ks"]
    # (the low-rank bank is not iid either, so other tests may reject it too; the spectrum test must)
    assert "spectrum" in rows["low_rank"]["rejected"]
    assert rows["low_rank"]["fraction_above_mp_edge"] > 0
