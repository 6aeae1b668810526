"""The jitted train step: a pure function ``(state, batch) -> (state, metrics)``.

``TrainState`` is a plain pytree (params, opt_state, batch_stats, step, rng), so the same step can be
``vmap``-ed over a leading seed axis or sharded over devices by :mod:`jaxfcn.train.seeds` /
:mod:`jaxfcn.train.parallel` without change.

Freezing (the paper's "frozen random encoder" regime): the optimiser is ``optax.partition`` over the labels
of :func:`jaxfcn.partition.param_labels`, with ``optax.set_to_zero()`` for frozen parts, and the loss is
differentiated only with respect to the trainable subtree (split → grad → merge). So the frozen part's
backward pass is never built, it holds no optimiser state, and it stays bitwise equal to its initial value.
With ``model.norm="batch"`` a frozen part also runs as at evaluation: its batch norms normalise with their
running averages and keep them bitwise (PyTorch's ``part.eval()`` of a frozen backbone), so the frozen part
computes the same fixed function in training and in evaluation.

Randomness: the augmentation key of step t is ``fold_in(state.rng, t)`` where ``state.rng`` is
``key(train.seed)``; a resumed run therefore draws exactly the augmentations of an uninterrupted one.

Example::

    model = build_model(config.model)
    state = init_train_state(model, config, frozen_parts=("encoder",))
    train_step = make_train_step(model, config, frozen_parts=("encoder",))
    state, metrics = train_step(state, {"image": x, "label": y})   # `state` is donated: do not reuse it
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxfcn.models import init_variables, input_shape
from jaxfcn.models.layers import compiler_options
from jaxfcn.partition import check_parts, merge_params, param_labels, split_params
from jaxfcn.train.losses import segmentation_loss
from jaxfcn.train.metrics import confusion_counts

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
# XLA options for run-once programs where compile time dominates (initialisation); use fast_compile().
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_compile() -> dict:
    """:data:`FAST_COMPILE` less any option the installed XLA rejects (see jaxfcn.runtime)."""
    from jaxfcn.runtime import supported_compiler_options

    return supported_compiler_options(FAST_COMPILE)


@flax.struct.dataclass
class TrainState:
    params: Any  # {"encoder", "decoder", "head"}
    opt_state: Any
    batch_stats: Any  # {} unless model.norm == "batch"
    step: jax.Array  # int32 scalar: number of updates applied
    rng: jax.Array  # uint32 key data of key(train.seed)

    def variables(self) -> dict:
        """The flax variables for ``model.apply``."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then constant or cosine decay to 0 at ``train.steps``."""
    t = train_config
    if t.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown train.lr_schedule '{t.lr_schedule}', choose from {list(LR_SCHEDULES)}")
    if t.lr_schedule == "constant":
        main = optax.constant_schedule(t.learning_rate)
    else:
        main = optax.cosine_decay_schedule(t.learning_rate, max(t.steps - t.warmup_steps, 1))
    if t.warmup_steps <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps), main], [t.warmup_steps])


def base_optimizer(train_config) -> optax.GradientTransformation:
    """The optimiser of the trainable parts. ``weight_decay`` is decoupled for adamw, L2 for adam/sgd."""
    t = train_config
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown train.optimizer '{t.optimizer}', choose from {list(OPTIMIZERS)}")
    lr = learning_rate_schedule(t)
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    if t.weight_decay > 0 and t.optimizer != "adamw":
        parts.append(optax.add_decayed_weights(t.weight_decay))
    if t.optimizer == "adam":
        parts.append(optax.adam(lr))
    elif t.optimizer == "adamw":
        parts.append(optax.adamw(lr, weight_decay=t.weight_decay))
    else:
        parts.append(optax.sgd(lr, momentum=t.momentum or None))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]


def make_optimizer(train_config, frozen_parts: Iterable[str] = ()) -> optax.GradientTransformation:
    """``optax.partition``: the base optimiser for trainable parts, ``set_to_zero`` for frozen ones."""
    frozen_parts = check_parts(frozen_parts, "frozen part")

    def labels(params):
        return jax.tree.map(lambda part: "frozen" if part in frozen_parts else "trainable", param_labels(params))

    return optax.partition({"trainable": base_optimizer(train_config), "frozen": optax.set_to_zero()}, labels)


def seed_key(seed: int) -> jax.Array:
    """The run's base key as raw uint32 data (plain arrays checkpoint and vmap without special handling)."""
    return jax.random.key_data(jax.random.key(seed))


def init_train_state(model, config, frozen_parts: Iterable[str] = (), params=None, rng: jax.Array | None = None) -> TrainState:
    """Initial state. ``params`` replaces the fresh params (transfer); ``rng`` defaults to ``key(train.seed)``.

    The initial params are drawn from ``fold_in(key(seed), 0)``; the step keys from ``key(seed)`` folded
    with the step number, which starts at 1 (so init and augmentation never share a key).
    """
    base = seed_key(config.train.seed) if rng is None else rng
    return init_program(model, config, frozen_parts)(base, params)


