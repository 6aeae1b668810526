"""Building blocks of the U-Net: convolution, normalisation, and the depth-to-space up-convolution.

All layers are channels-last (N, *spatial, C) and work for 2 or 3 spatial dimensions.

Convolution strategies (``ConvND.impl`` / ``config.model.conv_impl``; parameters and the function computed are
the same for all, only the XLA program differs; measurements in ``benchmarks/README.md``):

- ``xla``: ``lax.conv_general_dilated``, differentiated by JAX. Under ``vmap`` over per-seed kernels JAX
  turns it into a *grouped* convolution (``feature_group_count = K``), which XLA:CPU runs several times
  slower per seed than K plain convolutions.
- ``im2col``: patch extraction + one matmul. Vmaps into a batched matmul, but materialising the patches
  is memory-bound and slow on CPU.
- ``per_seed``: the ``xla`` convolution (same forward, input-gradient and weight-gradient programs for one
  seed) with a custom ``vmap`` rule: per-seed kernels give one plain convolution per seed instead of a grouped
  one; a shared input with per-seed kernels (the first layer when seeds share batches) gives one
  convolution with K·Cout output channels; a per-seed input with a shared kernel folds the seeds into the
  batch. Use it for stacked-seed training (:mod:`jaxfcn.train.seeds`) and for vmapping over many models.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("xla", "im2col", "per_seed")

# XLA:CPU (jaxlib 0.10) sends 2D float32 convolutions to YNNPACK by default. Listing only INDIVIDUAL_DOT and
# REDUCE keeps YNNPACK for matmuls and reductions and gives convolutions back to XLA's Eigen kernels, which
# measured faster on this project's CPU for every U-Net layer: forward 0.65x, kernel-gradient 0.6x,
# input-gradient 1.0x CPU time. REDUCE must stay listed: without it XLA rewrites every large reduction (the
# group-norm statistics and their gradients) into a 32x32 reduce-window that took 56 ms of a 580 ms step
# (benchmarks/README.md, "CPU convolution strategies"). Same numbers up to summation order.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(backend: str | None = None) -> dict:
    """XLA compiler options for the U-Net's programs on ``backend`` (default: JAX's default backend).

    Pass them to ``jax.jit(..., compiler_options=compiler_options())``. Empty where no option measured better,
    or where the installed XLA does not know the option (:func:`jaxfcn.runtime.supported_compiler_options`).
    """
    from jaxfcn.runtime import supported_compiler_options

    backend = backend or jax.default_backend()
    return supported_compiler_options(CPU_COMPILER_OPTIONS, backend) if backend == "cpu" else {}

KERNEL_INITS: dict[str, Callable] = {
    "he_normal": nn.initializers.he_normal(),
    "he_uniform": nn.initializers.he_uniform(),
    "glorot_normal": nn.initializers.glorot_normal(),
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),
}


def kernel_initializer(name: str) -> Callable:
    """The named initialiser. ``he_normal`` is jax's truncated normal with variance 2/fan_in."""
    if name not in KERNEL_INITS:
        raise ValueError(f"unknown kernel_init '{name}', choose from {sorted(KERNEL_INITS)}")
    return KERNEL_INITS[name]


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution, x (N, *S, Cin), kernel (*k, Cin, Cout) -> (N, *S, Cout)."""
    spatial = x.ndim - 2
    letters = "DHW"[-spatial:]
    dn = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    return jax.lax.conv_general_dilated(x, kernel, (1,) * spatial, "SAME", dimension_numbers=dn)


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution as patch extraction followed by one matmul.

    Mathematically identical to ``lax.conv_general_dilated``. Under ``vmap`` over the kernel it stays a
    batched matmul, whereas a vmapped XLA convolution becomes a grouped convolution (slow on CPU).
    """
    spatial = x.ndim - 2
    k = kernel.shape[:spatial]
    pads = [(0, 0)] + [((ki - 1) // 2, ki // 2) for ki in k] + [(0, 0)]
    xp = jnp.pad(x, pads)
    shape = x.shape[1:-1]
    # Collect the shifted views in kernel-offset order, matching kernel.reshape(-1, cin, cout).
    views = []
    for offset in _offsets(k):
        sl = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, shape)) + (slice(None),)
        views.append(xp[sl])
    patches = jnp.stack(views, axis=-2)  # (N, *spatial, K, Cin)
    patches = patches.reshape(*patches.shape[:-2], -1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def _offsets(k):
    if not k:
        return [()]
    return [(i,) + rest for i in range(k[0]) for rest in _offsets(k[1:])]


# --- per_seed: the XLA convolution with vmap rules that never produce a grouped convolution -------------

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


@jax.custom_batching.custom_vmap
def _conv_forward(x, kernel):
    return xla_conv(x, kernel)


@_conv_forward.def_vmap
def _conv_forward_vmap(axis_size, in_batched, x, kernel):
    x_batched, kernel_batched = in_batched
    if x_batched and not kernel_batched:
        y = _conv_forward(x.reshape(-1, *x.shape[2:]), kernel)
        return y.reshape(axis_size, -1, *y.shape[1:]), True
    if kernel_batched and not x_batched:
        return _channels_to_seed(_conv_forward(x, _seed_to_channels(kernel)), axis_size), True
    return _one_per_seed(_conv_forward, axis_size, in_batched, (x, kernel))


@jax.custom_batching.custom_vmap
def _conv_input_grad(dy, kernel):
    x = jnp.zeros(dy.shape[:-1] + kernel.shape[-2:-1], dy.dtype)  # only its shape is used
    return jax.vjp(lambda x: xla_conv(x, kernel), x)[1](dy)[0]


@_conv_input_grad.def_vmap
def _conv_input_grad_vmap(axis_size, in_batched, dy, kernel):
    dy_batched, kernel_batched = in_batched
    if dy_batched and not kernel_batched:
        dx = _conv_input_grad(dy.reshape(-1, *dy.shape[2:]), kernel)
        return dx.reshape(axis_size, -1, *dx.shape[1:]), True
    return _one_per_seed(_conv_input_grad, axis_size, in_batched, (dy, kernel))


@jax.custom_batching.custom_vmap
def _conv_kernel_grad(x, dy, kernel):
    # ``kernel`` only supplies the kernel shape (its spatial size is not implied by x and dy).
    return jax.vjp(lambda k: xla_conv(x, k), jnp.zeros_like(kernel))[1](dy)[0]


@_conv_kernel_grad.def_vmap
def _conv_kernel_grad_vmap(axis_size, in_batched, x, dy, kernel):
    x_batched, dy_batched, _ = in_batched
    if dy_batched and not x_batched:
        # Shared input (first layer, seeds sharing batches): one weight-gradient with K·Cout output channels.
        kernel = jnp.zeros(kernel.shape[-x.ndim:-1] + (axis_size * dy.shape[-1],), dy.dtype)
        return _channels_to_seed(_conv_kernel_grad(x, _seed_to_channels(dy), kernel), axis_size), True
    return _one_per_seed(_conv_kernel_grad, axis_size, in_batched, (x, dy, kernel))


@jax.custom_vjp
def per_seed_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`xla_conv` whose ``vmap`` over kernels is one convolution per seed (see module docstring)."""
    return _conv_forward(x, kernel)


def _per_seed_conv_fwd(x, kernel):
    return _conv_forward(x, kernel), (x, kernel)


def _per_seed_conv_bwd(residuals, dy):
    x, kernel = residuals
    return _conv_input_grad(dy, kernel), _conv_kernel_grad(x, dy, kernel)


per_seed_conv.defvjp(_per_seed_conv_fwd, _per_seed_conv_bwd)

CONV_FUNCTIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "xla": xla_conv,
    "im2col": im2col_conv,
    "per_seed": per_seed_conv,
}


class ConvND(nn.Module):
    """A 'SAME' convolution with flax's ``Conv`` parameter names and shapes (kernel: (*k, Cin, Cout)).

    ``impl`` picks the computation only; the parameters are identical, so a checkpoint is usable with either.
    """

    features: int
    kernel_size: tuple[int, ...]
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.he_normal()
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin, self.features), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl not in CONV_FUNCTIONS:
            raise ValueError(f"unknown conv_impl '{self.impl}' ({' | '.join(CONV_IMPLS)})")
        y = CONV_FUNCTIONS[self.impl](x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


def depth_to_space(x: jax.Array, spatial: int) -> jax.Array:
    """(N, *S, 2^d·C) → (N, *2S, C); channel index = ((a·2 + b)·2 + c)·C + o for offsets (a, b, c)."""
    n, *s, ch = x.shape
    c = ch // (2**spatial)
    x = x.reshape(n, *s, *([2] * spatial), c)
    # interleave each spatial axis with its offset axis: (N, S0, 2, S1, 2, ..., C)
    perm = [0]
    for i in range(spatial):
        perm += [1 + i, 1 + spatial + i]
    perm.append(1 + 2 * spatial)
    x = x.transpose(perm)
    return x.reshape(n, *[2 * si for si in s], c)


class UpConv(nn.Module):
    """2×…×2, stride-2 transposed convolution, computed as a per-voxel Dense then depth-to-space.

    With ``K = kernel.reshape(Cin, 2, …, 2, Cout)`` the output at ``2i + a`` is ``Σ_c x[i, c] K[c, a, o] + b[o]``:
    exactly a transposed convolution with kernel ``K[:, a, :]`` and stride 2 (no overlap between taps), but
    one matmul instead of XLA's slow strided transposed convolution. This is the gradient-of-convolution
    convention (PyTorch ``ConvTranspose``, flax ``ConvTranspose(transpose_kernel=True)``); flax's default
    ``transpose_kernel=False`` equals it with the kernel flipped spatially.
    Params: ``kernel`` (Cin, 2^d·Cout) and ``bias`` (Cout,).
    """

    features: int
    spatial: int
    kernel_init: Callable = nn.initializers.he_normal()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        taps = 2**self.spatial
        # fan_in of the equivalent transposed convolution is Cin (each output sees one input voxel).
        kernel = self.param("kernel", self.kernel_init, (cin, taps * self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)
        return depth_to_space(y, self.spatial) + bias.astype(self.dtype)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Max over non-overlapping ``window``-wide blocks of every spatial axis: ``flax.linen.max_pool(x, w, w)``.

    ``x`` is (N, *S, C) with every spatial size divisible by ``window`` (the U-Net guarantees it). Written as
    a reshape and a max over the block axes, not a ``reduce_window``, whose XLA:CPU gradient is a
    select-and-scatter over packed (value, index) pairs: XLA estimates the U-Net train step at 2.00 GB of
    memory traffic with this max-pool against 2.28 GB with reduce_window (the step times did not differ
    measurably, benchmarks/README.md). The forward values are identical.

    The gradient (:func:`_max_pool_bwd`) goes, in each block, to the *first* maximal element in row-major
    order of the block offsets, as reduce_window's select-and-scatter and PyTorch's ``max_pool`` do, and is
    computed in one elementwise pass. Differentiating the reshape-max instead would split it evenly
    between tied maxima, in three passes (mask, tie count, division) over the activation.
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
    is_max = blocks == jnp.expand_dims(y, axes)
    # Row-major index of each element's offset within its block: k = Σ_i o_i · w^(d-1-i).
    shape = [1] * blocks.ndim
    index = jnp.zeros((), jnp.int32)
    for i, axis in enumerate(axes):
        offset_shape = list(shape)
        offset_shape[axis] = window
        index = index + jax.lax.broadcasted_iota(jnp.int32, offset_shape, axis) * window ** (len(axes) - 1 - i)
    # An element gets the gradient if it is a maximum and no maximum precedes it in its block.
    preceded = jnp.zeros(blocks.shape, bool)
    for k, offsets in enumerate(itertools.product(range(window), repeat=len(axes))):
        at_k = tuple(slice(None) if a not in axes else slice(offsets[axes.index(a)], offsets[axes.index(a)] + 1)
                     for a in range(blocks.ndim))
        preceded = preceded | (is_max[at_k] & (index > k))
    dx = jnp.where(is_max & ~preceded, jnp.expand_dims(dy, axes), jnp.zeros((), dy.dtype))
    return (dx.reshape(x.shape),)


_max_pool = jax.custom_vjp(lambda x, window: _max_pool_fwd(x, window)[0], nondiff_argnums=(1,))
_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float = 1e-6,
               relu: bool = False) -> jax.Array:
    """Group normalisation, the function of ``flax.linen.GroupNorm`` (fast variance, float32 statistics),
    optionally followed by a ReLU (``relu=True`` computes ``max(0, group_norm(x))`` in the same pass).

    With ``G`` groups of ``C/G`` channels and ``m = |S|·C/G`` values per (example, group)::

        mean = Σ x / m,  var = max(0, Σ x² / m − mean²),  rstd = (var + ε)^-½
        y = (x − mean) · rstd · scale + bias  =  x · a + b   with  a = rstd · scale,  b = bias − mean · a

    Statistics are per-channel sums over the spatial axes, then a sum over each group's channels: the
    reductions keep channels minor (contiguous), which XLA:CPU vectorises; flax reduces a (…, G, C/G) view
    whose minor axis is only C/G long, which measured 4-8× slower (benchmarks/README.md).

    The gradient is written by hand (:func:`_group_norm_bwd`): with ``g`` the incoming gradient (zeroed
    where the ReLU was off), ``x̂ = (x − mean) · rstd`` and, per (example, group), ``μ₁ = Σ g·scale / m`` and
    ``μ₂ = Σ g·scale·x̂ / m``::

        dx = rstd · (g · scale − μ₁ − x̂ · μ₂),   dscale = Σ_{N,S} g · x̂,   dbias = Σ_{N,S} g

    XLA's cost analysis puts it at 92 MB of memory traffic for an (8, 128, 128, 16) activation, against
    134 MB for differentiating the forward formula (0.6× the time in isolation); the CPU train step is
    bound by memory traffic (benchmarks/README.md, "the CPU gap"). Its float32 error against a float64
    reference equals that of differentiating the forward formula for inputs with mean/std from 0 to 30
    (both are limited by the fast variance's cancellation, e.g. relative 6e-6 at mean/std 10). Where the
    variance is clamped at 0 (a constant group), autodiff would give that group's variance no gradient;
    this formula differentiates ``var + ε`` as if unclamped (both are then dominated by ``ε``). Returns
    float32 statistics applied in ``promote(x.dtype, float32)``; the caller casts the result.
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


class GroupNorm(nn.Module):
    """:func:`group_norm` with ``flax.linen.GroupNorm``'s parameters (``scale`` ones, ``bias`` zeros, (C,))."""

    groups: int
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    relu: bool = False  # fuse a following ReLU (same function, one pass fewer each way)

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        if channels % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {channels} channels")
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return group_norm(x, scale, bias, self.groups, self.epsilon, relu=self.relu).astype(self.dtype)


class Norm(nn.Module):
    """group: GroupNorm(min(groups, C)); instance: one group per channel; batch: BatchNorm; none: identity.

    Group and instance norm keep no running statistics, so freezing a part fixes its function exactly.
    BatchNorm keeps ``batch_stats`` that are *not* parameters; a frozen part runs its batch norms with
    ``train=False`` (running averages used and kept, see :mod:`jaxfcn.train.step`), so a frozen random
    encoder with batch norm is not normalised by its batches. Prefer group/instance norm for
    frozen-encoder experiments.
    """

    kind: str
    groups: int = 8
    dtype: jnp.dtype = jnp.float32
    relu: bool = False  # apply a ReLU after the norm (fused into group/instance norm)

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        if self.kind in ("group", "instance"):
            g = c if self.kind == "instance" else min(self.groups, c)
            while c % g:
                g -= 1
            # Named like flax's GroupNorm submodule so checkpoints and the PyTorch twin see the same tree.
            return GroupNorm(g, dtype=self.dtype, relu=self.relu, name="GroupNorm_0")(x)
        if self.kind == "batch":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             param_dtype=jnp.float32)(x)
            return jax.nn.relu(x) if self.relu else x
        if self.kind == "none":
            return jax.nn.relu(x) if self.relu else x
        raise ValueError(f"unknown norm '{self.kind}' (group | instance | batch | none)")
