"""Segmentation losses: soft Dice, cross-entropy, and their weighted sum.

Notation: ``logits`` (N, *S, K) float, ``labels`` (N, *S) int in [0, K), ``p = softmax(logits)``,
``y = one_hot(labels, K)``, and an optional per-example ``weight`` (N,) (0 drops an example, e.g. batch padding).
Sums ``Σ`` run over the examples and all voxels (the nnU-Net "batch Dice").

- :func:`cross_entropy`: ``Σ_n w_n Σ_v −log p[n, v, labels[n, v]] / (Σ_n w_n · |S|)`` (mean over voxels).
- :func:`soft_dice_loss`: ``1 − mean_{c=1..K−1} D_c`` with
  ``D_c = (2 Σ w p_c y_c + ε) / (Σ w p_c + Σ w y_c + ε)``, ``ε = 1e-5``, background (class 0) excluded.
  A class absent from the batch gives ``D_c = ε / (Σ p_c + ε)``, so the loss still pushes its
  probability mass to zero.
- :func:`segmentation_loss`: ``train.loss`` picks ``dice_ce`` = ``dice_weight · dice + ce_weight · ce``,
  ``dice`` = ``dice_weight · dice`` or ``ce`` = ``ce_weight · ce``.

Example::

    loss = segmentation_loss(logits, labels, config.train)   # scalar float32
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DICE_EPSILON = 1e-5
LOSSES = ("dice_ce", "dice", "ce")


def _example_weight(weight, labels) -> jax.Array:
    """Per-voxel weights (N, *S, 1): the per-example weight broadcast over voxels (1 when None)."""
    if weight is None:
        return jnp.ones(labels.shape + (1,), jnp.float32)
    w = jnp.asarray(weight, jnp.float32).reshape((-1,) + (1,) * labels.ndim)
    return jnp.broadcast_to(w, labels.shape + (1,))


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean voxel-wise cross-entropy (see module docstring)."""
    logits = logits.astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # Picking log p[label] by a one-hot product, not take_along_axis: the same value (the other terms are
    # exact zeros), and a gradient that is one elementwise pass instead of a scatter-add (XLA:CPU).
    y = jax.nn.one_hot(labels, logits.shape[-1], dtype=log_p.dtype)
    return weighted_voxel_mean(-jnp.sum(log_p * y, axis=-1, keepdims=True), labels, weight)


def weighted_voxel_mean(values: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """``Σ_n w_n Σ_v values[n, v] / (Σ_n w_n · |S|)`` for per-voxel ``values`` (N, *S, 1)."""
    w = _example_weight(weight, labels)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def dice_per_class(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None,
                   epsilon: float = DICE_EPSILON) -> jax.Array:
    """Soft Dice ``D_c`` of every class c = 0..K−1 (K,), summed over examples and voxels."""
    num_classes = logits.shape[-1]
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    w = _example_weight(weight, labels)
    axes = tuple(range(labels.ndim))
    intersection = jnp.sum(w * p * y, axis=axes)
    total = jnp.sum(w * p, axis=axes) + jnp.sum(w * y, axis=axes)
    return (2.0 * intersection + epsilon) / (total + epsilon)


def soft_dice_loss(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """``1 − mean`` of the foreground classes' soft Dice (see module docstring)."""
    if logits.shape[-1] < 2:
        raise ValueError("soft Dice needs at least 2 classes (background + foreground)")
    return 1.0 - jnp.mean(dice_per_class(logits, labels, weight)[1:])


def segmentation_loss(logits: jax.Array, labels: jax.Array, train_config, weight: jax.Array | None = None) -> jax.Array:
    """The training loss selected by ``train_config.loss`` with its weights (see module docstring)."""
    kind = train_config.loss
    if kind not in LOSSES:
        raise ValueError(f"unknown train.loss '{kind}', choose from {list(LOSSES)}")
    total = jnp.zeros((), jnp.float32)
    if kind in ("dice_ce", "dice"):
        total = total + train_config.dice_weight * soft_dice_loss(logits, labels, weight)
    if kind in ("dice_ce", "ce"):
        total = total + train_config.ce_weight * cross_entropy(logits, labels, weight)
    return total
