"""Every formulation of jaxfcn.models.fast_ops computes the plain layers' function: convolutions (values and
gradients, vmapped or not), group norm (the plain one is flax's GroupNorm; the fast one has a hand-written
gradient), max-pool (the plain one is flax's; the fast one has a one-pass gradient), and the whole U-Net."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfcn.models import UNet, fast_ops, layers
from jaxfcn.models.layers import Norm


def close(a, b, rel=1e-5):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(1.0, float(np.abs(b).max())))


def conv_inputs(spatial, kernel, seeds=None, cin=3, cout=5, n=2, size=6):
    ks = jax.random.split(jax.random.key(spatial * 10 + kernel), 3)
    lead = () if seeds is None else (seeds,)
    x = jax.random.normal(ks[0], lead + (n,) + (size,) * spatial + (cin,))
    w = jax.random.normal(ks[1], lead + (kernel,) * spatial + (cin, cout))
    dy = jax.random.normal(ks[2], lead + (n,) + (size,) * spatial + (cout,))
    return x, w, dy


def value_and_grads(conv, x, w, dy):
    y, vjp = jax.vjp(conv, x, w)
    return (y, *vjp(dy))


def jitted_value_and_grads(conv):
    """One compiled program per case (op-by-op dispatch would compile every primitive separately)."""
    return jax.jit(lambda x, w, dy: value_and_grads(conv, x, w, dy))


FAST_IMPLS = [name for name in fast_ops.CONV_IMPLS if name != "plain"]


def test_kernels_switch():
    assert fast_ops.kernels("plain") is layers.PLAIN
    assert set(fast_ops.CONV_IMPLS) == {"plain", "fast", "fast_xla", "per_seed", "im2col"}
    with pytest.raises(ValueError, match="unknown conv_impl 'xl'"):
        fast_ops.kernels("xl")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("spatial,kernel", [(2, 3), (2, 2), (3, 3), (3, 2), (2, 1), (3, 1)])
def test_conv_formulation_equals_plain(impl, spatial, kernel):
    """Even kernels too: 'SAME' pads (k-1)//2 low and k//2 high in every formulation."""
    x, w, dy = conv_inputs(spatial, kernel)
    ours = jitted_value_and_grads(fast_ops.kernels(impl).conv)(x, w, dy)
    for a, b in zip(ours, jitted_value_and_grads(layers.conv)(x, w, dy)):
        close(a, b)


# which arguments carry the seed axis: both (inside the network), the kernel only (first layer, shared
# batch), the input only (shared kernel, e.g. a frozen part vmapped over data)
@pytest.mark.parametrize("x_axis,w_axis", [(0, 0), (None, 0), (0, None)])
@pytest.mark.parametrize("impl", fast_ops.CONV_IMPLS)
def test_vmapped_conv_formulation_equals_per_seed_loop(impl, x_axis, w_axis):
    seeds = 3
    x, w, dy = conv_inputs(2, 3, seeds=seeds)
    x = x if x_axis == 0 else x[0]
    w = w if w_axis == 0 else w[0]
    conv = fast_ops.kernels(impl).conv
    batched = jax.jit(jax.vmap(lambda x, w, dy: value_and_grads(conv, x, w, dy), (x_axis, w_axis, 0)))(x, w, dy)
    reference = jitted_value_and_grads(layers.conv)
    for i in range(seeds):
        xi = x[i] if x_axis == 0 else x
        wi = w[i] if w_axis == 0 else w
        for ours, ref in zip(batched, reference(xi, wi, dy[i])):
            close(ours[i], ref)


def test_per_seed_conv_nested_vmap_and_jit():
    x, w, dy = conv_inputs(2, 3, seeds=3)
    conv = fast_ops.per_seed_conv
    twice = jax.jit(jax.vmap(jax.vmap(lambda x, w, dy: value_and_grads(conv, x, w, dy))))
    stacked = lambda a: jnp.stack([a, 2 * a])  # noqa: E731
    outs = twice(stacked(x), stacked(w), stacked(dy))
    reference = jax.jit(jax.vmap(lambda x, w, dy: value_and_grads(layers.conv, x, w, dy)))
    for ours, ref in zip(outs, reference(2 * x, 2 * w, 2 * dy)):
        close(ours[1], ref)


@pytest.mark.parametrize("impl,spatial_dims,norm", [("fast", 2, "group"), ("fast", 3, "group"), ("fast", 2, "batch"),
                                                    ("per_seed", 2, "instance"), ("per_seed", 3, "group"),
                                                    ("im2col", 2, "group")])
def test_unet_formulation_same_function(impl, spatial_dims, norm):
    x = jax.random.normal(jax.random.key(1), (2,) + (8,) * spatial_dims + (1,))
    ref = UNet(num_classes=3, spatial_dims=spatial_dims, depth=2, base_width=4, norm=norm, norm_groups=2,
               conv_impl="plain")
    v = ref.init(jax.random.key(0), x)
    alt = ref.clone(conv_impl=impl)

    def value_and_grad(model):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(model.apply(v, x) ** 2)))(v)

    (y, g), (y_ref, g_ref) = value_and_grad(alt), value_and_grad(ref)
    close(y, y_ref)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        close(a, b, rel=1e-4)


