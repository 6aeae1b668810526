"""K seeds in one program: a single-seed train step applied to a state stacked on a leading seed axis.

A K-seed state is the single-seed :class:`~jaxfcn.train.step.TrainState` with every leaf stacked on a new
leading axis of size K (member n is seed S+n). A strategy says how the single-seed step is mapped over
that axis; all strategies compute the same numbers as K separate single-seed steps (tested):

- ``vmap``: ``jax.vmap`` of the step, convolutions as written (``model.conv_impl``, default ``xla``).
  JAX batches a convolution over per-seed kernels into one *grouped* convolution.
- ``per_seed``: ``jax.vmap`` of the step with ``conv_impl="per_seed"``: every convolution (forward,
  input- and kernel-gradient) is one plain convolution per seed; everything else (norms, activations,
  up-convolutions, loss, Adam) is vmapped into ops K times larger. With a shared batch the first layer's
  forward and kernel-gradient are single convolutions with K·Cout channels.
- ``im2col``: ``jax.vmap`` with ``conv_impl="im2col"`` (convolutions become batched matmuls).
- ``unrolled``: the unchanged single-seed step written out K times in one program (a Python loop at
  trace time): no grouped convolutions and no loop, so every op is exactly the single-seed op, and
  XLA may run the K independent chains side by side. Compile time grows with K.
- ``map``: ``jax.lax.map`` over seeds: a loop running the unchanged single-seed step K times. (On XLA:CPU
  the convolutions inside the loop body measured ~20× slower than the same convolutions outside it.)

Batches: with ``seed_data_order == "shared"`` every seed sees the same batch (B, …); with
``"independent"`` the batch has a leading seed axis (K, B, …). Augmentation inside the step draws from each
member's own key, as in single runs.

Example::

    strategy = choose_seed_strategy(jax.default_backend())          # what --seed-strategy auto picks
    state = init_seed_states(model, config, seeds=range(8))          # (8, …) on every leaf
    step = make_seeds_train_step(model, config, strategy=strategy)
    state, metrics = step(state, batch)                              # metrics["loss"].shape == (8,)
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

# Measured choice per backend (benchmarks/README.md, "Many seeds"). CPU: unrolled ran K=8 seeds at 0.78x
# (K=2: 0.84x) the per-seed cost of a single-seed step at batch 8, 128², base 16, and K=3 at 0.84x on the
# quick study's small model; per_seed 0.93-1.26x, vmap's grouped convolutions 2.05x, lax.map ~20x. Its
# compile time grows with K (27 s at K=2, 75 s at K=8 for that model): for K well above 8, per_seed
# compiles faster. GPU (one H200, quick model 32², base 8): vmap 0.225x per seed at K=8, per_seed 0.27x,
# unrolled 0.39x: vmap keeps one (grouped) kernel launch per layer instead of K, and cuDNN runs grouped
# convolutions well. TPUs: not measured; vmap for the same reason.
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
    to the single-seed step (pmap over devices). Callers jit, shard or pmap it.
    """
    from jaxfcn.train.step import memoized, train_step_function

    strategy = check_strategy(strategy)
    model = model_for_strategy(model, strategy)
    frozen_parts = tuple(frozen_parts)
    return memoized("stacked_step", model, config, (frozen_parts, strategy, shared_batch, axis_name), lambda: stack_step(
        train_step_function(model, config, frozen_parts, axis_name=axis_name), strategy, shared_batch))


def make_seeds_train_step(model, config, frozen_parts: Iterable[str] = (), strategy: str = "auto",
                          shared_batch: bool | None = None) -> Callable:
    """The jitted K-seed version of :func:`jaxfcn.train.step.make_train_step` (``state`` is donated).

    ``shared_batch`` defaults to ``config.train.seed_data_order == "shared"``. K is the leading axis of the
    state passed in (one compilation per K).
    """
    if shared_batch is None:
        shared_batch = config.train.seed_data_order == "shared"
    step = stacked_step_function(model, config, frozen_parts, strategy=strategy, shared_batch=shared_batch)
    from jaxfcn.models.layers import compiler_options

    return jax.jit(step, donate_argnums=0, compiler_options=compiler_options())


def init_seed_states(model, config, seeds: Iterable[int], frozen_parts: Iterable[str] = (), params=None) -> Any:
    """Stacked initial states; member n equals ``init_train_state`` of a run with ``train.seed = seeds[n]``.

    ``params`` (transfer learning) is shared by every member, as in single runs started from the same source.
    """
    from jaxfcn.train.step import init_train_state, seed_key

    frozen_parts = tuple(frozen_parts)
    keys = jnp.stack([seed_key(s) for s in seeds])
    # One vmapped (hence one compiled) initialisation; threefry draws are the same batched or not.
    return jax.vmap(lambda key: init_train_state(model, config, frozen_parts, params=params, rng=key))(keys)
