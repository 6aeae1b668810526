"""The jitted train step: one compilation, learning, frozen parts, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfcn.models import build_model
from train_helpers import like_real, shapes_dataset
from jaxfcn.train.step import init_train_state, make_eval_step, make_optimizer, make_train_step


@pytest.fixture
def config(tiny_config):
    return like_real(tiny_config)


@pytest.fixture(scope="module")
def batch():
    return next(shapes_dataset(n_train=2, n_val=1, n_test=1).batches(4, seed=0))


def copy_state(state):
    return jax.tree.map(jnp.copy, state)  # the step donates its input state


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_compiles_once_and_learns(config, batch):
    assert config.data.augment  # the data layer's augmentation runs inside the step
    model = build_model(config.model)
    state = init_train_state(model, config)
    train_step = make_train_step(model, config)
    before = train_step._cache_size()  # the traced step is shared in-process by identical configs
    losses = []
    for t in range(12):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
        if t == 0:
            after_first = train_step._cache_size()
    assert after_first - before <= 1 and train_step._cache_size() == after_first  # no step after the first traces
    assert int(state.step) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_frozen_step_has_no_encoder_backward(config, batch):
    """Differentiating only the trainable subtree removes the encoder's backward pass from the program."""
    model = build_model(config.model)
    flops = {}
    for frozen in ((), ("encoder",)):
        state = init_train_state(model, config, frozen)
        flops[frozen] = make_train_step(model, config, frozen).lower(state, batch).cost_analysis()["flops"]
    assert flops[("encoder",)] < 0.8 * flops[()]


def test_step_is_a_pure_function_of_state_and_batch(config, batch):
    model = build_model(config.model)
    state = init_train_state(model, config)
    train_step = make_train_step(model, config)
    a, ma = train_step(copy_state(state), batch)
    b, mb = train_step(copy_state(state), batch)
    assert leaves_equal(a, b) and float(ma["loss"]) == float(mb["loss"])
    # a different seed changes the initialisation
    config.train.seed = 1
    other = init_train_state(model, config)
    assert not leaves_equal(other.params, state.params)


def test_batch_norm_of_a_frozen_part_stays_frozen(tiny_config, batch):
    """A frozen encoder's running statistics are bitwise unchanged by training, the decoder's follow the
    data, and the frozen encoder computes in training the function it computes at evaluation."""
    tiny_config.model.norm = "batch"
    tiny_config.data.augment = False
    model = build_model(tiny_config.model)
    state = init_train_state(model, tiny_config, ("encoder",))
    before = copy_state(state.batch_stats)
    assert jax.tree.leaves(before["encoder"]) and jax.tree.leaves(before["decoder"])
    step = make_train_step(model, tiny_config, ("encoder",))
    for _ in range(2):
        state, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"])
    assert leaves_equal(state.batch_stats["encoder"], before["encoder"])
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.batch_stats["decoder"]),
                                                        jax.tree.leaves(before["decoder"])))

    def bottleneck(**mode):
        _, out = model.apply(state.variables(), batch["image"], **mode, mutable=["intermediates", "batch_stats"])
        return np.asarray(out["intermediates"]["bottleneck"][0])

    np.testing.assert_array_equal(bottleneck(train=True, frozen_parts=("encoder",)), bottleneck(train=False))
    assert not np.allclose(bottleneck(train=True), bottleneck(train=False))  # a trained encoder normalises per batch
    counts = make_eval_step(model, 4)(state.variables(), {**batch, "weight": np.ones(4, np.float32)})
    assert int(counts[:, 2].sum()) == batch["label"].size


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_choices_and_warmup(tiny_config, name):
    """Every optimiser runs under the partition; warmup starts at learning rate 0. (A toy param tree keeps
    this test free of model compilations.)"""
    t = tiny_config.train
    t.optimizer, t.weight_decay, t.grad_clip, t.warmup_steps = name, 1e-4, 1.0, 2
    params = {"encoder": {"k": jnp.ones(3)}, "decoder": {"k": jnp.ones(2)}, "head": {"k": jnp.ones(1)}}
    tx = make_optimizer(t, ("encoder",))
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    updates, opt_state = update(grads, opt_state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))  # lr(0) = 0
    updates, opt_state = update(grads, opt_state, params)
    assert float(jnp.abs(updates["decoder"]["k"]).min()) > 0
    assert float(jnp.abs(updates["encoder"]["k"]).max()) == 0.0  # frozen
    # the frozen part holds no optimiser state at all
    parts = [{getattr(k, "key", None) for k in path} for path, _ in jax.tree_util.tree_leaves_with_path(opt_state)]
    assert not any("encoder" in p for p in parts) and any("decoder" in p for p in parts)
