"""Transfer mechanics, the transfer-controls runner and the step-0 diagnostics (tiny model, in-memory data).

The diagnostics are checked against independent numpy/scipy computations: the first layer's activations
by a numpy convolution + group norm + ReLU, the head gradient of a zero head in closed form, the linear
probe against scipy's L-BFGS on a numpy objective, Welch's interval against scipy's t-test.
"""
import json
import os

import jax
import numpy as np
import pytest

from jaxfcn.analysis import transfer as T
from jaxfcn.models import build_model
from jaxfcn.partition import zero_head
from jaxfcn.reproduce import controls as C
from jaxfcn.train.checkpoint import load_params
from jaxfcn.train.multiseed import train_seeds
from jaxfcn.train.step import init_train_state
from train_helpers import like_real, shapes_dataset


@pytest.fixture(scope="module")
def data():
    return shapes_dataset()


@pytest.fixture
def config(tiny_config):
    c = like_real(tiny_config)
    c.data.task = "shapes"
    c.train.checkpoint_best = False
    return c


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --- transfer mechanics ----------------------------------------------------------------------------------

def test_transfer_starts_from_each_seeds_source_with_a_fresh_head_and_empty_optimiser(config, data, tmp_path):
    config.train.num_seeds = 2
    train_seeds(config, str(tmp_path / "source"), dataset=data, progress=False)
    sources = {s: str(tmp_path / "source" / f"seed_{s}") for s in (0, 1)}
    t = config.copy_and_resolve_references()
    t.train.init, t.train.reinit_head, t.train.steps = sources[0], True, 1
    t.train.lr_schedule, t.data.augment = "constant", False
    train_seeds(t, str(tmp_path / "target"), dataset=data, progress=False, seed_inits=sources)
    model = build_model(t.model)
    for s in (0, 1):
        start = load_params(str(tmp_path / "target" / f"seed_{s}"), 0)
        source = load_params(sources[s])
        assert leaves_equal(start["encoder"], source["encoder"]) and leaves_equal(start["decoder"], source["decoder"])
        seed_config = t.copy_and_resolve_references()
        seed_config.train.seed = s
        fresh = init_train_state(model, seed_config).params
        assert leaves_equal(start["head"], fresh["head"]) and not leaves_equal(start["head"], source["head"])
        # A fresh Adam state makes the first update lr · g / (|g| + eps) per element: |Δθ| ≤ lr, ≈ lr where
        # |g| ≫ eps. Moments carried over from the source would give other magnitudes.
        after = load_params(str(tmp_path / "target" / f"seed_{s}"))
        ratio = np.concatenate([np.abs(np.ravel(a - b)) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(start))])
        ratio /= t.train.learning_rate
        assert ratio.max() <= 1 + 1e-3 and np.median(ratio) > 0.99  # float32 rounding of θ₁ − θ₀ (|θ| ≈ 1)
    # the state a transfer run starts from (the loop's own path): source parameters, zero moments and count
    from jaxfcn.train.loop import prepare_run
    from jaxfcn.train.parallel import plan_devices
    from jaxfcn.train.programs import build_programs
    from jaxfcn.train.run_files import RunFiles

    s_config = t.copy_and_resolve_references()
    s_config.train.init = sources[1]
    resolved, _, init, _ = prepare_run(s_config, str(tmp_path / "fresh_run"), data, progress=False)
    run = RunFiles(str(tmp_path / "fresh_run"), resolved, init=init)
    try:
        state = run.initial_state(build_programs(resolved, plan_devices("none", resolved.train.batch_size)), None)
    finally:
        run.close()
    assert leaves_equal(state.params["encoder"], load_params(sources[1])["encoder"])
    leaves = jax.tree.leaves(state.opt_state)
    assert leaves and all(not np.any(np.asarray(x)) for x in leaves)


