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
