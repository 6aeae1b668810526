"""The U-Net of jaxfcn: a functional Flax linen model with exactly three top-level parts.

Parameter tree (this naming is what partitioning, transfer, CKA and the PyTorch twin rely on)::

    params
    ├── encoder
    │   ├── block_0 … block_{depth-2}   # one ConvBlock per resolution level, max-pool between levels
    │   └── block_{depth-1}             # the bottleneck (lowest resolution): it belongs to the ENCODER
    ├── decoder
    │   ├── up_{i}, block_{i}          # for i = depth-2 … 0: UpConv to level i, concat skip, ConvBlock
    └── head                            # 1×1 conv to class logits (kernel, bias)

Each ConvBlock holds ``conv_j`` (``ConvND``: kernel (k…k, Cin, Cout), bias only when ``norm == "none"``)
and ``norm_j``. Widths are ``base_width · width_multiplier**level``. The layers compute with the
formulation ``conv_impl`` names (:mod:`jaxfcn.models.fast_ops`): ``plain`` is the textbook Flax layers,
``fast`` (default) the same function in the formulations that measured faster; the parameters are the same.

Representations are sown into the ``intermediates`` collection (only computed when that collection is
mutable) under the names of :func:`layer_names`: ``enc_0 … enc_{depth-2}``, ``bottleneck``,
``dec_{depth-2} … dec_1`` and ``head_input`` (the output of the last decoder block).

Example::

    model = build_model(config.model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
    logits = model.apply(variables, x, train=False)      # (N, 32, 32, num_classes), float32
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfcn.models import fast_ops
from jaxfcn.models.layers import ConvND, Kernels, Norm, UpConv, kernel_initializer


def _activation(name: str):
    fn = getattr(jax.nn, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"unknown activation '{name}' (any jax.nn function, e.g. relu, leaky_relu, gelu)")
    return fn


class ConvBlock(nn.Module):
    features: int
    convs: int
    kernel_size: tuple[int, ...]
    norm: str
    norm_groups: int
    activation: str
    kernel_init: str
    kernels: Kernels
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train: bool):
        act = _activation(self.activation)
        fuse_relu = self.activation == "relu"  # the norm applies it (a fast formulation in the same pass)
        for j in range(self.convs):
            x = ConvND(self.features, self.kernel_size, use_bias=self.norm == "none",
                       kernel_init=kernel_initializer(self.kernel_init), dtype=self.dtype,
                       kernels=self.kernels, name=f"conv_{j}")(x)
            x = Norm(self.norm, self.norm_groups, dtype=self.dtype, relu=fuse_relu, kernels=self.kernels,
                     name=f"norm_{j}")(x, train)
            if not fuse_relu:
                x = act(x)
        return x


class _Part(nn.Module):
    """Shared hyper-parameters of encoder and decoder."""

    widths: Sequence[int]
    spatial_dims: int
    convs: int
    kernel_size: int
    norm: str
    norm_groups: int
    activation: str
    kernel_init: str
    kernels: Kernels
    dtype: jnp.dtype

    def block(self, level: int) -> ConvBlock:
        return ConvBlock(self.widths[level], self.convs, (self.kernel_size,) * self.spatial_dims, self.norm,
                         self.norm_groups, self.activation, self.kernel_init, self.kernels, self.dtype,
                         name=f"block_{level}")


class Encoder(_Part):
    """Levels 0 … depth-1; returns every level's output (the last one is the bottleneck)."""

    @nn.compact
    def __call__(self, x, train: bool):
        outputs = []
        for level in range(len(self.widths)):
            if level:
                x = self.kernels.max_pool(x, 2)
            x = self.block(level)(x, train)
            outputs.append(x)
        return outputs


class Decoder(_Part):
    """Upsample, concatenate the skip, ConvBlock; from level depth-2 up to 0. Returns each block's output.

    ``split_skip``: the block's first convolution takes (skip, upsampled) as two parts of its input
    (:class:`~jaxfcn.models.layers.ConvND`) instead of their concatenation: the same function, without the
    concatenated copy, and no gradient computed for a skip that needs none.
    """

    split_skip: bool = False

    @nn.compact
    def __call__(self, skips, train: bool):
        x = skips[-1]
        outputs = []
        for level in reversed(range(len(self.widths) - 1)):
            x = UpConv(self.widths[level], self.spatial_dims, kernel_init=kernel_initializer(self.kernel_init),
                       dtype=self.dtype, kernels=self.kernels, name=f"up_{level}")(x)
            parts = (skips[level].astype(x.dtype), x)
            x = self.block(level)(parts if self.split_skip else jnp.concatenate(parts, axis=-1), train)
            outputs.append(x)
        return outputs


SKIP_JOINS = ("auto", "concat", "split")


