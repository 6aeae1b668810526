"""One run's files while it trains, and the checked ``--init`` source it starts from.

:class:`RunFiles` owns a run's checkpoints, snapshots, ``metrics.jsonl`` (:class:`MetricsLog`), TensorBoard
events and ``train_summary.json``; the loop (:func:`jaxfcn.train.loop.train_runs`) calls, per run,
:meth:`~RunFiles.begin`, then :meth:`~RunFiles.flush` and :meth:`~RunFiles.save` at each flush, and
:meth:`~RunFiles.finish`. :func:`check_init_source` validates ``train.init`` before anything is written.

Example::

    run = RunFiles("runs/tissue", config, init=check_init_source(config))
    state = run.initial_state(programs, None)     # fresh (or transferred) initial state
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from jaxfcn.config import architecture_of
from jaxfcn.errors import UserError
from jaxfcn.files import write_json_atomic, write_text_atomic
from jaxfcn.partition import transfer_differences
from jaxfcn.train import curves
from jaxfcn.train import workdir as wd


class TrainingDiverged(UserError):
    """A non-finite loss: the run stopped; the last good checkpoint is kept."""


def check_init_source(config) -> dict | None:
    """Validate ``train.init``: a workdir whose architecture matches (except the head's class count)."""
    if config.train.init == "random":
        return None
    from jaxfcn.train import checkpoint

    source = config.train.init
    source_config = wd.load_run_config(source)
    mine, theirs = architecture_of(config), architecture_of(source_config)
    diffs = transfer_differences(source_config.model, config.model)
    if diffs:
        raise UserError(f"--init {source}: architecture differs ({'; '.join(diffs)})")
    available = sorted(set(checkpoint.snapshot_steps(source)) | set(checkpoint.checkpoint_steps(source)))
    if not available:
        raise UserError(f"--init {source}: the source run has no saved parameters")
    step = available[-1] if config.train.init_step < 0 else config.train.init_step
    if step not in available:
        raise UserError(f"--init {source}: no parameters at train.init_step={step} (available: {available})")
    checkpoint.verify_saved(source, step)  # a damaged source is refused before anything is written
    parts = [p for p in config.train.transfer_parts]
    head_reinitialised = config.train.reinit_head or theirs["num_classes"] != mine["num_classes"]
    if head_reinitialised:
        parts = [p for p in parts if p != "head"]
    return {"source": source, "step": int(step), "parts": parts, "head_reinitialised": bool(head_reinitialised),
            "source_num_classes": theirs["num_classes"]}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per record; records beyond a resumed step are dropped."""

    def __init__(self, path: str, resume_step: int, write: bool = True):
        self.path = path
        self.records: list[dict] = []
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if record.get("step", 0) <= resume_step:
                        self.records.append(record)
        self._file = None  # ``write=False`` (a non-primary process of a multi-host run): read, never write
        if write:
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
            self._file = open(path, "a")

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()

    def last(self, key: str, default=None):
        for record in reversed(self.records):
            if key in record:
                return record[key]
        return default


class RunFiles:
    """One run's outputs while it trains: checkpoints, snapshots, ``metrics.jsonl``, ``train_summary.json``.

    :func:`jaxfcn.train.loop.train_and_evaluate` keeps one; a K-seed program (:mod:`jaxfcn.train.multiseed`)
    one per seed.
    With several processes, orbax saves are collective (every process makes them) and the plain files
    are written by the ``primary`` process only. ``init``: the run's checked ``--init`` source
    (:func:`check_init_source`; None for a random initialisation).
    """

    def __init__(self, workdir: str, config, *, init: dict | None = None, keep: int | None = None,
                 primary: bool = True, label: str = ""):
        from jaxfcn.train import checkpoint

        self.workdir, self.config, self.init, self.primary, self.label = workdir, config, init, primary, label
        # Before the managers open the steps: damaged ones move aside, the run resumes from one that verifies.
        recovery = checkpoint.set_aside_damaged(workdir, move=primary)
        self.damaged = recovery.damaged_checkpoints
        if recovery.message and primary:
            print(f"jaxfcn: {label}{recovery.message}", file=sys.stderr)
        self.states = checkpoint.state_manager(workdir, keep=config.train.keep_checkpoints if keep is None else keep)
        self.snapshots = checkpoint.snapshot_manager(workdir)
        self.summary_path = os.path.join(workdir, wd.TRAIN_SUMMARY_FILE)
        self.log: MetricsLog | None = None
        self.board = None  # TensorBoard event file (jaxfcn.train.tensorboard), opened by begin()
        self.previous: dict = {}  # the summary of an earlier, interrupted run in this workdir
        self.resumed_at: list[int] = []
        self.best = float("-inf")  # best validation Dice so far
        self.val_dice = None  # latest validation Dice
        self.new_best = False  # whether the latest flush set a new best

    def checkpoint_steps(self) -> list[int]:
        """The steps this run can resume from (damaged ones excluded)."""
        return sorted(s for s in self.states.all_steps() if s not in self.damaged)

    def initial_state(self, programs, step: int | None):
        """The state saved at checkpoint ``step``; with ``step`` None the fresh run's state: the seeded
        initialisation of ``programs`` (:class:`jaxfcn.train.programs.Programs`), with the ``init``
        source's parts transferred into it."""
        from jaxfcn.partition import transfer_params
        from jaxfcn.train import checkpoint

        seed = self.config.train.seed
        state = programs.initial_state(seed)
        if step is not None:
            return checkpoint.restore_state(self.states, state, step)
        init = self.init  # the checked --init source (None: random initialisation)
        if init is not None:
            source_params = checkpoint.load_params(init["source"], init["step"])
            state = programs.initial_state(seed, transfer_params(state.params, source_params, init["parts"]))
        return state

    def begin(self, state, start: int) -> float:
        """Open the run at step ``start`` (a fresh run saves its step-0 snapshot); returns the training
        time already spent (from the metrics log of a resumed run)."""
        from jaxfcn.train import checkpoint

        if start == 0:
            checkpoint.save_snapshot(self.snapshots, 0, state.variables())
        self.log = MetricsLog(os.path.join(self.workdir, wd.METRICS_FILE), start, write=self.primary)
        from jaxfcn.train.tensorboard import Board

        self.board = Board(self.workdir, self.config, start, write=self.primary)
        self.previous = _load_json(self.summary_path)
        self.resumed_at = (self.previous.get("resumed_at", []) + [start]) if start > 0 else []
        self.best = max([r["val_dice"] for r in self.log.records if _finite(r.get("val_dice"))], default=float("-inf"))
        self.val_dice = self.log.last("val_dice")
        return float(self.log.last("train_time_s", 0.0))

    def check_losses(self, steps: list[int], values: list[dict]) -> None:
        """Raise :class:`TrainingDiverged` at the first non-finite loss."""
        from jaxfcn.train import checkpoint

        for s, m in zip(steps, values):
            if not np.isfinite(m["loss"]):
                last_good = self.states.latest_step()
                raise TrainingDiverged(
                    f"training diverged: loss is {m['loss']} at step {s}; last good checkpoint: "
                    f"{'none' if last_good is None else f'step {last_good}'} in "
                    f"{os.path.join(self.workdir, checkpoint.CHECKPOINT_DIR)}")

    def flush(self, step: int, values: list[dict], train_time: float, steps_per_s: float, validation=None) -> dict:
        """Log the steps since the last flush (``values``: their metrics, on the host) and, at a
        validation step, ``validation`` = (val Dice, per-class Dice); returns the record."""
        record = {"step": step, "loss": float(values[-1]["loss"]),
                  "loss_mean": float(np.mean([v["loss"] for v in values])),
                  "grad_norm": float(values[-1]["grad_norm"]), "train_time_s": round(train_time, 3),
                  "steps_per_s": round(steps_per_s, 3)}
        self.new_best = False
        if validation is not None:
            self.val_dice, per_class = validation
            record.update(val_dice=self.val_dice, val_dice_per_class=per_class)
            # ties go to the later step, as orbax's best checkpoint does
            self.new_best = _finite(self.val_dice) and self.val_dice >= self.best
            if self.new_best:
                self.best = self.val_dice
        self.log.write(record)
        self.board.write(record)
        return record

    def save(self, state, *, snapshot: bool, checkpoint_now: bool, evaluated: bool) -> None:
        """Snapshot and/or checkpoint ``state`` after a flush (a new best validation Dice forces a checkpoint)."""
        from jaxfcn.train import checkpoint

        if snapshot:
            checkpoint.save_snapshot(self.snapshots, int(state.step), state.variables())
        if checkpoint_now or (self.new_best and self.config.train.checkpoint_best):
            checkpoint.save_state(self.states, state, val_dice=self.val_dice if evaluated else None)

    def finish(self, state, *, dataset, train_time: float, compilations, extra: dict | None = None) -> dict:
        """Final checkpoint and snapshot, then ``train_summary.json``; returns the summary."""
        from jaxfcn.train import checkpoint

        t = self.config.train
        checkpoint.save_state(self.states, state, val_dice=self.val_dice if _finite(self.val_dice) else None)
        checkpoint.save_snapshot(self.snapshots, t.steps, state.variables())
        evals = [r for r in self.log.records if _finite(r.get("val_dice"))]
        best_record = max(evals, key=lambda r: (r["val_dice"], r["step"]), default=None)
        summary = {
            "workdir": os.path.abspath(self.workdir),
            "steps": t.steps,
            "final_step": int(state.step),
            "final_val_dice": _json_float(self.val_dice),
            "best_val_dice": _json_float(best_record["val_dice"]) if best_record else None,
            "best_step": best_record["step"] if best_record else None,
            "time_to_best_fraction": curves.time_to_fraction_of_best(self.log.records),
            "val_dice_auc": _json_float(curves.val_dice_auc(self.log.records)),
            "train_time_s": round(train_time, 3),
            "init": self.init or {"source": "random"},
            "frozen": list(t.freeze),
            "dataset": dataset.info.name,
            "num_train_examples": dataset.num_examples("train"),
            "resumed_at": self.resumed_at,
            # new jit cache entries of the train step during this run: 1 means it compiled exactly once
            # (0: an earlier run in this process had compiled the same program)
            "train_step_compilations": compilations if compilations is not None else self.previous.get(
                "train_step_compilations"),
            "snapshot_steps": checkpoint.snapshot_steps(self.workdir),
            **(extra or {}),
        }
        if self.primary:
            write_json_atomic(self.summary_path, summary)
        return summary

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.board is not None:
            self.board.close()
        self.states.close()
        self.snapshots.close()


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def _json_float(x):
    return float(x) if _finite(x) else None


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