def test_positive_control_beats_random_and_the_runner_writes_its_outputs(config, data, tmp_path):
    """The same-task positive control (the random run's final model, transferred whole) against random init
    at the same small budget; through the controls runner, which also diagnoses both starts."""
    # Dice loss without augmentation: with Dice + CE some seeds of this tiny model first collapse to
    # background for tens of steps, which would leave nothing for the positive control to carry over.
    config.train.lr_schedule, config.train.learning_rate, config.train.loss = "constant", 3e-3, "dice"
    config.data.augment = False
    config.train.eval_every, config.train.log_every, config.train.snapshot_steps = 10, 10, ""
    config.study.seeds, config.study.source, config.study.targets = 2, "shapes", ("shapes",)
    config.study.target_steps = 20
    out = tmp_path / "controls"
    results = C.run_controls(config, str(out), names=["same_task", "random_probe_head"], progress=False,
                             datasets={"shapes": data})
    by_name = {c["name"]: c for c in results["controls"]}
    assert list(by_name) == ["random", "same_task", "random_probe_head"]
    for s, run in enumerate(by_name["random_probe_head"]["per_seed"]):  # the run starts from its materialised init
        start = load_params(run["workdir"], 0)
        assert leaves_equal(start, load_params(str(out / "inits" / "random_probe_head" / f"seed_{s}"), 0))
        assert not leaves_equal(start["head"], load_params(by_name["random"]["per_seed"][s]["workdir"], 0)["head"])
    for positive, random in zip(by_name["same_task"]["per_seed"], by_name["random"]["per_seed"]):
        assert positive["val_dice"][-1] > random["val_dice"][-1] + 0.05
        assert leaves_equal(load_params(positive["workdir"], 0), load_params(random["workdir"]))  # head too
    assert by_name["same_task"]["vs_random"]["test_dice"]["diff"] > 0
    for name in ("results.json", "controls.md", "figures/curves.png", "figures/diagnostics.png"):
        assert os.path.getsize(out / name) > 0
    saved = json.loads((out / "results.json").read_text())
    assert [d["start"] for d in saved["diagnostics"]] == ["random", "same_task", "random_probe_head"]
    fresh = saved["diagnostics"][0]
    assert fresh["gradients"]["model"]["loss"] == fresh["gradients"]["fresh"]["loss"]  # random is its own reference
    assert "`same_task`" in (out / "controls.md").read_text()


def test_materialised_head_starts(config, data, tmp_path):
    """A head choice starts from OUT/inits: source encoder + decoder and the zero head, exactly; the random-init
    probe head is the probe fitted on seed s's own fresh features."""
    config.study.seeds, config.study.source, config.study.targets = 2, "shapes", ("shapes",)
    config.study.source_steps = 3
    layout = C.Layout(str(tmp_path), config)
    train_seeds(C.source_config(config), layout.source, dataset=data, progress=False)
    control = {c.name: c for c in C.control_list()}["transfer_zero_head"]
    root = C.materialise_start(config, control, layout, data, [0, 1])
    model = build_model(like_real(config.copy_and_resolve_references()).model)
    for s in (0, 1):
        start = load_params(os.path.join(root, f"seed_{s}"), 0)
        source = load_params(layout.source_run(s))
        assert layout.source_run(s).endswith(f"seed_{C.SOURCE_SEED_OFFSET + s}")
        assert leaves_equal(start["encoder"], source["encoder"]) and leaves_equal(start["decoder"], source["decoder"])
        assert not np.any(start["head"]["kernel"]) and not np.any(start["head"]["bias"])
    c = C.control_config(config, control, os.path.join(root, "seed_0"))
    assert c.train.transfer_parts == ("encoder", "decoder", "head") and c.train.init_step == 0
    assert not c.train.reinit_head and model.num_classes == 4
    # the random-init probe head: seed s's fresh features, and the head is the probe fitted on them
    probe_control = {c.name: c for c in C.control_list()}["random_probe_head"]
    root = C.materialise_start(config, probe_control, layout, data, [1])
    start = load_params(os.path.join(root, "seed_1"), 0)
    seed_config = C.control_config(config, probe_control, None)
    seed_config.train.seed, seed_config.model.num_classes, seed_config.model.in_channels = 1, 4, 1
    fresh = init_train_state(model, seed_config).params
    assert leaves_equal(start["encoder"], fresh["encoder"]) and leaves_equal(start["decoder"], fresh["decoder"])
    images, labels = C.diagnostic_examples(data, "train", 1)
    x, y = T.pixel_features(model, {"params": fresh}, images, labels, "head_input", pixels_per_image=C.PROBE_PIXELS,
                            seed=1)
    probe = T.fit_linear_probe(x, y, 4)
    logits = np.asarray(model.apply({"params": start}, images)).reshape(-1, 4)
    features, _ = T.pixel_features(model, {"params": fresh}, images, labels, "head_input")
    np.testing.assert_allclose(logits, probe.logits(features), atol=1e-4)


def test_select_controls_and_configs(config):
    names = [c.name for c in C.select_controls(["transfer_low_lr"])]
    assert names == ["random", "random_low_lr", "transfer_low_lr"]
    with pytest.raises(Exception, match="unknown control"):
        C.select_controls(["nope"])
    config.study.target_steps, config.study.source_steps = 200, 50
    by_name = {c.name: c for c in C.control_list()}
    warm = C.control_config(config, by_name["transfer_warmup"], "/src")
    assert warm.train.warmup_steps == 20 and warm.train.reinit_head and warm.train.init == "/src"
    low = C.control_config(config, by_name["random_low_lr"], None)
    assert low.train.learning_rate == pytest.approx(0.1 * config.train.learning_rate) and low.train.init == "random"
    early = C.control_config(config, by_name["transfer_early"], "/src")
    assert early.train.init_step == 5 and C.source_config(config).train.snapshot_steps == "5"
    assert by_name["random_probe_head"].start != by_name["random"].start == by_name["random_warmup"].start
    assert by_name["transfer_low_lr"].start == by_name["transfer"].start != by_name["transfer_early"].start
    enc = C.control_config(config, by_name["transfer_encoder"], "/src")
    assert enc.train.transfer_parts == ("encoder",) and enc.train.reinit_head