@pytest.mark.parametrize("kind,shape,groups", [("group", (2, 8, 8, 8), 4), ("group", (3, 6, 6, 16), 8),
                                               ("group", (2, 4, 4, 4, 6), 3), ("instance", (2, 6, 6, 5), 8)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_group_norm_equals_flax(impl, kind, shape, groups, dtype):
    # mean 2, std 3: a non-trivial mean exercises the E[x²] - E[x]² variance as flax computes it
    x = (jax.random.normal(jax.random.key(0), shape) * 3 + 2).astype(dtype)
    ours = Norm(kind, groups, dtype=dtype, kernels=fast_ops.kernels(impl))
    v = ours.init(jax.random.key(1), x, False)
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), v)
    assert set(v["params"]["GroupNorm_0"]) == {"scale", "bias"}
    theirs = (nn.GroupNorm(num_groups=groups, dtype=dtype) if kind == "group"
              else nn.GroupNorm(num_groups=None, group_size=1, dtype=dtype))
    flax_vars = {"params": v["params"]["GroupNorm_0"]}
    y, y_ref = jax.jit(lambda v, x: ours.apply(v, x, False))(v, x), jax.jit(theirs.apply)(flax_vars, x)
    assert y.dtype == y_ref.dtype == dtype
    rel = 1e-5 if dtype == jnp.float32 else 1e-2
    close(y, y_ref, rel)

    def loss(apply, variables, x):
        return jnp.sum(apply(variables, x).astype(jnp.float32) ** 3)

    g = jax.jit(jax.grad(lambda v, x: loss(lambda v, x: ours.apply(v, x, False), v, x), (0, 1)))(v, x)
    g_ref = jax.jit(jax.grad(lambda v, x: loss(theirs.apply, v, x), (0, 1)))(flax_vars, x)
    close(g[1], g_ref[1], 10 * rel)
    for a, b in zip(jax.tree.leaves(g[0]), jax.tree.leaves(g_ref[0])):
        close(a, b, 10 * rel)


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (2, 4, 6, 8, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_fast_max_pool_equals_plain_values_and_gradient(shape, ties):
    """Forward and gradient bitwise equal to the plain (flax, reduce_window) max-pool, whose
    select-and-scatter sends each block's gradient to its first maximum; ``ties`` makes blocks with repeated
    maxima (rounded, ReLU-clipped values, as in the U-Net), where an even split would differ."""
    x = jax.random.normal(jax.random.key(len(shape)), shape)
    if ties:
        x = jnp.maximum(jnp.round(2 * x) / 2, 0.0)
    dy = jax.random.normal(jax.random.key(7), jax.eval_shape(layers.max_pool, x).shape)
    y, vjp = jax.vjp(fast_ops.max_pool, x)
    ref, ref_vjp = jax.vjp(layers.max_pool, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(vjp(dy)[0]), np.asarray(ref_vjp(dy)[0]))
    if ties:  # the case is real: some block holds a repeated maximum
        blocks = np.asarray(x).reshape(shape[0], *[d for s in shape[1:-1] for d in (s // 2, 2)], shape[-1])
        offsets = tuple(2 + 2 * i for i in range(len(shape) - 2))
        is_max = blocks == np.expand_dims(np.asarray(y), offsets)
        assert (is_max.sum(axis=offsets) > 1).any()


@pytest.mark.parametrize("pool", [layers.max_pool, fast_ops.max_pool])
def test_max_pool_rejects_indivisible_shape(pool):
    with pytest.raises(ValueError, match="not divisible"):
        pool(jnp.zeros((1, 6, 5, 2)))


@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 8), 4), ((2, 3, 4, 5, 6), 3), ((3, 4, 4, 4), 4)])
@pytest.mark.parametrize("relu", [False, True])
def test_fast_group_norm_gradient_equals_autodiff_of_flax(shape, groups, relu):
    """The hand-written VJP (x, scale, bias) against JAX differentiating flax.linen.GroupNorm (+ ReLU), in
    float64 on the reference side so the comparison is not limited by the reference's own rounding."""
    ks = jax.random.split(jax.random.key(sum(shape)), 4)
    x = 2.0 * jax.random.normal(ks[0], shape) + 0.3
    scale = 1.0 + 0.2 * jax.random.normal(ks[1], shape[-1:])
    bias = 0.2 * jax.random.normal(ks[2], shape[-1:])
    dy = jax.random.normal(ks[3], shape)

    def ours(x, scale, bias):
        return jnp.sum(fast_ops.group_norm(x, scale, bias, groups, relu=relu) * dy)

    def theirs(x, scale, bias):
        y = nn.GroupNorm(num_groups=groups, dtype=jnp.float64, param_dtype=jnp.float64).apply(
            {"params": {"scale": scale, "bias": bias}}, x)
        return jnp.sum((jax.nn.relu(y) if relu else y) * dy.astype(jnp.float64))

    with jax.enable_x64():
        expected = jax.grad(theirs, (0, 1, 2))(*(np.asarray(a, np.float64) for a in (x, scale, bias)))
    got = jax.grad(ours, (0, 1, 2))(x, scale, bias)
    for g, e in zip(got, expected):
        close(g, e, rel=2e-5)
