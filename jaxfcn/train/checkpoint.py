"""Orbax checkpoints of a run: full train states for resuming, parameter snapshots for analysis.

- ``WORKDIR/checkpoints/``: an orbax ``CheckpointManager`` of the whole :class:`~jaxfcn.train.step.TrainState`
  (params, optimiser state, batch stats, step, rng). Saves are synchronous and atomic (orbax writes to a
  temporary directory and renames it), so a process killed at any moment leaves only complete
  checkpoints. Kept: the latest ``train.keep_checkpoints`` plus the one with the best validation Dice
  (checkpoints saved at a validation step carry ``{"val_dice": ...}`` as orbax metrics).
- ``WORKDIR/snapshots/``: ``{"params", "batch_stats"}`` at step 0, at the ``train.snapshot_steps`` and at the
  final step; all kept. The analysis (filter dynamics, CKA over training) reads these.

Integrity (:mod:`jaxfcn.train.integrity`): each saved step directory gets a SHA-256 manifest once orbax
has committed it. Every read here (:func:`restore_state`, :func:`load_variables`, so resume, evaluate,
predict, analyze, ``--init``, and the torch import's checks) verifies the step first. A damaged step is a
one-line UserError naming the step and the file, never silently wrong parameters. Steps without a manifest
(saved before jaxfcn wrote them) load unverified, with one note per process. On resume,
:func:`set_aside_damaged` moves damaged steps to ``WORKDIR/damaged/`` so the run goes on from the newest
checkpoint that verifies.

Steps are the directories named by an integer. On a local or POSIX file system that is orbax's own
definition, since it commits a step by renaming its ``<step>.orbax-checkpoint-tmp-*`` directory, and
listing them needs no orbax manager, which would read (and log about) every step's metadata.

Example::

    steps = snapshot_steps("runs/tissue")          # [0, 1, 3, 10, ..., 2000]
    params0 = load_params("runs/tissue", step=0)   # {"encoder", "decoder", "head"}
    final = load_params("runs/tissue")             # the latest params of the run
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxfcn.errors import UserError
from jaxfcn.train import integrity

CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"
DAMAGED_DIR = "damaged"  # damaged steps set aside by a resumed run
BEST_METRIC = "val_dice"
_KIND = {CHECKPOINT_DIR: "checkpoint", SNAPSHOT_DIR: "snapshot"}


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
    _write_manifest(manager, step)


def restore_state(manager: ocp.CheckpointManager, template, step: int | None = None):
    """The saved state at ``step`` (default: latest), with the structure and dtypes of ``template``
    (verified first: UserError if damaged)."""
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return _restore(manager, step, ocp.args.StandardRestore(abstract))


def save_snapshot(manager: ocp.CheckpointManager, step: int, variables: dict) -> None:
    """Save ``{"params", "batch_stats"}`` at ``step`` unless already there (resumed runs rewrite nothing)."""
    if step in manager.all_steps():
        return
    item = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    manager.save(step, args=ocp.args.StandardSave(item), force=True)
    _write_manifest(manager, step)


def _write_manifest(manager: ocp.CheckpointManager, step: int) -> None:
    """The step's SHA-256 manifest, once orbax has committed it (saves are synchronous). Process 0
    writes it: it finalises orbax's collective save, after every process has written its files."""
    if jax.process_index() == 0:
        integrity.write_manifest(os.path.join(str(manager.directory), str(step)))


def _describe(directory: str) -> str:
    """"snapshot step 60 of WORKDIR" for ``WORKDIR/snapshots/60``."""
    parent, step = os.path.split(os.path.normpath(directory))
    workdir, kind = os.path.split(parent)
    return f"{_KIND.get(kind, kind)} step {step} of {workdir}"


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def _restore(manager: ocp.CheckpointManager, step: int, args, *, verify: bool = True):
    """Verify the step (:func:`jaxfcn.train.integrity.verify`; ``verify=False``: the caller has), then
    restore it; what orbax cannot read becomes a one-line UserError naming the step and, where it can be
    found, the file."""
    directory = os.path.join(str(manager.directory), str(step))
    what = _describe(directory)
    if verify:
        integrity.verify(directory, what)
    try:
        return manager.restore(step, args=args)
    except (ValueError, OSError) as e:  # UnicodeDecodeError, JSONDecodeError and tensorstore's errors among them
        culprit = integrity.unreadable_file(directory)
        where = f"{culprit} does not decode" if culprit else f"orbax cannot read {directory}"
        raise UserError(f"{what} could not be read: {where} ({type(e).__name__}: {_first_line(e)})") from None


def _listed_steps(path: str) -> list[int]:
    """The committed steps under ``path``, ascending (module docstring: directories named by an integer)."""
    if not os.path.isdir(path):
        return []
    return sorted(int(name) for name in os.listdir(path) if name.isdigit() and os.path.isdir(os.path.join(path, name)))


