"""Building blocks of the U-Net, as plain Flax: convolution, group norm, ReLU, max-pool, up-convolution.

All layers are channels-last (N, *spatial, C) and work for 2 or 3 spatial dimensions. The functions here
are the textbook definitions. Faster formulations of the same functions live in
:mod:`jaxfcn.models.fast_ops`; a :class:`Kernels` value says which formulation each layer computes with
(``config.model.conv_impl``: ``plain`` is :data:`PLAIN`). Parameters never depend on the formulation.

Example::

    y = ConvND(16, (3, 3))  # 'SAME' convolution, flax Conv's parameters
    y = GroupNorm(groups=8, relu=True)  # max(0, flax.linen.GroupNorm(8)(x))
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# XLA:CPU options of the U-Net's programs. XLA:CPU (jaxlib 0.10) sends 2D float32 convolutions to YNNPACK by
# default; listing only INDIVIDUAL_DOT and REDUCE keeps YNNPACK for matmuls and reductions and gives
# convolutions back to XLA's Eigen kernels, which measured faster for the U-Net's layers on this project's
# CPU. REDUCE must stay listed: without it XLA rewrites every large reduction (the group-norm statistics and
# their gradients) into a slow 32x32 reduce-window. Same numbers up to summation order (benchmarks/README.md).
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


def same_padding(k: int) -> tuple[int, int]:
    """(low, high) padding of one axis of a 'SAME' stride-1 convolution with a kernel of side ``k``, as
    ``lax`` pads it: (k−1)//2 low, k//2 high (an even kernel pads one more on the high side)."""
    return (k - 1) // 2, k // 2


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution, x (N, *S, Cin), kernel (*k, Cin, Cout) -> (N, *S, Cout)."""
    spatial = x.ndim - 2
    letters = "DHW"[-spatial:]
    dn = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    return jax.lax.conv_general_dilated(x, kernel, (1,) * spatial, "SAME", dimension_numbers=dn)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float = 1e-6,
               relu: bool = False) -> jax.Array:
    """``flax.linen.GroupNorm(groups, epsilon)`` with parameters ``scale`` and ``bias`` (C,), then a ReLU if
    ``relu``. Float32 statistics over the spatial axes and each group's C/G channels, flax's fast variance::

        mean = E[x],  var = max(0, E[x²] − mean²),  y = (x − mean) · (var + ε)^-½ · scale + bias

    Returns ``promote(x.dtype, float32)``; the caller casts the result.
    """
    n, *spatial, channels = x.shape
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    grouped = xs.reshape(n, *spatial, groups, channels // groups)
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(grouped * grouped, axes, keepdims=True) - mean * mean)
    y = ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(xs.shape) * scale + bias
    return jnp.maximum(y, 0.0) if relu else y


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Max over non-overlapping ``window``-wide blocks of every spatial axis (``flax.linen.max_pool``)."""
    spatial = x.shape[1:-1]
    if any(size % window for size in spatial):
        raise ValueError(f"max_pool: spatial shape {spatial} is not divisible by the window {window}")
    return nn.max_pool(x, (window,) * len(spatial), strides=(window,) * len(spatial))


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


def up_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 2×…×2 stride-2 transposed convolution of :class:`UpConv` without its bias: x (N, *S, Ci) and
    kernel (Ci, 2^d·Co) -> (N, *2S, Co), ``y[2i + a, o] = Σ_c x[i, c] kernel[c, a·Co + o]`` with the tap
    index ``a`` of :func:`depth_to_space`. One matmul, then depth-to-space."""
    return depth_to_space(x @ kernel, x.ndim - 2)


class Kernels(NamedTuple):
    """The functions the layers compute with: one formulation of the U-Net (see :mod:`jaxfcn.models.fast_ops`).

    ``conv(x, kernel)``, ``group_norm(x, scale, bias, groups, epsilon, relu)``, ``max_pool(x, window)`` and
    ``up_conv(x, kernel)`` have the signatures and the values of :func:`conv`, :func:`group_norm`,
    :func:`max_pool` and :func:`up_conv`.
    """

    conv: Callable
    group_norm: Callable
    max_pool: Callable
    up_conv: Callable


PLAIN = Kernels(conv=conv, group_norm=group_norm, max_pool=max_pool, up_conv=up_conv)


class ConvND(nn.Module):
    """A 'SAME' convolution with flax's ``Conv`` parameter names and shapes (kernel: (*k, Cin, Cout)).

    ``x`` is an array, or a tuple of arrays whose concatenation along the channels is the input. A tuple is
    convolved part by part with the matching input-channel slices of the kernel and the results summed:
    the same function and parameters as convolving the concatenation, without materialising it, and a
    part that needs no gradient (a frozen encoder's skip connection) gets none computed.
    """

    features: int
    kernel_size: tuple[int, ...]
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.he_normal()
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        parts = x if isinstance(x, tuple) else (x,)
        cin = sum(part.shape[-1] for part in parts)
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin, self.features), jnp.float32)
        kernel = kernel.astype(self.dtype)
        # One part slices the whole kernel (a no-op in the traced program) and sums nothing.
        terms, start = [], 0
        for part in parts:
            terms.append(self.kernels.conv(part.astype(self.dtype), kernel[..., start:start + part.shape[-1], :]))
            start += part.shape[-1]
        y = sum(terms[1:], terms[0])
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


class UpConv(nn.Module):
    """2×…×2, stride-2 transposed convolution: ``kernels.up_conv`` (plainly :func:`up_conv`, a per-voxel Dense
    then depth-to-space) plus a bias.

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
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        taps = 2**self.spatial
        # fan_in of the equivalent transposed convolution is Cin (each output sees one input voxel).
        kernel = self.param("kernel", self.kernel_init, (cin, taps * self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = self.kernels.up_conv(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class GroupNorm(nn.Module):
    """:func:`group_norm` with ``flax.linen.GroupNorm``'s parameters (``scale`` ones, ``bias`` zeros, (C,))."""

    groups: int
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    relu: bool = False  # apply a ReLU after the norm (a fast formulation fuses it)
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        if channels % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {channels} channels")
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return self.kernels.group_norm(x, scale, bias, self.groups, self.epsilon, self.relu).astype(self.dtype)


def group_count(channels: int, groups: int) -> int:
    """Groups of a group norm over ``channels`` for ``model.norm_groups = groups``: the largest g ≤
    min(groups, channels) that divides ``channels`` (so any width works with any setting)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


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
    relu: bool = False  # apply a ReLU after the norm (fused into group/instance norm by a fast formulation)
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        if self.kind in ("group", "instance"):
            g = c if self.kind == "instance" else group_count(c, self.groups)
            # Named like flax's GroupNorm submodule so checkpoints and the PyTorch twin see the same tree.
            return GroupNorm(g, dtype=self.dtype, relu=self.relu, kernels=self.kernels, name="GroupNorm_0")(x)
        if self.kind == "batch":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             param_dtype=jnp.float32)(x)
            return jax.nn.relu(x) if self.relu else x
        if self.kind == "none":
            return jax.nn.relu(x) if self.relu else x
        raise ValueError(f"unknown norm '{self.kind}' (group | instance | batch | none)")
