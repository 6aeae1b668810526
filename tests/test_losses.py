"""Losses against hand-computed values and independent formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfcn.config import base_config
from jaxfcn.train import losses

# Jitted once each: op-by-op (eager) execution compiles every small op separately, which is slower.
cross_entropy = jax.jit(losses.cross_entropy)
soft_dice_loss = jax.jit(losses.soft_dice_loss)
dice_per_class = jax.jit(losses.dice_per_class)


def segmentation_loss(logits, labels, cfg):
    return jax.jit(lambda a, b: losses.segmentation_loss(a, b, cfg))(logits, labels)

RNG = np.random.default_rng(0)  # numpy, not jax.random: XLA:CPU compiles 4D threefry draws very slowly
BIG = 50.0  # logits this large give one-hot probabilities to float32 precision


def hard_logits(pred, num_classes):
    return BIG * jax.nn.one_hot(jnp.asarray(pred), num_classes) - BIG / 2


def test_cross_entropy_matches_optax():
    logits = jnp.asarray(RNG.normal(size=(2, 5, 6, 4)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 4, (2, 5, 6)), jnp.int32)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(cross_entropy(logits, labels), expected, rtol=1e-6)


def test_soft_dice_hand_case():
    # foreground: reference has 4 voxels, prediction 4 voxels, 2 of them shared → Dice 2·2/(4+4) = 0.5
    ref = np.zeros((1, 4, 4), np.int32)
    ref[0, 0, :4] = 1
    pred = np.zeros((1, 4, 4), np.int32)
    pred[0, 0, 2:4] = 1
    pred[0, 1, 0:2] = 1
    loss = soft_dice_loss(hard_logits(pred, 2), jnp.asarray(ref))
    np.testing.assert_allclose(loss, 0.5, atol=1e-5)
    # background is excluded: its Dice (10/12·…) does not enter the loss
    d = dice_per_class(hard_logits(pred, 2), jnp.asarray(ref))
    np.testing.assert_allclose(d[0], 2 * 10 / 24, atol=1e-5)


def test_perfect_prediction_has_zero_loss():
    labels = jnp.asarray(RNG.integers(0, 3, (2, 8, 8)), jnp.int32)
    logits = hard_logits(labels, 3)
    cfg = base_config().train
    assert float(segmentation_loss(logits, labels, cfg)) < 1e-4


def test_weight_zero_drops_an_example():
    logits = jnp.asarray(RNG.normal(size=(2, 6, 6, 3)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, (2, 6, 6)), jnp.int32)
    w = jnp.array([1.0, 0.0])
    for fn in (cross_entropy, soft_dice_loss):
        np.testing.assert_allclose(fn(logits, labels, w), fn(logits[:1], labels[:1]), rtol=1e-5)


@pytest.mark.parametrize("kind, dice_w, ce_w", [("dice_ce", 0.5, 2.0), ("dice", 1.0, 1.0), ("ce", 1.0, 3.0)])
def test_segmentation_loss_combines_terms(kind, dice_w, ce_w):
    cfg = base_config().train
    cfg.loss, cfg.dice_weight, cfg.ce_weight = kind, dice_w, ce_w
    logits = jnp.asarray(RNG.normal(size=(2, 6, 6, 3)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, (2, 6, 6)), jnp.int32)
    d, ce = soft_dice_loss(logits, labels), cross_entropy(logits, labels)
    expected = {"dice_ce": dice_w * d + ce_w * ce, "dice": dice_w * d, "ce": ce_w * ce}[kind]
    np.testing.assert_allclose(segmentation_loss(logits, labels, cfg), expected, rtol=1e-6)


def test_unknown_loss_is_refused():
    cfg = base_config().train
    cfg.loss = "focal"
    with pytest.raises(ValueError, match="train.loss"):
        losses.segmentation_loss(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2), jnp.int32), cfg)


def test_dice_gradient_is_finite_for_absent_class():
    labels = jnp.zeros((1, 4, 4), jnp.int32)  # classes 1 and 2 absent
    g = jax.jit(jax.grad(lambda x: losses.soft_dice_loss(x, labels)))(jnp.zeros((1, 4, 4, 3)))
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
