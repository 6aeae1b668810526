"""Orbax checkpoints of a run: exact round trip, retention (latest N + best), snapshots, load_params."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfcn.errors import UserError
from jaxfcn.train import checkpoint
from jaxfcn.train.step import TrainState, make_optimizer, seed_key


def toy_state(step: int, value: float = 0.0) -> TrainState:
    """A TrainState with a real partitioned-optimiser state (no model: no compilation needed)."""
    params = {"encoder": {"k": jnp.full((2, 3), value)}, "decoder": {"k": jnp.full((3,), value)},
              "head": {"k": jnp.full((1,), value), "b": jnp.asarray([-0.0])}}
    tx = make_optimizer(optax_config(), ("encoder",))
    return TrainState(params=params, opt_state=tx.init(params), batch_stats={}, step=jnp.asarray(step, jnp.int32),
                      rng=seed_key(3))


def optax_config():
    from jaxfcn.config import base_config

    return base_config().train


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype
                                      for x, y in zip(la, lb))


def test_state_round_trip_is_exact(tmp_path):
    state = toy_state(5, value=np.float32(1 / 3))
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 0.125 if x.dtype == jnp.float32 else x, state.opt_state))
    manager = checkpoint.state_manager(str(tmp_path))
    checkpoint.save_state(manager, state, val_dice=0.5)
    restored = checkpoint.restore_state(manager, toy_state(0))
    manager.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert leaves_equal(restored, state)
    assert np.signbit(restored.params["head"]["b"][0])  # -0.0 survives: bitwise, not just equal


def test_retention_keeps_latest_and_best(tmp_path):
    manager = checkpoint.state_manager(str(tmp_path), keep=2)
    for step, dice in [(1, 0.2), (2, 0.9), (3, None), (4, 0.4), (5, 0.3), (6, None)]:
        checkpoint.save_state(manager, toy_state(step), val_dice=dice)
    checkpoint.save_state(manager, toy_state(6))  # an existing step is left alone
    manager.close()
    assert checkpoint.checkpoint_steps(str(tmp_path)) == [2, 5, 6]
    assert checkpoint.best_checkpoint_step(str(tmp_path)) == 2


def test_load_params_prefers_snapshots_and_ignores_partial_saves(tmp_path):
    workdir = str(tmp_path)
    states = checkpoint.state_manager(workdir)
    snaps = checkpoint.snapshot_manager(workdir)
    for step in (0, 10):
        checkpoint.save_snapshot(snaps, step, {"params": toy_state(step, value=step).params})
    checkpoint.save_state(states, toy_state(12, value=12.0), val_dice=0.7)
    states.close()
    snaps.close()
    # a save cut short by kill -9 leaves only orbax's temporary directory: it is not a step
    os.makedirs(os.path.join(workdir, "checkpoints", "20.orbax-checkpoint-tmp-1234"))
    assert checkpoint.snapshot_steps(workdir) == [0, 10]
    assert checkpoint.checkpoint_steps(workdir) == [12]
    assert float(checkpoint.load_params(workdir, 10)["decoder"]["k"][0]) == 10.0
    assert float(checkpoint.load_params(workdir)["decoder"]["k"][0]) == 12.0  # latest anywhere
    assert float(checkpoint.load_params(workdir, "best")["decoder"]["k"][0]) == 12.0
    assert list(checkpoint.load_params(workdir, 0)) == ["encoder", "decoder", "head"]
    with pytest.raises(UserError, match="no parameters saved at step 5"):
        checkpoint.load_params(workdir, 5)


def test_empty_workdir_has_no_params(tmp_path):
    assert checkpoint.snapshot_steps(str(tmp_path)) == []
    with pytest.raises(UserError, match="no saved parameters"):
        checkpoint.load_params(str(tmp_path))
