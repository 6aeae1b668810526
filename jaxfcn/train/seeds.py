"""K seeds in one program: a single-seed train step applied to a state stacked on a leading seed axis.

A K-seed state is the single-seed :class:`~jaxfcn.train.step.TrainState` with every leaf stacked on a new
leading axis of size K (member n is seed S+n). A strategy says how the single-seed step is mapped over
that axis; all strategies compute the same numbers as K separate single-seed steps (tested):

- ``vmap``: ``jax.vmap`` of the step, convolutions as written (``model.conv_impl``, default ``fast``).
  JAX batches an XLA convolution over per-seed kernels into one *grouped* convolution; oneDNN's (``fast``
  on the CPU) batch with the ``per_seed`` rules below, so there the two strategies are one program.
- ``per_seed``: ``jax.vmap`` of the step with ``conv_impl="per_seed"``: every convolution (forward,
  input- and kernel-gradient) is one plain convolution per seed; everything else (norms, activations,
  up-convolutions, loss, Adam) is vmapped into ops K times larger. With a shared batch the first layer's
  forward and kernel-gradient are single convolutions with K·Cout channels.
- ``im2col``: ``jax.vmap`` with ``conv_impl="im2col"`` (convolutions become batched matmuls).
- ``unrolled``: the unchanged single-seed step written out K times in one program (a Python loop at
  trace time): no grouped convolutions and no loop, so every op is exactly the single-seed op, and
  XLA may run the K independent chains side by side. Compile time grows with K.
- ``map``: ``jax.lax.map`` over seeds: a loop running the unchanged single-seed step K times.

Batches: with ``seed_data_order == "shared"`` every seed sees the same batch (B, …); with
``"independent"`` the batch has a leading seed axis (K, B, …). Augmentation inside the step draws from each
member's own key, as in single runs.

Which strategy is fastest depends on the backend; ``--seed-strategy auto`` takes the measured choice of
:func:`choose_seed_strategy` (the figures are in ``benchmarks/README.md``, "Many seeds"). A K-seed run is
built by :func:`jaxfcn.train.programs.build_programs` on a plan with ``num_seeds=K``.

Example::

    plan = plan_devices("none", batch_size=8, num_seeds=8)            # jaxfcn.train.parallel
    programs = build_programs(config, plan)                          # config.train.seed_strategy
    state = plan.stack([programs.initial_state(s) for s in range(8)]) # (8, …) on every leaf
    state, metrics = programs.train_step(plan.place_state(state), batch)   # metrics["loss"].shape == (8,)
    member_3 = unstack_state(state, 3)                               # an ordinary single-seed TrainState
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp

from jaxfcn.errors import UserError

SEED_STRATEGIES = ("vmap", "per_seed", "im2col", "unrolled", "map")

# conv_impl each strategy runs the model with (None: the model's own).
_CONV_IMPL = {"vmap": None, "per_seed": "per_seed", "im2col": "im2col", "unrolled": None, "map": None}

# The fastest strategy per backend in benchmarks/seeds.py (benchmarks/README.md, "Many seeds"). CPU:
# unrolled, whose independent per-seed chains XLA:CPU runs side by side, while grouped convolutions have no
# fast path there (its compile time grows with K; per_seed compiles faster for K well above 8). GPU: vmap,
# one grouped kernel launch per layer instead of K. TPUs: not measured; vmap for the GPU's reason.
_AUTO = {"cpu": "unrolled"}
_AUTO_DEFAULT = "vmap"


def choose_seed_strategy(backend: str | None = None) -> str:
    """The strategy ``--seed-strategy auto`` uses on ``backend`` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return _AUTO.get(backend, _AUTO_DEFAULT)


def check_strategy(strategy: str) -> str:
    """``strategy`` itself, ``auto`` resolved; UserError for unknown names."""
    if strategy == "auto":
        return choose_seed_strategy()
    if strategy not in SEED_STRATEGIES:
        raise UserError(f"--seed-strategy {strategy}: not one of {['auto', *SEED_STRATEGIES]}")
    return strategy


def model_for_strategy(model, strategy: str):
    """``model`` with the convolution formulation ``strategy`` runs (same parameters, same function)."""
    impl = _CONV_IMPL[check_strategy(strategy)]
    return model if impl is None or model.conv_impl == impl else model.clone(conv_impl=impl)


def stack_states(states: Sequence[Any]) -> Any:
    """Stack K pytrees of identical structure on a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def unstack_state(state: Any, index: int) -> Any:
    """Member ``index`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[index], state)


def num_seeds(state: Any) -> int:
    return jax.tree.leaves(state)[0].shape[0]


def stack_step(step_fn: Callable, strategy: str, shared_batch: bool = True) -> Callable:
    """The pure ``(stacked_state, batch) -> (stacked_state, stacked_metrics)`` of a single-seed ``step_fn``.

    ``step_fn(state, batch) -> (state, metrics)`` must be traceable (it may itself be jitted). The
    convolution formulation is whatever ``step_fn``'s model uses (:func:`stacked_step_function` sets it from
    the strategy). ``shared_batch``: the batch has no seed axis (every seed sees it); else (K, B, ...).
    """
    strategy = check_strategy(strategy)
    if strategy == "unrolled":
        return functools.partial(_unrolled_step, step_fn, shared_batch)
    if strategy != "map":
        return jax.vmap(step_fn, in_axes=(0, None if shared_batch else 0))
    if shared_batch:
        return lambda state, batch: jax.lax.map(lambda s: step_fn(s, batch), state)
    return lambda state, batch: jax.lax.map(lambda sb: step_fn(*sb), (state, batch))


def _unrolled_step(step_fn: Callable, shared_batch: bool, state, batch):
    members = [step_fn(unstack_state(state, n), batch if shared_batch else unstack_state(batch, n))
               for n in range(num_seeds(state))]
    return stack_states([m[0] for m in members]), stack_states([m[1] for m in members])


def stacked_step_function(model, config, frozen_parts: Iterable[str] = (), *, strategy: str = "auto",
                          shared_batch: bool = True, axis_name: str | None = None) -> Callable:
    """The pure (unjitted) K-seed step of ``strategy`` built on :func:`jaxfcn.train.step.train_step_function`.

    ``(stacked state, batch) -> (stacked state, {"loss": (K,), "grad_norm": (K,)})``; ``axis_name`` is passed
    to the single-seed step (pmap over devices). Callers jit, shard or pmap it
    (:meth:`jaxfcn.train.parallel.DevicePlan.compile_step`).
    """
    from jaxfcn.train.step import train_step_function

    strategy = check_strategy(strategy)
    model = model_for_strategy(model, strategy)
    return stack_step(train_step_function(model, config, frozen_parts, axis_name=axis_name), strategy, shared_batch)
