"""Building blocks of the U-Net: convolution, normalisation, and the depth-to-space up-convolution.

All layers are channels-last (N, *spatial, C) and work for 2 or 3 spatial dimensions.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        if self.impl == "im2col":
            y = im2col_conv(x, kernel)
        elif self.impl == "xla":
            spatial = len(self.kernel_size)
            dn = ("N" + "DHW"[-spatial:] + "C", "DHW"[-spatial:] + "IO", "N" + "DHW"[-spatial:] + "C")
            y = jax.lax.conv_general_dilated(x, kernel, (1,) * spatial, "SAME", dimension_numbers=dn)
        else:
            raise ValueError(f"unknown conv_impl '{self.impl}' (xla | im2col)")
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


class Norm(nn.Module):
    """group: GroupNorm(min(groups, C)); instance: one group per channel; batch: BatchNorm; none: identity.

    Group and instance norm keep no running statistics, so freezing a part fixes its function exactly.
    BatchNorm keeps ``batch_stats`` that are *not* parameters: they keep updating during training even in
    a frozen part (the frozen part's eval-time function then still drifts). Prefer group/instance norm for
    frozen-encoder experiments.
    """

    kind: str
    groups: int = 8
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        if self.kind == "group":
            g = min(self.groups, c)
            while c % g:
                g -= 1
            return nn.GroupNorm(num_groups=g, dtype=self.dtype, param_dtype=jnp.float32)(x)
        if self.kind == "instance":
            return nn.GroupNorm(num_groups=None, group_size=1, dtype=self.dtype, param_dtype=jnp.float32)(x)
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                param_dtype=jnp.float32)(x)
        if self.kind == "none":
            return x
        raise ValueError(f"unknown norm '{self.kind}' (group | instance | batch | none)")
