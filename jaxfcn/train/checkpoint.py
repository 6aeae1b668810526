"""Orbax checkpoints of a run: full train states for resuming, parameter snapshots for analysis.

- ``WORKDIR/checkpoints/``: an orbax ``CheckpointManager`` of the whole :class:`~jaxfcn.train.step.TrainState`
  (params, optimiser state, batch stats, step, rng). Saves are synchronous and atomic (orbax writes to a
  temporary directory and renames it), so a process killed at any moment leaves only complete
  checkpoints. Kept: the latest ``train.keep_checkpoints`` plus the one with the best validation Dice
  (checkpoints saved at a validation step carry ``{"val_dice": ...}`` as orbax metrics).
- ``WORKDIR/snapshots/``: ``{"params", "batch_stats"}`` at step 0, at the ``train.snapshot_steps`` and at the
  final step; all kept. The analysis (filter dynamics, CKA over training) reads these.

Example::

    steps = snapshot_steps("runs/tissue")          # [0, 1, 3, 10, ..., 2000]
    params0 = load_params("runs/tissue", step=0)   # {"encoder", "decoder", "head"}
    final = load_params("runs/tissue")             # the latest params of the run
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxfcn.errors import UserError

CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"
BEST_METRIC = "val_dice"


def _best_metric(metrics) -> float:
    return float(metrics[BEST_METRIC])


def state_manager(workdir: str, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """The manager of full train states (latest ``keep`` + best by validation Dice)."""
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=max(keep, 1)),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False, best_fn=_best_metric, best_mode="max", read_only=read_only,
        create=not read_only, cleanup_tmp_directories=not read_only,
        preservation_policy=None if read_only else policy)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options)


def snapshot_manager(workdir: str, read_only: bool = False) -> ocp.CheckpointManager:
    """The manager of parameter snapshots (every saved step is kept)."""
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, read_only=read_only,
                                           create=not read_only, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR), options=options)


def save_state(manager: ocp.CheckpointManager, state, val_dice: float | None = None) -> None:
    """Save the train state at its own step (a step already on disk is left as it is)."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    metrics = {BEST_METRIC: float(val_dice)} if val_dice is not None and np.isfinite(val_dice) else None
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def restore_state(manager: ocp.CheckpointManager, template, step: int | None = None):
    """The saved state at ``step`` (default: latest), with the structure and dtypes of ``template``."""
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save_snapshot(manager: ocp.CheckpointManager, step: int, variables: dict) -> None:
    """Save ``{"params", "batch_stats"}`` at ``step`` unless already there (resumed runs rewrite nothing)."""
    if step in manager.all_steps():
        return
    item = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    manager.save(step, args=ocp.args.StandardSave(item), force=True)


def _has_steps(path: str) -> bool:
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def snapshot_steps(workdir: str) -> list[int]:
    """Steps with a parameter snapshot, ascending."""
    if not _has_steps(os.path.join(workdir, SNAPSHOT_DIR)):
        return []
    manager = snapshot_manager(workdir, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps with a full train-state checkpoint, ascending."""
    if not _has_steps(os.path.join(workdir, CHECKPOINT_DIR)):
        return []
    manager = state_manager(workdir, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def best_checkpoint_step(workdir: str) -> int | None:
    """The checkpoint step with the best validation Dice (None when no checkpoint carries one)."""
    if not _has_steps(os.path.join(workdir, CHECKPOINT_DIR)):
        return None
    manager = state_manager(workdir, read_only=True)
    try:
        with_metrics = [s for s in manager.all_steps() if manager.metrics(s)]
        return manager.best_step() if with_metrics else None
    finally:
        manager.close()


def _variables(item) -> dict:
    """Restored ``{"params", "batch_stats"}`` as numpy, params in the canonical part order (orbax restores
    dicts with sorted keys)."""
    from jaxfcn.partition import merge_params

    params = merge_params(jax.tree.map(np.asarray, item["params"]), {})
    return {"params": params, "batch_stats": jax.tree.map(np.asarray, item.get("batch_stats") or {})}


def load_variables(workdir: str, step: int | str | None = None) -> tuple[dict, int]:
    """``({"params", "batch_stats"}, step)`` of a run.

    ``step``: None = the latest step saved anywhere (the final step of a finished run); an int = that
    step, from the snapshots or the checkpoints; ``"best"`` = the checkpoint with the best validation Dice.
    """
    snaps, ckpts = snapshot_steps(workdir), checkpoint_steps(workdir)
    if not snaps and not ckpts:
        raise UserError(f"{workdir}: no saved parameters (train the run first)")
    if step == "best":
        step = best_checkpoint_step(workdir)
        if step is None:
            raise UserError(f"{workdir}: no checkpoint with a validation Dice")
    elif step is None or (isinstance(step, int) and step < 0):
        step = max(snaps + ckpts)
    if step in snaps:
        manager = snapshot_manager(workdir, read_only=True)
        try:
            item = manager.restore(step, args=ocp.args.StandardRestore())
        finally:
            manager.close()
        return _variables(item), step
    if step in ckpts:
        manager = state_manager(workdir, read_only=True)
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore())
        finally:
            manager.close()
        return _variables(state), step
    raise UserError(f"{workdir}: no parameters saved at step {step} (snapshots: {snaps}; checkpoints: {ckpts})")


def load_params(workdir: str, step: int | str | None = None) -> dict:
    """The params ``{"encoder", "decoder", "head"}`` of a run at ``step`` (None = latest/final, or "best")."""
    return load_variables(workdir, step)[0]["params"]
