"""Faster formulations of the U-Net's layer functions: the one place where speed variants live.

Every formulation computes the function of the plain layers in :mod:`jaxfcn.models.layers` (values and
gradients, up to float32 rounding; tested against them), with the same parameters. ``config.model.conv_impl``
names one of :data:`CONV_IMPLS`; :func:`kernels` gives the :class:`~jaxfcn.models.layers.Kernels` the model
computes with:

- ``plain``: the textbook layers (``lax`` convolution, flax's group norm then ReLU, flax's max-pool).
- ``fast`` (default): the formulations that measured fastest (``benchmarks/README.md``):

  * group norm with the ReLU fused and a hand-written gradient (:func:`group_norm`);
  * max-pool as a reshape and a max, with a one-pass gradient (:func:`max_pool`);
  * on the CPU, float32 convolutions and up-convolutions as oneDNN custom calls (:data:`onednn_conv`,
    :data:`onednn_up_conv`, :mod:`jaxfcn.native.onednn`), the kernels PyTorch's CPU convolutions use;
    where they cannot be built, or for other dtypes, XLA's own as in ``fast_xla``.
- ``fast_xla``: ``fast`` with XLA's own convolutions (:func:`xla_fast_conv`, and the up-convolution as a
  matmul, :func:`jaxfcn.models.layers.up_conv`): on the CPU, 3D convolutions
  as 2D convolutions over the depth axis (:func:`conv3d_as_2d`), since XLA:CPU's native 3D convolution is
  several times slower than the 2D convolutions that compute the same sums.
- ``per_seed``: ``fast`` with convolutions whose ``vmap`` over per-seed kernels is one convolution per seed
  instead of a grouped convolution (:func:`per_seed_conv`; the K-seed strategy of the same name). The
  oneDNN convolutions always batch that way.
- ``im2col``: ``fast`` with convolutions as patch extraction and one matmul (:func:`im2col_conv`), which
  vmaps into a batched matmul.

Example::

    from jaxfcn.models import fast_ops
    ops = fast_ops.kernels("fast")
    y = ops.conv(x, kernel)  # = jaxfcn.models.layers.conv(x, kernel)
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxfcn.models import layers
from jaxfcn.models.layers import Kernels
from jaxfcn.native import onednn


# --- convolution ---------------------------------------------------------------------------------------

def _conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _depth_into_input_channels(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3D conv as one 2D conv over the (N·D) depth planes, each plane's input the kd depth-shifted planes
    stacked on channels: kernel (kd, kh, kw, C, O) read as (kh, kw, kd·C, O)."""
    n, d, h, w, c = x.shape
    kd = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), layers.same_padding(kd), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate([xp[:, k:k + d] for k in range(kd)], axis=-1).reshape(n * d, h, w, kd * c)
    folded = jnp.moveaxis(kernel, 0, 2).reshape(*kernel.shape[1:3], kd * c, kernel.shape[-1])
    return _conv2d(stacked, folded).reshape(n, d, h, w, -1)