def snapshot_steps(workdir: str) -> list[int]:
    """Steps with a parameter snapshot, ascending."""
    return _listed_steps(os.path.join(workdir, SNAPSHOT_DIR))


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps with a full train-state checkpoint, ascending."""
    return _listed_steps(os.path.join(workdir, CHECKPOINT_DIR))


def verify_step(workdir: str, kind: str, step: int) -> bool:
    """Verify the saved ``kind`` (CHECKPOINT_DIR or SNAPSHOT_DIR) step of a run; False where it has no
    manifest, :class:`~jaxfcn.train.integrity.DamagedStep` where it is damaged."""
    directory = os.path.join(os.path.abspath(workdir), kind, str(step))
    return integrity.verify(directory, _describe(directory))


def verify_saved(workdir: str, step: int) -> bool:
    """Verify what :func:`load_variables` reads at ``step``: the snapshot, else the checkpoint."""
    kind = SNAPSHOT_DIR if step in snapshot_steps(workdir) else CHECKPOINT_DIR
    return verify_step(workdir, kind, step)


def best_checkpoint_step(workdir: str) -> int | None:
    """The checkpoint step with the best validation Dice (None when no checkpoint carries one). Every
    checkpoint is verified first, since each one's metrics decide."""
    steps = checkpoint_steps(workdir)
    if not steps:
        return None
    for step in steps:
        verify_step(workdir, CHECKPOINT_DIR, step)
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
    if step in snaps or step in ckpts:
        verify_saved(workdir, step)  # before a manager exists: opening one reads every step's metadata
        manager = (snapshot_manager if step in snaps else state_manager)(workdir, read_only=True)
        try:
            return _variables(_restore(manager, step, ocp.args.StandardRestore(), verify=False)), step
        finally:
            manager.close()
    raise UserError(f"{workdir}: no parameters saved at step {step} (snapshots: {snaps}; checkpoints: {ckpts})")


def load_params(workdir: str, step: int | str | None = None) -> dict:
    """The params ``{"encoder", "decoder", "head"}`` of a run at ``step`` (None = latest/final, or "best")."""
    return load_variables(workdir, step)[0]["params"]


@dataclasses.dataclass
class Recovery:
    """What :func:`set_aside_damaged` found: the damaged checkpoint steps and the one line that says so."""

    damaged_checkpoints: set
    message: str | None = None


def set_aside_damaged(workdir: str, *, move: bool = True) -> Recovery:
    """Before a run resumes: verify its checkpoints, and the snapshots it will write again, and move the
    damaged ones to ``WORKDIR/damaged/<checkpoints|snapshots>/<step>`` (``move=False``: only report them;
    a multi-host run's other processes leave the moving to process 0).

    The run then resumes from the newest checkpoint that verifies (or starts again from step 0 when none
    does) and never trains on from damaged state. Damaged steps must leave the managers' directories
    because a save skips a step that is already on disk. Snapshots are checked above the resume step,
    which is what the run will write again.
    """
    damaged: list[tuple[str, int, integrity.DamagedStep]] = []
    checkpoints = checkpoint_steps(workdir)
    for step in checkpoints:
        try:
            verify_step(workdir, CHECKPOINT_DIR, step)
        except integrity.DamagedStep as e:
            damaged.append((CHECKPOINT_DIR, step, e))
    bad = {step for _, step, _ in damaged}
    good = [s for s in checkpoints if s not in bad]
    resume = max(good, default=-1)
    for step in snapshot_steps(workdir):
        if step > resume:
            try:
                verify_step(workdir, SNAPSHOT_DIR, step)
            except integrity.DamagedStep as e:
                damaged.append((SNAPSHOT_DIR, step, e))
    if not damaged:
        return Recovery(set())
    if move:
        for kind, step, _ in damaged:
            _move_aside(workdir, kind, step)
    others = ", ".join(f"{_KIND[kind]} step {step}" for kind, step, _ in damaged[1:])
    more = f"; also damaged: {others}" if others else ""
    where = f"; moved to {os.path.join(workdir, DAMAGED_DIR)}" if move else ""
    then = (f"resuming from step {resume}, the newest checkpoint that verifies" if good else
            "starting again from step 0: no checkpoint verifies" if checkpoints else "starting from step 0")
    return Recovery(bad, f"{damaged[0][2]}{more}{where}; {then}")


def _move_aside(workdir: str, kind: str, step: int) -> str:
    target = os.path.join(workdir, DAMAGED_DIR, kind, str(step))
    n = 0
    while os.path.exists(target if n == 0 else f"{target}.{n}"):
        n += 1
    target = target if n == 0 else f"{target}.{n}"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(os.path.join(workdir, kind, str(step)), target)
    return target
