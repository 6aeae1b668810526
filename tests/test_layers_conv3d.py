"""The CPU's fast 3D convolutions compute XLA's native 3D convolution: the 2D formulation
(jaxfcn.models.fast_ops.conv3d_as_2d) values and both gradients within float32 rounding, on odd shapes;
and both it (``fast_xla``) and oneDNN's (``fast``) inside the 3D U-Net's train step under vmap over seeds
(every K-seed strategy), with a frozen encoder, and sharded over two host devices."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxfcn.models import build_model, fast_ops, layers
from jaxfcn.train import seeds
from jaxfcn.train.step import init_train_state, make_train_step, seed_key


def relative_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("shape,kernel", [((2, 5, 6, 7, 3), (3, 3, 3, 3, 4)), ((1, 4, 4, 4, 1), (3, 3, 3, 1, 8)),
                                          ((2, 3, 5, 4, 6), (1, 1, 1, 6, 2)), ((1, 4, 6, 5, 2), (2, 3, 2, 2, 3))])
def test_conv3d_as_2d_equals_native_conv(shape, kernel):
    """Forward, input gradient and kernel gradient; depth ≠ height ≠ width, one input channel (the first
    layer), the 1×1×1 head and an even kernel depth."""
    ks = jax.random.split(jax.random.key(sum(shape)), 3)
    x, w = jax.random.normal(ks[0], shape), jax.random.normal(ks[1], kernel)
    dy = jax.random.normal(ks[2], shape[:-1] + kernel[-1:])

    def value_and_grads(conv):
        return jax.jit(lambda x, w: (lambda y, vjp: (y, *vjp(dy)))(*jax.vjp(conv, x, w)))(x, w)

    for ours, ref in zip(value_and_grads(fast_ops.conv3d_as_2d), value_and_grads(layers.conv)):
        assert ours.shape == ref.shape
        assert relative_error(ours, ref) < 2e-6  # float32 rounding of sums over ≤ 27·6 products


def tiny_3d_config(conv_impl="fast"):
    from jaxfcn.config import base_config

    c = base_config()
    c.model.spatial_dims = c.data.dims = 3
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.model.in_channels, c.model.num_classes, c.model.conv_impl = 1, 3, conv_impl
    c.data.patch_shape, c.data.augment = (8, 8, 8), False
    c.train.batch_size, c.train.lr_schedule = 2, "constant"
    return c


def batch_3d(config, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    shape = (config.train.batch_size, *config.data.patch_shape)
    return {"image": jax.random.normal(k1, shape + (1,)), "label": jax.random.randint(k2, shape, 0, 3)}


NATIVE_3D_CONV = "[b, 0, 1, 2, f]"  # the input layout of a 3D convolution in StableHLO's text


def test_fast_xla_3d_step_uses_conv3d_as_2d_on_cpu():
    """XLA's formulation in 3D really is the 2D one: the step holds no 3D convolution (plain does)."""
    config = tiny_3d_config()
    state = init_train_state(build_model(config.model), config)

    def step_text(conv_impl):
        model = build_model(tiny_3d_config(conv_impl).model)
        return make_train_step(model, config).lower(state, batch_3d(config)).as_text()

    assert NATIVE_3D_CONV not in step_text("fast_xla") and "stablehlo.convolution" in step_text("fast_xla")
    assert NATIVE_3D_CONV in step_text("plain")


@pytest.mark.parametrize("conv_impl", ["fast", "fast_xla"])
@pytest.mark.parametrize("frozen", [(), ("encoder",)])
def test_fast_3d_k_seed_strategies_equal_single_seed_steps(frozen, conv_impl):
    """vmap, per_seed and unrolled, each K = 2 seeds with a shared batch, against two single-seed steps of
    the same model: oneDNN's convolutions (``fast`` on the CPU; their per-seed vmap rules) and the 2D
    formulation (``fast_xla``: grouped convolutions under vmap)."""
    config = tiny_3d_config(conv_impl)
    model = build_model(config.model)
    batch = batch_3d(config)
    members = [init_train_state(model, config, frozen, rng=seed_key(s)) for s in (3, 5)]
    step = make_train_step(model, config, frozen)
    expected = [step(jax.device_get(m), batch)[0].params for m in members]
    for strategy in ("vmap", "per_seed", "unrolled"):
        stacked = jax.jit(seeds.stacked_step_function(model, config, frozen, strategy=strategy, shared_batch=True))
        state, metrics = stacked(seeds.stack_states(jax.device_get(members)), batch)
        assert metrics["loss"].shape == (2,)
        for n, params in enumerate(expected):
            got = seeds.unstack_state(state, n).params
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-5, err_msg=f"{strategy}, seed {n}")
        if frozen:  # the frozen encoder did not move
            for a, b in zip(jax.tree.leaves(seeds.unstack_state(state, 0).params["encoder"]),
                            jax.tree.leaves(members[0].params["encoder"])):
                np.testing.assert_array_equal(a, b)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[2])
    from test_layers_conv3d import batch_3d, tiny_3d_config
    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, train_step_function
    assert jax.device_count() == 2
    config = tiny_3d_config(sys.argv[3])
    # SGD: an update is lr × gradient, so a gradient off by a factor N moves the parameters N× as far (Adam's
    # first update is ±lr whatever the gradient, and turns rounding-level differences into sign flips).
    config.train.optimizer, config.train.learning_rate = "sgd", 0.1
    model = build_model(config.model)
    frozen = ("encoder",)
    step = train_step_function(model, config, frozen)
    state, batch = init_train_state(model, config, frozen), batch_3d(config)
    one = jax.jit(step)(jax.device_get(state), batch)[0].params
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))  # as jaxfcn.train.parallel
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    replicated = jax.device_put(jax.device_get(state), NamedSharding(mesh, P()))
    two = jax.jit(step)(replicated, sharded_batch)[0].params
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(state.params)))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)))
    text = jax.jit(step).lower(replicated, sharded_batch).as_text()
    json.dump({"relative": diff / moved, "batch_shards": len(sharded_batch["image"].sharding.device_set),
               "conv3d": "[b, 0, 1, 2, f]" in text}, open(sys.argv[1], "w"))
""")


@pytest.mark.parametrize("conv_impl", ["fast", "fast_xla"])
def test_fast_3d_step_sharded_over_two_devices_equals_one_device(tmp_path, conv_impl):
    out = tmp_path / "out.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", SHARDED, str(out), os.path.dirname(os.path.abspath(__file__)), conv_impl],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["batch_shards"] == 2 and not result["conv3d"]
    assert result["relative"] < 1e-5, result  # float32 summation order only (a doubled gradient gives ~1)