def init_program(model, config, frozen_parts: Iterable[str] = ()) -> Callable:
    """Jitted ``(rng, params) -> TrainState``: the initial state of a run whose base key is ``rng``
    (:func:`seed_key`); ``params`` None draws fresh params from ``fold_in(rng, 0)``, else replaces them.

    The values are a deterministic function of (config, rng): this is the only path that initialises a
    run. Compiled without XLA's expensive backend passes (:data:`FAST_COMPILE`): it runs once per run, and
    optimising the initialisers' threefry/erfinv code costs XLA:CPU far more than it saves.
    """
    frozen_parts = check_parts(frozen_parts, "frozen part")
    shape = input_shape(config.model, config.data, batch=1)
    tx = make_optimizer(config.train, frozen_parts)

    @functools.partial(jax.jit, compiler_options=fast_compile())
    def init(rng, params):
        variables = init_variables(model, jax.random.fold_in(jax.random.wrap_key_data(rng), 0), shape)
        params = variables["params"] if params is None else params
        return TrainState(params=params, opt_state=tx.init(params), batch_stats=variables.get("batch_stats", {}),
                          step=jnp.zeros((), jnp.int32), rng=rng)

    return init


def _augmenter(data_config) -> Callable[[jax.Array, dict], dict]:
    if not data_config.augment:
        return lambda rng, batch: batch
    from jaxfcn.data.augmentation import augment_batch  # the data layer's pure, jittable augmentation

    return lambda rng, batch: augment_batch(rng, batch, data_config)


def make_train_step(model, config, frozen_parts: Iterable[str] = ()) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted step ``(state, batch) -> (new_state, {"loss", "grad_norm"})``; ``state`` is donated.

    ``batch`` is ``{"image": (B, *S, C) float32, "label": (B, *S) int32}`` with the same shapes every step
    (one compilation per run). Augmentation (``data.augment``) runs inside the step with key
    ``fold_in(state.rng, state.step + 1)``. ``grad_norm`` is the global norm of the trainable gradients.
    """
    return jax.jit(train_step_function(model, config, frozen_parts), donate_argnums=0,
                   compiler_options=compiler_options())


def train_step_function(model, config, frozen_parts: Iterable[str] = (), axis_name: str | None = None):
    """The pure (unjitted) step of :func:`make_train_step`, for callers that vmap, shard or pmap it.

    ``axis_name``: the step runs inside ``pmap`` over that axis with a shard of the batch per device, and
    computes exactly the one-device step of the whole batch: the batch is all-gathered to augment it
    with the one-device random draws, each device runs the model on its own shard, the logits are
    all-gathered so the (batch-pooled) loss is the global one, and the gradients are averaged (every
    device differentiates the same global loss through its shard, which the all-gather's transpose
    counts once per device). BatchNorm normalises with per-shard statistics (flax's usual pmap
    behaviour), so only its running averages, averaged over devices, are shared.
    """
    frozen_parts = check_parts(frozen_parts, "frozen part")
    tx = make_optimizer(config.train, frozen_parts)
    augment = _augmenter(config.data)
    train_config = config.train
    use_batch_stats = config.model.norm == "batch"

    def loss_fn(trainable, frozen, batch_stats, image, label):
        variables = {"params": merge_params(trainable, frozen)}
        if use_batch_stats:
            variables["batch_stats"] = batch_stats
            # Frozen parts run as at evaluation: their batch norms use, and keep, their running averages.
            logits, updated = model.apply(variables, image, train=True, frozen_parts=frozen_parts,
                                          mutable=["batch_stats"])
            batch_stats = updated["batch_stats"]
        else:
            logits = model.apply(variables, image, train=True)
        if axis_name is not None:
            logits = jax.lax.all_gather(logits, axis_name, axis=0, tiled=True)
        return segmentation_loss(logits, label, train_config), batch_stats

    def train_step(state: TrainState, batch: dict):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step + 1)
        batch = {"image": batch["image"], "label": batch["label"]}
        if axis_name is None:
            batch = augment(step_key, batch)
            image, label = batch["image"], batch["label"]
        else:
            shard = batch["image"].shape[0]
            batch = augment(step_key, jax.lax.all_gather(batch, axis_name, axis=0, tiled=True))
            label = batch["label"]
            image = jax.lax.dynamic_slice_in_dim(batch["image"], jax.lax.axis_index(axis_name) * shard, shard)
        trainable, frozen = split_params(state.params, frozen_parts)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, frozen, state.batch_stats, image, label)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        # The frozen parts' running statistics are passed through as they came in (bitwise: not even
        # the device average of equal values is taken for them).
        new_stats, _ = split_params(batch_stats, frozen_parts)
        _, frozen_stats = split_params(state.batch_stats, frozen_parts)
        batch_stats = merge_params(new_stats, frozen_stats)
        # Frozen leaves get zero "gradients" only to give optax.partition a full tree; set_to_zero ignores
        # them and XLA removes them. The update is applied to the trainable subtree alone, so frozen
        # params are passed through untouched (bitwise).
        full_grads = merge_params(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
        trainable = optax.apply_updates(trainable, {k: updates[k] for k in trainable})
        new_state = state.replace(params=merge_params(trainable, frozen), opt_state=opt_state,
                                  batch_stats=batch_stats, step=state.step + 1)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_eval_step(model, num_classes: int) -> Callable[[dict, dict], jax.Array]:
    """Jitted ``(variables, batch) -> (K, 3)`` pooled counts of :func:`~jaxfcn.train.metrics.confusion_counts`.

    The model and class count are static arguments of one module-level function, so every call with an
    equal model (flax modules compare by value) shares JAX's jit cache: the runs of a study trace it once.
    """
    return functools.partial(jax.jit(_eval_counts, static_argnums=(0, 1), compiler_options=compiler_options()),
                             model, num_classes)


def _eval_counts(model, num_classes: int, variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    return confusion_counts(jnp.argmax(logits, -1), batch["label"], num_classes, batch.get("weight"))
