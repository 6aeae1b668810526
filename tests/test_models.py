import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfcn.models import UNet, layer_names
from jaxfcn.models.layers import UpConv, depth_to_space


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upconv_equals_conv_transpose_with_copied_weights(spatial_dims):
    """Dense + depth-to-space is exactly a 2^d-kernel, stride-2 transposed convolution."""
    cin, cout = 3, 5
    shape = (2,) + (4,) * spatial_dims + (cin,)
    x = jax.random.normal(jax.random.key(0), shape)
    up = UpConv(cout, spatial_dims)
    v = up.init(jax.random.key(1), x)
    v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)  # non-zero bias
    ours = up.apply(v, x)

    # transpose_kernel=True is the gradient-of-convolution convention (PyTorch's ConvTranspose); flax's
    # default (False) correlates the dilated input instead, i.e. uses the spatially flipped kernel.
    kernel = v["params"]["kernel"].reshape(cin, *([2] * spatial_dims), cout)
    kernel = jnp.moveaxis(kernel, 0, spatial_dims + 1)  # (2,…,2, Cout, Cin)
    for transpose_kernel, k in [(True, kernel), (False, jnp.flip(jnp.swapaxes(kernel, -1, -2), range(spatial_dims)))]:
        ct = nn.ConvTranspose(cout, (2,) * spatial_dims, strides=(2,) * spatial_dims, padding="VALID",
                              transpose_kernel=transpose_kernel)
        theirs = ct.apply({"params": {"kernel": k, "bias": v["params"]["bias"]}}, x)
        assert ours.shape == theirs.shape == (2,) + (8,) * spatial_dims + (cout,)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_depth_to_space_places_offsets():
    x = jnp.arange(4.0).reshape(1, 1, 1, 4)  # one pixel, channels = offsets (a, b) with C=1
    y = depth_to_space(x, 2)
    np.testing.assert_array_equal(y[0, :, :, 0], [[0.0, 1.0], [2.0, 3.0]])


@pytest.mark.parametrize("norm", ["group", "instance", "none", "batch"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_parts_shapes_and_intermediates(norm, spatial_dims):
    shape = (2,) + (16,) * spatial_dims + (2,)
    m = UNet(num_classes=3, spatial_dims=spatial_dims, depth=3, base_width=4, norm=norm, norm_groups=2)
    v = m.init(jax.random.key(0), jnp.zeros(shape))
    assert list(v["params"]) == ["encoder", "decoder", "head"]
    # the bottleneck (deepest level) belongs to the encoder
    assert "block_2" in v["params"]["encoder"] and "block_2" not in v["params"]["decoder"]
    y, state = m.apply(v, jnp.ones(shape), mutable=["intermediates", "batch_stats"])
    assert y.shape == shape[:-1] + (3,) and y.dtype == jnp.float32
    assert list(state["intermediates"]) == layer_names(3)
    assert state["intermediates"]["bottleneck"][0].shape == (2,) + (4,) * spatial_dims + (16,)


def test_im2col_conv_matches_xla_conv():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    ref = UNet(num_classes=3, depth=3, base_width=4, norm_groups=2)
    v = ref.init(jax.random.key(0), x)
    alt = ref.clone(conv_impl="im2col")
    np.testing.assert_allclose(alt.apply(v, x), ref.apply(v, x), rtol=1e-4, atol=1e-4)


def test_he_normal_init_variance():
    m = UNet(num_classes=2, depth=2, base_width=64)
    v = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)))
    k = v["params"]["encoder"]["block_1"]["conv_0"]["kernel"]  # 3·3·64 fan-in
    fan_in = 3 * 3 * 64
    assert abs(float(jnp.var(k)) * fan_in / 2.0 - 1.0) < 0.05


@pytest.mark.parametrize("spatial_dims,conv_impl", [(2, "plain"), (2, "fast"), (3, "fast")])
def test_conv_of_parts_equals_conv_of_their_concatenation(spatial_dims, conv_impl):
    """ConvND on (a, b) — the decoder's split skip — computes the convolution of concat(a, b) with the same
    kernel: values and the gradients for a, b and the kernel, within float32 rounding."""
    from jaxfcn.models import fast_ops
    from jaxfcn.models.layers import ConvND

    ks = jax.random.split(jax.random.key(spatial_dims), 3)
    shape = (2,) + (6,) * spatial_dims
    a, b = jax.random.normal(ks[0], shape + (3,)), jax.random.normal(ks[1], shape + (5,))
    conv = ConvND(4, (3,) * spatial_dims, use_bias=True, kernels=fast_ops.kernels(conv_impl))
    variables = conv.init(ks[2], (a, b))
    assert variables["params"]["kernel"].shape == (3,) * spatial_dims + (8, 4)

    def loss(params, a, b, split):
        y = conv.apply({"params": params}, (a, b) if split else jnp.concatenate([a, b], -1))
        return jnp.sum(y * jnp.cos(y)), y

    for got, want in zip(jax.grad(loss, (0, 1, 2), has_aux=True)(variables["params"], a, b, True),
                         jax.grad(loss, (0, 1, 2), has_aux=True)(variables["params"], a, b, False)):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def test_frozen_encoder_step_computes_no_skip_gradient():
    """With the encoder frozen the skips are constants: splitting them off the decoder's first convolutions
    removes the input gradient of their channels, so the decoder's gradient costs fewer FLOPs (XLA's count),
    by at least half of those convolutions' concatenated input gradients."""
    from jaxfcn.models.unet import Decoder
    from jaxfcn.models import fast_ops

    widths, shape = [4, 8, 16], (2, 16, 16)
    skips = [jax.random.normal(jax.random.key(i), (shape[0], *(s // 2**i for s in shape[1:]), w))
             for i, w in enumerate(widths)]
    common = dict(widths=widths, spatial_dims=2, convs=2, kernel_size=3, norm="group", norm_groups=2,
                  activation="relu", kernel_init="he_normal", kernels=fast_ops.kernels("plain"), dtype=jnp.float32)

    def gradient_flops(split_skip):
        decoder = Decoder(**common, split_skip=split_skip)
        params = decoder.init(jax.random.key(9), skips, True)["params"]
        grad = jax.jit(jax.grad(lambda p: sum(jnp.sum(o**2) for o in decoder.apply({"params": p}, skips, True))))
        return grad.lower(params).cost_analysis()["flops"]

    # The input gradient of the skip half of each level's first convolution: 2·C_skip·C_out multiply-adds
    # per (voxel, tap) pair inside the image (XLA counts no padding: 3n − 2 such pairs per axis of length n).
    skip_input_grad = sum(2 * w * w * shape[0] * (3 * (shape[1] >> i) - 2) * (3 * (shape[2] >> i) - 2)
                          for i, w in enumerate(widths[:-1]))
    assert gradient_flops(False) - gradient_flops(True) >= 0.9 * skip_input_grad


def test_unet_skip_joins_compute_one_function():
    """skip_join "concat", "split" and "auto" give the same logits from the same parameters; others are refused."""
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 1))
    model = UNet(num_classes=3, depth=3, base_width=4, norm_groups=2)
    variables = model.init(jax.random.key(5), x)
    logits = {join: model.clone(skip_join=join).apply(variables, x) for join in ("auto", "concat", "split")}
    np.testing.assert_allclose(logits["split"], logits["concat"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["auto"], logits["concat"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="skip_join"):
        model.clone(skip_join="add").apply(variables, x)
