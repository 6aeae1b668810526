"""The PyTorch twin computes the Flax U-Net's function; conversion is exact both ways."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxfcn.config import base_config  # noqa: E402
from jaxfcn.models import build_model, layer_names  # noqa: E402
from jaxfcn.interop.torch import (TorchUNet, flax_to_torch, group_count, torch_to_flax,  # noqa: E402
                                  torch_to_flax_variables)

warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")

# (spatial_dims, norm, depth, base_width, multiplier, convs, kernel, activation, groups, in_ch, classes, side)
# base width 6 with 4 groups exercises the group-count rule (6 → 3 groups, 12 → 4).
CONFIGS = [
    (2, "group", 3, 6, 2, 2, 3, "relu", 4, 1, 3, 16),
    (2, "instance", 2, 4, 3, 1, 5, "gelu", 8, 2, 2, 12),
    (2, "batch", 3, 4, 2, 2, 3, "leaky_relu", 8, 1, 4, 16),
    (2, "none", 2, 4, 2, 3, 4, "silu", 8, 3, 2, 8),
    (3, "group", 2, 4, 2, 2, 3, "elu", 2, 1, 3, 8),
    (3, "batch", 2, 4, 2, 1, 3, "relu", 8, 2, 2, 8),
    (3, "none", 2, 2, 2, 2, 1, "tanh", 8, 1, 2, 4),
]
IDS = [f"{c[0]}d-{c[1]}-d{c[2]}-{c[7]}-k{c[6]}" for c in CONFIGS]


def make_config(spatial_dims, norm, depth, width, mult, convs, kernel, act, groups, cin, classes, side):
    c = base_config()
    m = c.model
    m.spatial_dims, m.norm, m.depth, m.base_width, m.width_multiplier = spatial_dims, norm, depth, width, mult
    m.convs_per_block, m.kernel_size, m.activation, m.norm_groups = convs, kernel, act, groups
    m.in_channels, m.num_classes = cin, classes
    return c, (2,) + (side,) * spatial_dims + (cin,)


def random_variables(model, shape, seed=0):
    """Variables with the model's tree and shapes, every leaf random (no trivial bias/scale/statistic).

    Drawn with numpy: each jax.random shape is a separate XLA compilation, seconds each on a busy CPU.
    """
    rng = np.random.default_rng(seed)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))

    def draw(s):  # kernels ~ He scale (keeps activations O(1) without norms), vectors ~ N(0, 0.5²)
        std = 0.5 if len(s.shape) == 1 else np.sqrt(2.0 / np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, std, s.shape), jnp.float32)

    v = {c: jax.tree.map(draw, t) for c, t in template.items()}
    if "batch_stats" in v:  # variances must stay positive
        v["batch_stats"] = jax.tree.map(lambda a: jnp.abs(a) + 0.5, v["batch_stats"])
    return v


def random_input(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def to_torch(x):
    return torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())


def to_jax_layout(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("spec", CONFIGS, ids=IDS)
def test_forward_features_and_gradients_match(spec):
    """Training-mode logits and every sown feature map (rel. err ≤ 1e-5), and d(Σ logits·r)/dθ per
    parameter (≤ 1e-4). Batch norm normalises with batch statistics here; eval mode is tested below."""
    config, shape = make_config(*spec)
    model = build_model(config.model)
    v = random_variables(model, shape)
    # Small inputs: the first norm sees variance ~1e-4, so a wrong epsilon (PyTorch's 1e-5) would show.
    x = 0.01 * random_input(shape, 7)
    r = random_input(shape[:-1] + (config.model.num_classes,), 8)

    def loss(params):
        out, state = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats", "intermediates"])
        return jnp.sum(out * r), (out, state["intermediates"])

    # One jitted program per config: op-by-op dispatch would compile every op separately (slow on CPU).
    (_, (y, feats_j)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])

    net = TorchUNet(config).train()
    net.load_state_dict(flax_to_torch(v, config))
    yt, feats_t = net.forward_features(to_torch(x))
    (yt * to_torch(r)).sum().backward()
    assert tuple(yt.shape) == (shape[0], config.model.num_classes) + shape[1:-1]
    assert rel_err(to_jax_layout(yt), y) <= 1e-5
    assert list(feats_t) == layer_names(config.model.depth)
    for name in feats_t:
        assert rel_err(to_jax_layout(feats_t[name]), feats_j[name][0]) <= 1e-5, name

    buffers = {k: b for k, b in net.named_buffers()}  # conversion expects a complete state_dict
    tgrads = torch_to_flax({k: p.grad for k, p in net.named_parameters()} | buffers, config)
    flat_j = dict(jax.tree_util.tree_leaves_with_path(grads))
    flat_t = dict(jax.tree_util.tree_leaves_with_path(tgrads))
    assert flat_j.keys() == flat_t.keys()
    for path in flat_j:
        assert rel_err(flat_t[path], flat_j[path]) <= 1e-4, jax.tree_util.keystr(path)


@pytest.mark.parametrize("spec", CONFIGS, ids=IDS)
def test_round_trips_are_bitwise(spec):
    config, shape = make_config(*spec)
    v = random_variables(build_model(config.model), shape)
    back = torch_to_flax_variables(flax_to_torch(v, config), config)
    assert jax.tree.structure(back) == jax.tree.structure(dict(v))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, dict(v))
    # and torch → flax → torch
    sd = TorchUNet(config).state_dict()
    again = flax_to_torch(torch_to_flax_variables(sd, config), config)
    assert list(again) == list(sd)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(again[k], sd[k]), k


def test_batch_norm_running_statistics_follow_flax():
    """Flax momentum 0.9 and biased running variance, over two training steps, then eval mode."""
    config, shape = make_config(2, "batch", 2, 4, 2, 1, 3, "relu", 8, 1, 2, 8)
    model = build_model(config.model)
    v = random_variables(model, shape)
    net = TorchUNet(config)
    net.load_state_dict(flax_to_torch(v, config))
    net.train()
    train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    for seed in (1, 2):
        x = random_input(shape, seed)
        _, new = train_apply(v, x)
        v = {**v, **new}
        net(to_torch(x))
    ours = torch_to_flax_variables(net.state_dict(), config)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, v["batch_stats"])
    x = random_input(shape, 3)
    with torch.no_grad():
        assert rel_err(to_jax_layout(net.eval()(to_torch(x))), model.apply(v, x, train=False)) <= 1e-5


def test_group_count_rule_matches_flax_model():
    config, shape = make_config(2, "group", 2, 6, 2, 1, 3, "relu", 4, 1, 2, 8)
    params = random_variables(build_model(config.model), shape)["params"]
    assert group_count(6, 4) == 3 and group_count(12, 4) == 4 and group_count(4, 8) == 4
    net = TorchUNet(config)
    assert net.encoder.block_0.norm_0.num_groups == 3
    assert net.encoder.block_1.norm_0.num_groups == 4
    assert params["encoder"]["block_0"]["conv_0"]["kernel"].shape == (3, 3, 1, 6)


def test_torch_init_has_flax_fan_statistics():
    """he_normal with Flax fans: Var(kernel)·fan_in/2 ≈ 1 for convs and for the up-convolution."""
    config, _ = make_config(2, "group", 2, 64, 2, 1, 3, "relu", 8, 16, 2, 8)
    torch.manual_seed(0)
    net = TorchUNet(config)
    w = net.encoder.block_1.conv_0.weight
    assert abs(float(w.var()) * (9 * 64) / 2 - 1) < 0.05
    up = net.decoder.up_0.weight  # fan_in = Cin = 128
    assert abs(float(up.var()) * 128 / 2 - 1) < 0.05
    assert float(w.abs().max()) <= 2 * np.sqrt(2 / (9 * 64)) / 0.8796 + 1e-6  # truncated at 2σ


def test_mismatched_state_dict_is_refused_with_names():
    config, _ = make_config(2, "group", 2, 4, 2, 1, 3, "relu", 8, 1, 2, 8)
    sd = TorchUNet(config).state_dict()
    other, _ = make_config(2, "group", 2, 8, 2, 1, 3, "relu", 8, 1, 2, 8)
    with pytest.raises(ValueError, match="shape"):
        torch_to_flax(sd, other)
    del sd["head.bias"]
    with pytest.raises(ValueError, match="missing.*head.bias"):
        torch_to_flax(sd, config)
    wrapped = {"state_dict": {"module." + k: t for k, t in TorchUNet(config).state_dict().items()}}
    assert set(torch_to_flax(wrapped, config)) == {"encoder", "decoder", "head"}


def test_frozen_batch_norm_part_runs_as_at_evaluation():
    """freeze(): a frozen encoder's running statistics stay bitwise through a training step, it computes
    in training the function it computes at evaluation (also after a later net.train()), the decoder's
    statistics follow the data, and the twin still matches ``UNet(frozen_parts=("encoder",))``."""
    from jaxfcn.interop.torch import freeze

    config, shape = make_config(2, "batch", 2, 4, 2, 1, 3, "relu", 8, 1, 2, 8)
    model = build_model(config.model)
    v = random_variables(model, shape)
    net = TorchUNet(config)
    net.load_state_dict(flax_to_torch(v, config))
    trainable = freeze(net.train(), ("encoder",))
    net.train()  # e.g. at the start of an epoch: must not unfreeze the encoder's statistics
    before = {k: b.clone() for k, b in net.named_buffers()}
    x, x2 = random_input(shape, 1), random_input(shape, 2)

    optimizer = torch.optim.SGD(trainable, lr=0.1)
    logits = net(to_torch(x))
    logits.square().mean().backward()
    optimizer.step()
    after = dict(net.named_buffers())
    for key in before:
        if key.startswith("encoder."):
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["decoder.block_0.norm_0.running_mean"], before["decoder.block_0.norm_0.running_mean"])
    assert all(p.grad is None for p in net.encoder.parameters())

    with torch.no_grad():
        train_time = net.encoder(to_torch(x2))
        eval_time = net.eval().encoder(to_torch(x2))
    for a, b in zip(train_time, eval_time, strict=True):
        assert torch.equal(a, b)

    # the same training forward in JAX from the same variables (one jitted program: op by op compiles slowly)
    y, new = jax.jit(lambda v, x: model.apply(v, x, train=True, frozen_parts=("encoder",),
                                              mutable=["batch_stats"]))(v, x)
    assert rel_err(to_jax_layout(logits.detach()), y) <= 1e-5
    ours = torch_to_flax_variables(net.state_dict(), config)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, new["batch_stats"])
