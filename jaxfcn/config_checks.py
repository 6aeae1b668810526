"""Value checks of a run's config that a type check cannot do, made before anything is written.

Each failure is a one-line :class:`~jaxfcn.errors.UserError` naming the key. Every allowed-value list is
taken from the module that defines the values (optimisers from :mod:`jaxfcn.train.step`, losses from
:mod:`jaxfcn.train.losses`, parts from :mod:`jaxfcn.partition`, layer choices from :mod:`jaxfcn.models`),
so a new value needs one edit.

Example::

    check_config(config)                       # UserError for e.g. train.optimizer='adan'
    config = resolve_config(config, dataset.info)   # num_classes / in_channels from the dataset
"""
from __future__ import annotations

import copy
import os

import numpy as np

from jaxfcn.errors import UserError
from jaxfcn.partition import PARTS

NORMS = ("group", "instance", "batch", "none")
SEED_DATA_ORDERS = ("shared", "independent")
COMPUTE_DTYPES = ("float32", "bfloat16")


def parse_snapshot_steps(spec, total_steps: int) -> list[int]:
    """Snapshot steps in (0, total_steps]: ``"log:K"`` = K log-spaced steps from 1 to total_steps
    (rounded, duplicates merged), or a comma-separated list / sequence of steps. Step 0 and the final step
    are always saved in addition."""
    if isinstance(spec, str) and spec.startswith("log:"):
        try:
            k = int(spec[4:])
        except ValueError:
            raise UserError(f"train.snapshot_steps '{spec}': expected 'log:K' with an integer K") from None
        if k <= 0 or total_steps <= 0:
            return []
        steps = np.unique(np.round(np.logspace(0, np.log10(total_steps), k)).astype(int))
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            steps = [int(s) for s in items if str(s).strip()]
        except ValueError:
            raise UserError(f"train.snapshot_steps '{spec}': expected 'log:K' or a list of steps like '10,100'") from None
    return sorted({int(s) for s in steps if 0 < int(s) <= total_steps})


def check_config(config) -> None:
    """Value checks a type check cannot do. Raises UserError naming the key."""
    from jaxfcn.models.fast_ops import CONV_IMPLS
    from jaxfcn.models.layers import KERNEL_INITS
    from jaxfcn.train.losses import LOSSES
    from jaxfcn.train.step import LR_SCHEDULES, OPTIMIZERS

    t, m = config.train, config.model
    choices = [("train.optimizer", t.optimizer, OPTIMIZERS), ("train.lr_schedule", t.lr_schedule, LR_SCHEDULES),
               ("train.loss", t.loss, LOSSES), ("train.seed_data_order", t.seed_data_order, SEED_DATA_ORDERS),
               ("model.norm", m.norm, NORMS), ("model.spatial_dims", m.spatial_dims, (2, 3)),
               ("model.kernel_init", m.kernel_init, tuple(KERNEL_INITS)), ("model.conv_impl", m.conv_impl, CONV_IMPLS),
               ("model.compute_dtype", m.compute_dtype, COMPUTE_DTYPES)]
    for key, value, allowed in choices:
        if value not in allowed:
            raise UserError(f"{key}: '{value}' is not one of {list(allowed)}")
    import jax

    if not callable(getattr(jax.nn, m.activation, None)):
        raise UserError(f"model.activation: '{m.activation}' is not a jax.nn function (e.g. relu, gelu, silu)")
    for key in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
        if t[key] <= 0:
            raise UserError(f"train.{key}: must be positive (got {t[key]})")
    if m.depth < 1 or m.base_width < 1:
        raise UserError("model.depth and model.base_width must be positive")
    if not 0.0 <= float(config.data.foreground_batch_fraction) <= 1.0:
        raise UserError(f"data.foreground_batch_fraction={config.data.foreground_batch_fraction}: must be in [0, 1]")
    if config.data.dims != m.spatial_dims:
        raise UserError(f"data.dims={config.data.dims} but model.spatial_dims={m.spatial_dims}; they must agree")
    for key, parts in (("train.freeze", t.freeze), ("train.transfer_parts", t.transfer_parts)):
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise UserError(f"{key}: unknown part(s) {unknown}; choose from {list(PARTS)}")
    if set(t.freeze) >= set(PARTS):
        raise UserError("train.freeze: freezing every part leaves nothing to train")
    parse_snapshot_steps(t.snapshot_steps, t.steps)
    if t.init != "random" and not os.path.isdir(t.init):
        raise UserError(f"--init {t.init}: not 'random' and not a directory")


def resolve_config(config, info):
    """A copy of ``config`` with ``num_classes`` / ``in_channels`` taken from the dataset (checked if set)."""
    config = copy.deepcopy(config)
    for key, value in (("num_classes", info.num_classes), ("in_channels", info.in_channels)):
        configured = config.model[key]
        if configured and configured != value:
            raise UserError(f"model.{key}={configured} but dataset '{info.name}' has {value}")
        config.model[key] = value
    if info.spatial_dims != config.model.spatial_dims:
        raise UserError(f"dataset '{info.name}' has {info.spatial_dims}D examples but model.spatial_dims="
                        f"{config.model.spatial_dims}")
    if config.train.init != "random":
        config.train.init = os.path.abspath(config.train.init)
    return config
