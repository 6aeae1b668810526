"""Training with the twin: the PyTorch loss equals jaxfcn's, and a few Adam steps stay together."""
from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxfcn.interop.torch import (TorchUNet, flax_to_torch, freeze, make_optimizer,  # noqa: E402
                                  segmentation_loss, set_learning_rate, torch_to_flax)
from jaxfcn.models import build_model  # noqa: E402
from jaxfcn.train import losses  # noqa: E402
from jaxfcn.train.step import init_train_state, learning_rate_schedule, make_train_step  # noqa: E402
from train_helpers import shapes_dataset  # noqa: E402


@pytest.mark.parametrize("kind", ["dice_ce", "dice", "ce"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_and_its_gradient_match(tiny_config, kind, spatial_dims):
    rng = np.random.default_rng(spatial_dims)
    shape = (3,) + (6,) * spatial_dims
    logits = rng.normal(size=shape + (4,)).astype(np.float32)
    labels = rng.integers(0, 3, size=shape).astype(np.int32)  # class 3 absent: the ε term matters
    weight = np.array([1.0, 0.0, 1.0], np.float32)
    t = tiny_config.train
    t.loss, t.dice_weight, t.ce_weight = kind, 0.7, 1.3

    value, grad = jax.jit(jax.value_and_grad(lambda z: losses.segmentation_loss(z, labels, t, weight)))(logits)
    z = torch.from_numpy(np.moveaxis(logits, -1, 1).copy()).requires_grad_(True)
    ours = segmentation_loss(z, torch.from_numpy(labels), t, torch.from_numpy(weight))
    ours.backward()
    np.testing.assert_allclose(float(ours), float(value), rtol=1e-6)
    np.testing.assert_allclose(np.moveaxis(z.grad.numpy(), 1, -1), grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("frozen", [(), ("encoder",)])
def test_adam_steps_agree_and_frozen_parts_stay_put(tiny_config, frozen):
    """Same init, same batches, Adam with jaxfcn's cosine schedule: three steps from each framework."""
    c = tiny_config
    c.data.augment = False  # augmentation runs inside the JAX step; PyTorch would need the same draws
    c.train.lr_schedule, c.train.steps = "cosine", 3
    data = shapes_dataset(n_train=2, n_val=1, n_test=1)
    c.model.num_classes = data.info.num_classes
    model = build_model(c.model)
    state = init_train_state(model, c, frozen)
    init = jax.tree.map(np.array, state.params)  # copies: the step donates `state`
    step = make_train_step(model, c, frozen)

    net = TorchUNet(c).train()
    net.load_state_dict(flax_to_torch(init, c))
    opt = make_optimizer(freeze(net, frozen), c.train)
    schedule = learning_rate_schedule(c.train)
    for t, batch in zip(range(3), data.batches(c.train.batch_size, seed=0)):
        state, metrics = step(state, batch)
        set_learning_rate(opt, float(schedule(t)))
        opt.zero_grad()
        loss = segmentation_loss(net(torch.from_numpy(np.moveaxis(batch["image"], -1, 1).copy())),
                                 torch.from_numpy(batch["label"]), c.train)
        loss.backward()
        opt.step()
        np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-4)

    ours = torch_to_flax(net.state_dict(), c)
    # Adam's first updates are ±lr per weight wherever |g| ≫ ε, so a gradient whose sign flips between
    # frameworks would move a weight by up to 2·lr = 2e-3. Measured: max 1.2e-7 (fp32 rounding of O(1)
    # weights); 1e-5 = 1 % of one step would catch any mismatch in loss, schedule or Adam constants.
    diffs = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)), ours, state.params)
    assert max(float(d.max()) for d in jax.tree.leaves(diffs)) < 1e-5
    for part in frozen:
        jax.tree.map(np.testing.assert_array_equal, ours[part], init[part])
        jax.tree.map(np.testing.assert_array_equal, state.params[part], init[part])