class UNet(nn.Module):
    """2D/3D U-Net with top-level submodules ``encoder``, ``decoder`` and ``head`` (see module docstring)."""

    num_classes: int
    spatial_dims: int = 2
    depth: int = 4
    base_width: int = 16
    width_multiplier: int = 2
    convs_per_block: int = 2
    kernel_size: int = 3
    norm: str = "group"
    norm_groups: int = 8
    activation: str = "relu"
    kernel_init: str = "he_normal"
    conv_impl: str = "fast"  # the layers' formulation, one of jaxfcn.models.fast_ops.CONV_IMPLS
    compute_dtype: str = "float32"
    # How the decoder joins each skip: "auto" (the measured rule in __call__), "concat" or "split" (the
    # same function either way; benchmarks/train_step.py --skip-join compares them).
    skip_join: str = "auto"

    @property
    def widths(self) -> list[int]:
        return [self.base_width * self.width_multiplier**level for level in range(self.depth)]

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_parts: Sequence[str] = ()):
        """``train``: batch norms normalise with the batch's statistics and update their running averages,
        except in ``frozen_parts`` (a run's frozen parts), which normalise with their running averages and
        keep them, as at evaluation, so a frozen part computes one fixed function."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected input (N, {'D, ' if self.spatial_dims == 3 else ''}H, W, C), got {x.shape}")
        dtype = jnp.dtype(self.compute_dtype)
        kernels = fast_ops.kernels(self.conv_impl)
        shared = dict(widths=self.widths, spatial_dims=self.spatial_dims, convs=self.convs_per_block,
                      kernel_size=self.kernel_size, norm=self.norm, norm_groups=self.norm_groups,
                      activation=self.activation, kernel_init=self.kernel_init, kernels=kernels,
                      dtype=dtype)
        enc = Encoder(**shared, name="encoder")(x, train and "encoder" not in frozen_parts)
        for level, feat in enumerate(enc[:-1]):
            self.sow("intermediates", f"enc_{level}", feat)
        self.sow("intermediates", "bottleneck", enc[-1])
        # Split the skip off the decoder's first convolutions where measured faster (benchmarks/README.md,
        # "Split skip"): with a frozen encoder, whose skips need no gradient (CPU step 0.82–0.96× on XLA's
        # convolutions, 0.88–0.97× on oneDNN's, 2D and 3D), and in every CPU train step (XLA's: 2D
        # 0.92–0.96×, 3D 0.97–1.06×; oneDNN's: 2D 1.01×, 3D 32³ 1.05–1.08×, 64³ 0.96×, no clear winner).
        # A forward alone is faster concatenated (CPU 64³ 1.06×), and a GPU's full step keeps the
        # concatenation it was measured with.
        if self.skip_join not in SKIP_JOINS:
            raise ValueError(f"unknown skip_join '{self.skip_join}', choose from {', '.join(SKIP_JOINS)}")
        if self.skip_join == "auto":
            split_skip = "encoder" in frozen_parts or (train and jax.default_backend() == "cpu")
        else:
            split_skip = self.skip_join == "split"
        dec = Decoder(**shared, split_skip=split_skip, name="decoder")(enc, train and "decoder" not in frozen_parts)
        for level, feat in zip(reversed(range(1, self.depth - 1)), dec[:-1]):
            self.sow("intermediates", f"dec_{level}", feat)
        self.sow("intermediates", "head_input", dec[-1])
        logits = ConvND(self.num_classes, (1,) * self.spatial_dims, use_bias=True,
                        kernel_init=kernel_initializer(self.kernel_init), dtype=dtype, kernels=kernels,
                        name="head")(dec[-1])
        return logits.astype(jnp.float32)


def layer_names(depth: int) -> list[str]:
    """Names of the sown representations, input side first."""
    return ([f"enc_{i}" for i in range(depth - 1)] + ["bottleneck"]
            + [f"dec_{i}" for i in reversed(range(1, depth - 1))] + ["head_input"])


def build_model(model_config) -> UNet:
    """The UNet described by ``config.model`` (``num_classes`` must be resolved, i.e. > 0)."""
    m = model_config
    if m.num_classes <= 0:
        raise ValueError("config.model.num_classes is not resolved (must be > 0)")
    return UNet(num_classes=m.num_classes, spatial_dims=m.spatial_dims, depth=m.depth, base_width=m.base_width,
                width_multiplier=m.width_multiplier, convs_per_block=m.convs_per_block, kernel_size=m.kernel_size,
                norm=m.norm, norm_groups=m.norm_groups, activation=m.activation, kernel_init=m.kernel_init,
                conv_impl=m.conv_impl, compute_dtype=m.compute_dtype)


def input_shape(model_config, data_config, batch: int = 1) -> tuple[int, ...]:
    spatial = data_config.slice_shape if model_config.spatial_dims == 2 else data_config.patch_shape
    return (batch, *spatial, model_config.in_channels)


def init_variables(model: UNet, rng: jax.Array, shape: tuple[int, ...]):
    """Initial variables (``params`` and, for batch norm, ``batch_stats``) for inputs of ``shape``."""
    return model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