def _depth_into_output_channels(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3D conv as one 2D conv of every depth plane with all kd kernel slices (kd·O output channels), then
    the sum of the kd depth-shifted output blocks: ``y[d] = Σ_k z_k[d + k − pad]``."""
    n, d, h, w, c = x.shape
    kd, out = kernel.shape[0], kernel.shape[-1]
    folded = jnp.moveaxis(kernel, 0, 3).reshape(*kernel.shape[1:3], c, kd * out)
    z = _conv2d(x.reshape(n * d, h, w, c), folded).reshape(n, d, h, w, kd, out)
    # Each block placed by a slice and a pad of that slice (not a slice of one padded z): XLA fuses these
    # pads into the sum, where a padded copy of z would be written out first.
    low = layers.same_padding(kd)[0]
    terms = []
    for k in range(kd):
        shift = k - low  # y[i] += z_k[i + shift] where 0 <= i + shift < d
        block = z[:, max(shift, 0):d + min(shift, 0), :, :, k]
        terms.append(jnp.pad(block, ((0, 0), (max(-shift, 0), max(shift, 0)), (0, 0), (0, 0), (0, 0))))
    return sum(terms)


@jax.custom_vjp
def conv3d_as_2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`jaxfcn.models.layers.conv` for 3D inputs, computed with 2D convolutions over the depth planes.

    A 3D convolution is a sum over the kernel's depth offsets k of 2D convolutions of the input's depth
    plane ``d + k − pad`` with the kernel slice ``k``. Each of the three products is written as the one 2D
    convolution XLA:CPU runs fastest (``benchmarks/README.md``, 3D): the forward and the kernel gradient
    fold the kernel depth into the output channels (one conv, kd·O channels, then a shifted sum); the input
    gradient folds it into the input channels (the transpose of one conv with kd·C input channels).
    """
    return _depth_into_output_channels(x, kernel)


def _conv3d_as_2d_fwd(x, kernel):
    return _depth_into_output_channels(x, kernel), (x, kernel)


def _conv3d_as_2d_bwd(residuals, dy):
    x, kernel = residuals
    dx, = jax.linear_transpose(lambda x: _depth_into_input_channels(x, kernel), x)(dy)
    dk, = jax.linear_transpose(lambda k: _depth_into_output_channels(x, k), kernel)(dy)
    return dx, dk


conv3d_as_2d.defvjp(_conv3d_as_2d_fwd, _conv3d_as_2d_bwd)


def xla_fast_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`jaxfcn.models.layers.conv` with XLA's own convolutions in the formulation that measured fastest
    for its rank and backend: :func:`conv3d_as_2d` for 3D on the CPU, ``lax``'s convolution otherwise."""
    if x.ndim == 5 and jax.default_backend() == "cpu":
        return conv3d_as_2d(x, kernel)
    return layers.conv(x, kernel)


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution as patch extraction followed by one matmul.

    Under ``vmap`` over the kernel it stays a batched matmul, whereas a vmapped XLA convolution becomes a
    grouped convolution. Materialising the patches makes it memory-bound.
    """
    spatial = x.ndim - 2
    k = kernel.shape[:spatial]
    pads = [(0, 0)] + [layers.same_padding(ki) for ki in k] + [(0, 0)]
    xp = jnp.pad(x, pads)
    shape = x.shape[1:-1]
    # The shifted views in kernel-offset (row-major) order, matching kernel.reshape(-1, cin, cout).
    views = []
    for offset in itertools.product(*(range(ki) for ki in k)):
        sl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, shape)) + (slice(None),)
        views.append(xp[sl])
    patches = jnp.stack(views, axis=-2)  # (N, *spatial, K, Cin)
    patches = patches.reshape(*patches.shape[:-2], -1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


# Convolutions with per-seed vmap rules. Under vmap over per-seed kernels JAX turns a convolution into a
# grouped one (feature_group_count = K), which XLA:CPU runs several times slower per seed than K plain
# convolutions, and a custom call has no batching rule at all. Here per-seed kernels give one plain
# convolution per seed; a shared input with per-seed kernels (the first layer when seeds share batches) gives
# one convolution with K·Cout output channels; a per-seed input with a shared kernel folds the seeds into the
# batch.

def _select(args, in_batched, i):
    return [a[i] if batched else a for a, batched in zip(args, in_batched)]


def _one_per_seed(fn, axis_size, in_batched, args):
    """The vmap of ``fn`` as ``axis_size`` separate calls (independent ops XLA may run concurrently)."""
    return jnp.stack([fn(*_select(args, in_batched, i)) for i in range(axis_size)]), True


def _seed_to_channels(a: jax.Array) -> jax.Array:
    """(K, ..., C) -> (..., K·C): seed-major channel blocks."""
    return jnp.moveaxis(a, 0, -2).reshape(*a.shape[1:-1], -1)


def _channels_to_seed(a: jax.Array, axis_size: int) -> jax.Array:
    """Inverse of :func:`_seed_to_channels`."""
    return jnp.moveaxis(a.reshape(*a.shape[:-1], axis_size, -1), -2, 0)


def _seeds_into_batch(fn, axis_size, x, kernel):
    """``fn`` batched over seeds when only ``x`` carries them: the seed axis folds into the batch axis, so
    one convolution with the shared kernel serves every seed."""
    y = fn(x.reshape(-1, *x.shape[2:]), kernel)
    return y.reshape(axis_size, -1, *y.shape[1:]), True


def _seed_batched_activation_product(product: Callable, kernel_seeds_into_channels: bool) -> Callable:
    """``product(a, kernel)`` (a forward or an input gradient: batch in, batch out) with the per-seed vmap
    rules. ``kernel_seeds_into_channels``: per-seed kernels on a shared input become one call with K·Cout
    output channels (right for the forward only, whose kernel's last axis is its output's channels)."""

    @jax.custom_batching.custom_vmap
    def batched(a, kernel):
        return product(a, kernel)

    @batched.def_vmap
    def _batched_vmap(axis_size, in_batched, a, kernel):
        a_batched, kernel_batched = in_batched
        if a_batched and not kernel_batched:
            return _seeds_into_batch(batched, axis_size, a, kernel)
        if kernel_batched and not a_batched and kernel_seeds_into_channels:
            return _channels_to_seed(batched(a, _seed_to_channels(kernel)), axis_size), True
        return _one_per_seed(batched, axis_size, in_batched, (a, kernel))

    return batched


def seed_batched_conv(forward: Callable, input_grad: Callable, kernel_grad: Callable,
                      seeds_into_channels: bool = True) -> Callable:
    """The convolution ``conv(x, kernel)`` whose three products are ``forward(x, kernel)``,
    ``input_grad(dy, kernel)`` and ``kernel_grad(x, dy, kernel_shape)``, each with the per-seed vmap rules
    above. The products must compute a linear layer's value and its two gradients:
    :func:`jaxfcn.models.layers.conv`, or :func:`jaxfcn.models.layers.up_conv` with
    ``seeds_into_channels=False`` (its kernel's output channels interleave the taps, so per-seed kernels on
    a shared input cannot fold into them; those run one call per seed)."""
    conv_forward = _seed_batched_activation_product(forward, kernel_seeds_into_channels=seeds_into_channels)
    conv_input_grad = _seed_batched_activation_product(input_grad, kernel_seeds_into_channels=False)

    @jax.custom_batching.custom_vmap
    def conv_kernel_grad(x, dy, kernel):
        # ``kernel`` only supplies the kernel shape (its spatial size is not implied by x and dy).
        return kernel_grad(x, dy, kernel.shape)

    @conv_kernel_grad.def_vmap
    def _conv_kernel_grad_vmap(axis_size, in_batched, x, dy, kernel):
        x_batched, dy_batched, _ = in_batched
        if dy_batched and not x_batched and seeds_into_channels:
            # Shared input (first layer, seeds sharing batches): one weight-gradient with K·Cout channels.
            kernel = jnp.zeros(kernel.shape[-x.ndim:-1] + (axis_size * dy.shape[-1],), dy.dtype)
            return _channels_to_seed(conv_kernel_grad(x, _seed_to_channels(dy), kernel), axis_size), True
        return _one_per_seed(conv_kernel_grad, axis_size, in_batched, (x, dy, kernel))

    @jax.custom_vjp
    def conv(x, kernel):
        return conv_forward(x, kernel)

    def conv_fwd(x, kernel):
        return conv_forward(x, kernel), (x, kernel)

    def conv_bwd(residuals, dy):
        x, kernel = residuals
        return conv_input_grad(dy, kernel), conv_kernel_grad(x, dy, kernel)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


def _xla_input_grad(dy, kernel):
    x = jnp.zeros(dy.shape[:-1] + kernel.shape[-2:-1], dy.dtype)  # only its shape is used
    return jax.vjp(lambda x: xla_fast_conv(x, kernel), x)[1](dy)[0]


def _xla_kernel_grad(x, dy, kernel_shape):
    return jax.vjp(lambda k: xla_fast_conv(x, k), jnp.zeros(kernel_shape, dy.dtype))[1](dy)[0]


xla_per_seed_conv = seed_batched_conv(xla_fast_conv, _xla_input_grad, _xla_kernel_grad)
xla_per_seed_conv.__doc__ = """:func:`xla_fast_conv` whose ``vmap`` over kernels is one convolution per seed."""

onednn_conv = seed_batched_conv(onednn.forward, onednn.input_grad, onednn.kernel_grad)
onednn_conv.__doc__ = """:func:`jaxfcn.models.layers.conv` as oneDNN custom calls (:mod:`jaxfcn.native.onednn`),
float32 on the CPU, with the per-seed vmap rules. Needs ``onednn.available()``."""


onednn_up_conv = seed_batched_conv(onednn.up_forward, onednn.up_input_grad, onednn.up_kernel_grad,
                                   seeds_into_channels=False)
onednn_up_conv.__doc__ = """:func:`jaxfcn.models.layers.up_conv` as oneDNN custom calls, float32 on the CPU, with the
per-seed vmap rules. Needs ``onednn.available()``."""


def _use_onednn(x: jax.Array) -> bool:
    """oneDNN's kernels replace XLA's for float32 CPU convolutions wherever they are built (trace time)."""
    return x.dtype == jnp.float32 and jax.default_backend() == "cpu" and onednn.available()


def fast_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`jaxfcn.models.layers.conv` in the formulation that measured fastest for its dtype and backend:
    oneDNN's kernels for float32 on the CPU (:data:`onednn_conv`), else :func:`xla_fast_conv`."""
    return onednn_conv(x, kernel) if _use_onednn(x) else xla_fast_conv(x, kernel)


def fast_up_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`jaxfcn.models.layers.up_conv`: oneDNN's deconvolution for float32 on the CPU
    (:data:`onednn_up_conv`), else the matmul and depth-to-space."""
    return onednn_up_conv(x, kernel) if _use_onednn(x) else layers.up_conv(x, kernel)


def per_seed_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`fast_conv` whose ``vmap`` over kernels is one convolution per seed (see the comment above)."""
    return onednn_conv(x, kernel) if _use_onednn(x) else xla_per_seed_conv(x, kernel)


# --- max-pool ------------------------------------------------------------------------------------------

def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """:func:`jaxfcn.models.layers.max_pool` (forward values identical, gradient identical).

    Written as a reshape and a max over the block axes, not a ``reduce_window``, whose XLA:CPU gradient is
    a select-and-scatter over packed (value, index) pairs, with more memory traffic. The gradient
    (:func:`_max_pool_bwd`) goes, in each block, to the *first* maximal element in row-major order of the
    block offsets, as reduce_window's select-and-scatter and PyTorch's ``max_pool`` do: a reduction finds
    that element's offset per block, and one elementwise pass places the gradient. Differentiating the
    reshape-max instead would split it evenly between tied maxima, in three passes (mask, tie count,
    division) over the activation.
    """
    spatial = x.shape[1:-1]
    if any(size % window for size in spatial):
        raise ValueError(f"max_pool: spatial shape {spatial} is not divisible by the window {window}")
    return _max_pool(x, window)


def _blocks(x: jax.Array, window: int) -> jax.Array:
    """(N, S1, …, Sd, C) -> (N, S1/w, w, …, Sd/w, w, C): block index and offset interleaved per axis."""
    blocks = [d for size in x.shape[1:-1] for d in (size // window, window)]
    return x.reshape(x.shape[0], *blocks, x.shape[-1])


def _offset_axes(ndim: int) -> tuple[int, ...]:
    """Axes of the block offsets in :func:`_blocks`'s view of an ``ndim``-dimensional activation."""
    return tuple(2 + 2 * i for i in range(ndim - 2))


def _max_pool_fwd(x, window):
    y = jnp.max(_blocks(x, window), axis=_offset_axes(x.ndim))
    return y, (x, y)


def _max_pool_bwd(window, residuals, dy):
    x, y = residuals
    axes = _offset_axes(x.ndim)
    blocks = _blocks(x, window)
    # Row-major index of each element's offset within its block: k = Σ_i o_i · w^(d-1-i).
    shape = [1] * blocks.ndim
    index = jnp.zeros((), jnp.int32)
    for i, axis in enumerate(axes):
        offset_shape = list(shape)
        offset_shape[axis] = window
        index = index + jax.lax.broadcasted_iota(jnp.int32, offset_shape, axis) * window ** (len(axes) - 1 - i)
    # Per block, the index of its first maximal element (a reduction at the pooled resolution), then one
    # elementwise pass that gives the gradient to that element. Marking, per element, whether a maximum
    # precedes it took 3.5x longer in 3D (2^3 comparisons per element).
    first = jnp.min(jnp.where(blocks == jnp.expand_dims(y, axes), index, window ** len(axes)), axis=axes)
    dx = jnp.where(index == jnp.expand_dims(first, axes), jnp.expand_dims(dy, axes), jnp.zeros((), dy.dtype))
    return (dx.reshape(x.shape),)


_max_pool = jax.custom_vjp(lambda x, window: _max_pool_fwd(x, window)[0], nondiff_argnums=(1,))
_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# --- group norm ----------------------------------------------------------------------------------------

def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float = 1e-6,
               relu: bool = False) -> jax.Array:
    """:func:`jaxfcn.models.layers.group_norm`, with the ReLU (``relu=True``) applied in the same pass.

    With ``G`` groups of ``C/G`` channels and ``m = |S|·C/G`` values per (example, group)::

        mean = Σ x / m,  var = max(0, Σ x² / m − mean²),  rstd = (var + ε)^-½
        y = (x − mean) · rstd · scale + bias  =  x · a + b   with  a = rstd · scale,  b = bias − mean · a

    Statistics are per-channel sums over the spatial axes, then a sum over each group's channels: the
    reductions keep channels minor (contiguous), which XLA:CPU vectorises; flax reduces a (…, G, C/G) view
    whose minor axis is only C/G long.

    The gradient is written by hand (:func:`_group_norm_bwd`): with ``g`` the incoming gradient (zeroed
    where the ReLU was off), ``x̂ = (x − mean) · rstd`` and, per (example, group), ``μ₁ = Σ g·scale / m`` and
    ``μ₂ = Σ g·scale·x̂ / m``::

        dx = rstd · (g · scale − μ₁ − x̂ · μ₂),   dscale = Σ_{N,S} g · x̂,   dbias = Σ_{N,S} g

    It reads and writes less memory than differentiating the forward formula (the CPU train step is bound
    by memory traffic). Its float32 error against a float64 reference equals that of differentiating the
    forward formula for inputs with mean/std from 0 to 30 (both are limited by the fast variance's
    cancellation). Where the variance is clamped at 0 (a constant group), autodiff would give that group's
    variance no gradient; this formula differentiates ``var + ε`` as if unclamped (both are then dominated
    by ``ε``). Returns float32 statistics applied in ``promote(x.dtype, float32)``; the caller casts.
    """
    return _group_norm(x, scale, bias, groups, epsilon, relu)


def _group_stats(xs: jax.Array, groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Per-(example, channel) group mean and rstd, each (N, C), of float32 ``xs``."""
    axes = tuple(range(1, xs.ndim - 1))
    count = math.prod(xs.shape[1:-1]) * (xs.shape[-1] // groups)
    mean = _group_sum(jnp.sum(xs, axes), groups) / count
    mean_sq = _group_sum(jnp.sum(xs * xs, axes), groups) / count
    return mean, jax.lax.rsqrt(jnp.maximum(0.0, mean_sq - mean * mean) + epsilon)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """(N, C) -> (N, 1, …, 1, C), broadcastable against an (N, *S, C) activation."""
    return v.reshape(v.shape[0], *(1,) * (ndim - 2), v.shape[-1])


def _group_sum(v: jax.Array, groups: int) -> jax.Array:
    """(N, C) -> (N, C): each channel gets the sum over its group's channels."""
    n, channels = v.shape
    return jnp.repeat(v.reshape(n, groups, channels // groups).sum(-1), channels // groups, axis=-1)


def _group_norm_fwd(x, scale, bias, groups, epsilon, relu):
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, rstd = _group_stats(xs, groups, epsilon)
    a = rstd * scale
    b = bias - mean * a
    y = xs * _per_channel(a, x.ndim) + _per_channel(b, x.ndim)
    if relu:
        y = jnp.maximum(y, 0.0)
    return y, (x, scale, mean, rstd, a, b)


def _group_norm_bwd(groups, epsilon, relu, residuals, g):
    x, scale, mean, rstd, a, b = residuals
    ndim = x.ndim
    xs = x.astype(g.dtype)
    if relu:  # the ReLU's gradient, from the recomputed pre-activation (cheaper than storing a mask)
        g = jnp.where(xs * _per_channel(a, ndim) + _per_channel(b, ndim) > 0, g, 0.0)
    axes = tuple(range(1, ndim - 1))
    # Per (example, channel): Σ g and Σ g·x̂ = rstd·(Σ g·x − mean·Σ g). Summing g·x rather than g·x̂ lets
    # XLA:CPU hand the product and its sum to one library reduction over the stored g and x.
    sum_g = jnp.sum(g, axes)
    sum_g_xhat = rstd * (jnp.sum(g * xs, axes) - mean * sum_g)
    count = math.prod(x.shape[1:-1]) * (x.shape[-1] // groups)
    mu1 = _group_sum(sum_g * scale, groups) / count
    mu2 = _group_sum(sum_g_xhat * scale, groups) / count
    # dx = rstd·(g·scale − μ₁ − x̂·μ₂), expanded into one multiply-add per element: g·a + x·u + v
    u = -rstd * rstd * mu2
    v = rstd * (mean * rstd * mu2 - mu1)
    dx = g * _per_channel(a, ndim) + xs * _per_channel(u, ndim) + _per_channel(v, ndim)
    # The parameter gradients sum the (N, C) partial sums over examples as a product with ones: written as
    # a sum, XLA merges it with the spatial sum into a second full pass over the activation.
    ones = jnp.ones((x.shape[0],), sum_g.dtype)
    return dx.astype(x.dtype), ones @ sum_g_xhat, ones @ sum_g


_group_norm = jax.custom_vjp(lambda x, scale, bias, groups, epsilon, relu:
                             _group_norm_fwd(x, scale, bias, groups, epsilon, relu)[0], nondiff_argnums=(3, 4, 5))
_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


# --- the switch ----------------------------------------------------------------------------------------

_FAST = Kernels(conv=fast_conv, group_norm=group_norm, max_pool=max_pool, up_conv=fast_up_conv)

KERNELS: dict[str, Kernels] = {
    "plain": layers.PLAIN,
    "fast": _FAST,
    "fast_xla": _FAST._replace(conv=xla_fast_conv, up_conv=layers.up_conv),
    "per_seed": _FAST._replace(conv=per_seed_conv),
    "im2col": _FAST._replace(conv=im2col_conv),
}
CONV_IMPLS = tuple(KERNELS)  # the allowed values of config.model.conv_impl


def kernels(conv_impl: str) -> Kernels:
    """The :class:`~jaxfcn.models.layers.Kernels` of ``config.model.conv_impl`` (one of :data:`CONV_IMPLS`)."""
    if conv_impl not in KERNELS:
        raise ValueError(f"unknown conv_impl '{conv_impl}' ({' | '.join(CONV_IMPLS)})")
    return KERNELS[conv_impl]