def test_cli_refuses_bad_controls_and_seeds(tmp_path, capsys):
    from jaxfcn.cli import main

    out = tmp_path / "out"
    assert main(["analyze", "transfer", "--out", str(out), "--controls", "nope"]) == 2
    assert main(["analyze", "transfer", "--out", str(out), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown control(s) ['nope']" in err[0] and "study.seeds=1" in err[1]
    assert not out.exists()  # refused before anything is written


# --- statistics ------------------------------------------------------------------------------------------

def test_welch_interval_matches_scipy():
    from scipy import stats

    a, b = [0.31, 0.42, 0.18, 0.55, 0.29], [0.12, 0.09, 0.30, 0.21]
    w = C.welch_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert w["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (w["low"], w["high"]) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert np.isnan(C.welch_interval([0.3], b)["low"])


# --- diagnostics against independent computations -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(data):
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.model.in_channels, c.model.num_classes = 1, 4
    c.data.slice_shape = (32, 32)
    model = build_model(c.model)
    params = init_train_state(model, c).params
    images = np.asarray(data.sources["train"].images[:10], np.float32)
    labels = np.asarray(data.sources["train"].labels[:10], np.int32)
    return model, params, images, labels, c


def numpy_first_layer(params, images, groups: int = 2, eps: float = 1e-6) -> np.ndarray:
    """ReLU(GroupNorm(conv3×3 'SAME'(x))) of encoder/block_0, written out in numpy (float64)."""
    kernel = np.asarray(params["encoder"]["block_0"]["conv_0"]["kernel"], np.float64)  # (3, 3, 1, C)
    norm = params["encoder"]["block_0"]["norm_0"]["GroupNorm_0"]
    x = np.pad(np.asarray(images, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w = images.shape[:3]
    y = sum(np.einsum("nhwi,io->nhwo", x[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3) for j in range(3))
    g = y.reshape(n, h, w, groups, -1)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(y.shape) * np.asarray(norm["scale"]) + np.asarray(norm["bias"])
    return np.maximum(y, 0.0)


def test_activation_statistics_against_numpy(tiny):
    model, params, images, _, _ = tiny
    # a dead channel: bias −100 keeps channel 1 of the first layer off everywhere
    bias = np.array(params["encoder"]["block_0"]["norm_0"]["GroupNorm_0"]["bias"])
    bias[1] = -100.0
    params = jax.tree.map(lambda x: x, params)
    params["encoder"]["block_0"]["norm_0"]["GroupNorm_0"]["bias"] = bias
    stats = T.activation_statistics(model, {"params": params}, images, batch_size=4)  # 10 = 4 + 4 + 2 (padded)
    a = numpy_first_layer(params, images)
    first = stats["encoder/block_0/norm_0"]
    assert first["rms"] == pytest.approx(np.sqrt(np.mean(a**2)), rel=1e-4)
    assert first["zero_fraction"] == pytest.approx(np.mean(a <= 0), abs=2e-4)  # ties at 0 up to rounding
    assert first["dead_fraction"] == pytest.approx(np.mean(a.max(axis=(0, 1, 2)) <= 0)) == 0.25
    assert list(stats)[0] == "encoder/block_0/norm_0" and list(stats)[-2:] == ["decoder/block_0/norm_1", "head"]
    # every layer's numbers from flax's own captured outputs, in one unpadded pass
    logits, state = model.apply({"params": params}, images, mutable=["intermediates"], capture_intermediates=True)
    dec = np.asarray(state["intermediates"]["decoder"]["block_0"]["norm_1"]["__call__"][0])
    for name, a in (("decoder/block_0/norm_1", dec), ("head", np.asarray(logits))):
        assert stats[name]["rms"] == pytest.approx(np.sqrt(np.mean(a.astype(np.float64) ** 2)), rel=1e-5)
        assert stats[name]["channels"] == a.shape[-1]
    assert np.isnan(stats["head"]["dead_fraction"])


def test_gradient_norms_of_a_zero_head_in_closed_form(tiny):
    """With W = 0, b = 0 and the CE loss: p = 1/K everywhere, ∂L/∂b = 1/K − freq, ∂L/∂W = mean x (p − y)ᵀ,
    and no gradient reaches the decoder or encoder (∂L/∂features = W (p − y) = 0)."""
    model, params, images, labels, c = tiny
    params = zero_head(params)
    ce = c.train.copy_and_resolve_references()
    ce.loss = "ce"
    batches = [{"image": images[:5], "label": labels[:5]}, {"image": images[5:], "label": labels[5:]}]
    out = T.loss_and_gradient_norms(model, params, batches, ce)
    assert out["loss"] == pytest.approx(np.log(4), rel=1e-6)
    assert out["grad_norm"]["encoder"] == 0 and out["grad_norm"]["decoder"] == 0
    _, state = model.apply({"params": params}, images, mutable=["intermediates"])
    feats = np.asarray(state["intermediates"]["head_input"][0], np.float64)
    norms = []
    for sl in (slice(0, 5), slice(5, 10)):
        x = feats[sl].reshape(-1, feats.shape[-1])
        y = np.eye(4)[labels[sl].reshape(-1)]
        r = 0.25 - y
        g_w, g_b = x.T @ r / len(x), r.mean(axis=0)
        norms.append(np.sqrt(np.sum(g_w**2) + np.sum(g_b**2)))
    assert out["grad_norm"]["head"] == pytest.approx(np.mean(norms), rel=1e-4)
    assert out["param_norm"]["head"] == 0 and np.isnan(out["relative_grad_norm"]["head"])


def test_linear_probe_against_scipy_lbfgs():
    from scipy import optimize

    rng = np.random.default_rng(0)
    k, c = 3, 4
    y = rng.choice(k, size=600, p=[0.7, 0.2, 0.1])
    x = rng.normal(size=(600, c)) + np.eye(k, c)[y] * 1.5 + 3.0  # offset: standardisation must handle it
    probe = T.fit_linear_probe(x, y, k, l2=1e-2)
    z = (x - x.mean(0)) / x.std(0)
    w = np.bincount(y, minlength=k)
    w = 1.0 / (k * w[y])

    def objective(theta):
        kernel, bias = theta[:c * k].reshape(c, k), theta[c * k:]
        logits = z @ kernel + bias
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        nll = -np.log(p[np.arange(len(y)), y])
        r = (p - np.eye(k)[y]) * w[:, None]
        grad = np.concatenate([(z.T @ r + 1e-2 * kernel).ravel(), r.sum(0) + 1e-2 * bias])
        return np.sum(w * nll) + 0.005 * (np.sum(kernel**2) + np.sum(bias**2)), grad

    ref = optimize.minimize(objective, np.zeros(c * k + k), jac=True, method="L-BFGS-B", options={"gtol": 1e-12})
    np.testing.assert_allclose(probe.kernel, ref.x[:c * k].reshape(c, k), atol=1e-5)
    np.testing.assert_allclose(probe.bias, ref.x[c * k:], atol=1e-5)
    assert probe.objective == pytest.approx(ref.fun, rel=1e-9) and probe.gradient_norm < 1e-6
    kernel, bias = probe.raw_head()  # the same logits on the unstandardised features
    np.testing.assert_allclose(x @ kernel + bias, probe.logits(x), atol=1e-9)

    scores = T.probe_scores(probe, x, y, k)
    pred = np.argmax(probe.logits(x), 1)
    assert scores["accuracy"] == pytest.approx(np.mean(pred == y))
    assert scores["balanced_accuracy"] == pytest.approx(np.mean([np.mean(pred[y == j] == j) for j in range(k)]))
    dice = [2 * np.sum((pred == j) & (y == j)) / (np.sum(pred == j) + np.sum(y == j)) for j in (1, 2)]
    assert scores["mean_foreground_dice"] == pytest.approx(np.mean(dice))


def test_probe_null_and_pixel_features(tiny):
    """Features with no information give chance-level balanced accuracy; pixel_features keeps labels aligned."""
    model, params, images, labels, _ = tiny
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000)
    probe = T.fit_linear_probe(rng.normal(size=(3000, 4)), y, 3)
    held = rng.integers(0, 3, 3000)
    assert abs(T.probe_scores(probe, rng.normal(size=(3000, 4)), held, 3)["balanced_accuracy"] - 1 / 3) < 0.04
    x, y = T.pixel_features(model, {"params": params}, images, labels, "input", pixels_per_image=50, seed=3)
    assert x.shape == (500, 1) and set(np.unique(y)) <= set(range(4))
    x_all, y_all = T.pixel_features(model, {"params": params}, images, labels, "input")
    np.testing.assert_array_equal(y_all, labels.reshape(-1))
    np.testing.assert_array_equal(x_all[:, 0], images.reshape(-1))
    bottleneck, _ = T.pixel_features(model, {"params": params}, images, labels, "bottleneck")
    assert bottleneck.shape == (10 * 32 * 32, 8)
    first = bottleneck.reshape(10, 32, 32, 8)[0]
    assert np.array_equal(first[0, 0], first[1, 1])  # a 16² layer repeated 2× to the 32² grid
