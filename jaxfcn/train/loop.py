"""``train_and_evaluate(config, workdir)``: train one model, validate, checkpoint, resume.

What a run does, in order:

1. Validate everything that can be wrong (config values, dataset, ``--init`` source, workdir ownership)
   before anything is written; resolve ``model.num_classes`` / ``model.in_channels`` from the dataset.
2. Lock, then create or resume the workdir (:mod:`jaxfcn.train.lock`, :mod:`jaxfcn.train.workdir`). A
   fresh run saves its step-0 params as a snapshot; a resumed run restores params, optimiser state, rng
   and step from the latest checkpoint that verifies (damaged steps are moved aside, see
   :func:`jaxfcn.train.checkpoint.set_aside_damaged`) and continues the data stream at that step (batch t
   depends only on (data seed, t)).
3. Train with the jitted step of :mod:`jaxfcn.train.step`; every ``eval_every`` steps (and at the end)
   validate: mean foreground Dice of pooled counts over ``eval_batches("val", batch_size, val_batches)``.
4. Checkpoint every ``checkpoint_every`` steps, at every new best validation Dice (unless
   ``train.checkpoint_best`` is off), and at the end; save
   parameter snapshots at ``train.snapshot_steps`` and at the end.
5. Write ``train_summary.json``: best/final val Dice, the area under the val-Dice curve, and the time
   (first step and training wall time) to 90/95/99 % of the run's best val Dice, by the one definition
   of time to a Dice target in :mod:`jaxfcn.train.curves`.

Determinism: a run killed at any point (``kill -9``) and restarted with the same command ends with params
bitwise identical to an uninterrupted run on the same machine. Losses are checked at every flush (log,
validation, checkpoint and snapshot steps); a NaN/inf loss stops the run naming the first bad step, and
since flushes precede saves no non-finite state is ever written.

Data order: with ``train.seed_data_order == "shared"`` (default) every seed sees the same batches (data
seed 0) and seeds differ in initialisation and augmentation only; ``"independent"`` uses ``train.seed``.

``train_time_s`` counts the time spent in training steps (compilation included), not validation or saving.
"""
from __future__ import annotations

import copy
import json
import os
import queue
import sys
import threading
import time

import numpy as np

from jaxfcn.config import architecture_of
from jaxfcn.errors import UserError
from jaxfcn.partition import PARTS, transfer_differences
from jaxfcn.train import curves
from jaxfcn.train import workdir as wd


class TrainingDiverged(UserError):
    """A non-finite loss: the run stopped; the last good checkpoint is kept."""


# --- configuration checks (all before the workdir is touched) --------------------------------------

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
    from jaxfcn.train.losses import LOSSES
    from jaxfcn.train.step import LR_SCHEDULES, OPTIMIZERS

    t, m = config.train, config.model
    choices = [("train.optimizer", t.optimizer, OPTIMIZERS), ("train.lr_schedule", t.lr_schedule, LR_SCHEDULES),
               ("train.loss", t.loss, LOSSES), ("model.norm", m.norm, ("group", "instance", "batch", "none")),
               ("model.spatial_dims", m.spatial_dims, (2, 3)), ("train.seed_data_order", t.seed_data_order,
                                                                 ("shared", "independent"))]
    from jaxfcn.models.fast_ops import CONV_IMPLS
    from jaxfcn.models.layers import KERNEL_INITS

    choices += [("model.kernel_init", m.kernel_init, tuple(KERNEL_INITS)),
                ("model.conv_impl", m.conv_impl, CONV_IMPLS),
                ("model.compute_dtype", m.compute_dtype, ("float32", "bfloat16"))]
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


def open_training_data(config, progress: bool = True):
    """The dataset named by ``config.data`` (UserError if missing or invalid), with this run's training subset."""
    from jaxfcn.data import open_dataset, subset_seed

    return open_dataset(config.data, depth=config.model.depth, progress=progress,
                        subset_seed=subset_seed(config.data, config.train))


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


def data_seed(train_config) -> int:
    return 0 if train_config.seed_data_order == "shared" else int(train_config.seed)


# --- helpers of the loop ---------------------------------------------------------------------------

class Prefetcher:
    """Produce the next ``size`` items of an iterator in a background thread (order preserved).

    :meth:`close` stops the thread and waits for it (at most the time to produce the item in hand). The
    thread must not outlive the run: one still inside JAX (placing a batch on devices) when the
    interpreter shuts down is killed in the middle of a C++ call, and the process aborts
    (``terminate called after throwing an instance of ''``, exit 134) after the run has finished.
    """

    def __init__(self, iterator, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, kind: str, value) -> bool:
        """Queue ``(kind, value)`` unless the consumer has closed; returns whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator):
        try:
            while not self._stop.is_set() and self._put("item", next(iterator)):
                pass
        except StopIteration:
            self._put("end", None)
        except BaseException as e:  # surfaced in the consumer
            self._put("error", e)

    def __iter__(self):
        return self

    def __next__(self):
        kind, value = self._queue.get()
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise value
        return value

    def close(self):
        self._stop.set()
        self._thread.join()


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
            wd.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
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


def validate(eval_step, variables, dataset, config) -> tuple[float, list[float]]:
    """Mean foreground Dice (and per-class Dice) of pooled counts over the validation batches."""
    from jaxfcn.train.metrics import dice_from_counts, mean_foreground_dice

    if "val" not in dataset.sources or dataset.num_examples("val") == 0:
        return float("nan"), []
    total = None
    for batch in dataset.eval_batches("val", config.train.batch_size, config.train.val_batches):
        counts = np.asarray(eval_step(variables, batch), np.int64)
        total = counts if total is None else total + counts
    return mean_foreground_dice(total), [float(d) for d in dice_from_counts(total)[1:]]


# --- the run ---------------------------------------------------------------------------------------

def prepare_run(config, workdir: str, dataset=None, progress: bool = True):
    """Validate and resolve everything; returns (resolved config, dataset, init source, resume?)."""
    check_config(config)
    if dataset is None:
        dataset = open_training_data(config, progress=progress)
    elif config.data.subset_per_seed:  # a shared dataset (a study, a K-seed program): this seed's own subjects
        dataset = dataset.with_training_subset(int(config.data.train_size), int(config.train.seed))
    config = resolve_config(config, dataset.info)
    init = check_init_source(config)
    resume = wd.check_workdir(workdir, config)
    return config, dataset, init, resume


def train_and_evaluate(config, workdir: str, *, dataset=None, progress: bool = True,
                       devices: int | None = None) -> dict:
    """Train (or resume) the run of ``config`` in ``workdir``; returns the final train summary.

    ``dataset`` overrides ``config.data`` (a :class:`~jaxfcn.data.dataset.SegmentationDataset`, e.g. built
    in memory); otherwise the dataset is opened with :func:`jaxfcn.data.open_dataset`. ``train.parallel``
    and ``devices`` (default: all) choose the devices (:func:`jaxfcn.train.parallel.plan_devices`).
    """
    config, dataset, init, resume = prepare_run(config, workdir, dataset, progress)
    from jaxfcn.train.parallel import plan_devices

    t = config.train
    plan = plan_devices(t.parallel, t.batch_size, num_devices=devices)
    plan.barrier("jaxfcn-checked")  # every process has checked the workdir before one writes to it

    from jaxfcn.models import build_model
    from jaxfcn.train.lock import maybe_hold
    from jaxfcn.train.step import make_eval_step, train_step_function

    with maybe_hold(workdir, plan.primary):  # one writer: a second run on this workdir is refused here
        if plan.primary:
            wd.check_workdir(workdir, config)  # again, now that no other run can change it
            wd.create_workdir(workdir, config, dataset.info)
        plan.barrier("jaxfcn-created")
        model = build_model(config.model)
        run = RunFiles(workdir, config, init=init, primary=plan.primary)
        try:
            saved = run.checkpoint_steps()
            state = plan.place_state(run.initial_state(model, saved[-1] if saved else None))
            train_step = plan.compile_step(train_step_function(model, config, tuple(t.freeze), plan.axis_name), state)
            (summary,) = train_runs(
                config, dataset, [run], plan, state, train_step, make_eval_step(model, config.model.num_classes),
                batches=lambda start: dataset.batches(t.batch_size, data_seed(t), start_step=start),
                progress=progress, summary_extra={"parallel": plan.describe()})
            return summary
        finally:
            run.close()


class RunFiles:
    """One run's outputs while it trains: checkpoints, snapshots, ``metrics.jsonl``, ``train_summary.json``.

    :func:`train_and_evaluate` keeps one; a K-seed program (:mod:`jaxfcn.train.multiseed`) one per seed.
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
        self.board = None  # TensorBoard event file (jaxfcn.train.tensorboard), opened with the log

    def checkpoint_steps(self) -> list[int]:
        """The steps this run can resume from (damaged ones excluded)."""
        return sorted(s for s in self.states.all_steps() if s not in self.damaged)

    def initial_state(self, model, step: int | None):
        """The state saved at checkpoint ``step``; with ``step`` None the fresh run's state: the seeded
        initialisation, with the ``init`` source's parts transferred into it."""
        from jaxfcn.partition import transfer_params
        from jaxfcn.train import checkpoint
        from jaxfcn.train.step import init_train_state

        frozen = tuple(self.config.train.freeze)
        state = init_train_state(model, self.config, frozen)
        if step is not None:
            return checkpoint.restore_state(self.states, state, step)
        init = self.init  # the checked --init source (None: random initialisation)
        if init is not None:
            source_params = checkpoint.load_params(init["source"], init["step"])
            state = init_train_state(model, self.config, frozen,
                                     params=transfer_params(state.params, source_params, init["parts"]))
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
            wd.write_json_atomic(self.summary_path, summary)
        return summary

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.board is not None:
            self.board.close()
        self.states.close()
        self.snapshots.close()


def train_runs(config, dataset, runs: list[RunFiles], plan, state, train_step, eval_step, *, batches,
               progress: bool = True, summary_extra: dict | None = None,
               run_datasets: list | None = None) -> list[dict]:
    """Train the runs of one program (one run, or the K seeds of a stacked program) to ``train.steps``.

    ``state``: placed by ``plan`` (:class:`jaxfcn.train.parallel.DevicePlan`), whose ``members`` are the
    runs' states in order; ``train_step``: compiled by ``plan``; ``batches(start)``: the host batches
    from step ``start + 1`` on; ``run_datasets``: each run's own dataset (training subset) where they
    differ (``data.subset_per_seed``), else ``dataset`` for all. Returns the runs' summaries.
    """
    import jax
    from tqdm import tqdm

    t = config.train
    members = plan.members(state)
    start = int(members[0].step)
    train_time = [run.begin(member, start) for run, member in zip(runs, members)][0]
    del members
    snapshot_at = set(parse_snapshot_steps(t.snapshot_steps, t.steps)) | {t.steps}
    last_flush_step, last_flush_time = start, train_time

    # the step's cache may already hold this program (an earlier run of the same settings in this process)
    compiled_before = _compilations(train_step) or 0
    source = Prefetcher(map(plan.place_batch, batches(start)))
    bar = tqdm(total=t.steps, initial=start, disable=not (progress and plan.primary), dynamic_ncols=True,
               desc="train", file=sys.stderr, leave=True)
    pending = []  # (step, metrics on device) since the last flush
    tick = time.perf_counter()
    try:
        for step in range(start + 1, t.steps + 1):
            state, metrics = train_step(state, next(source))
            pending.append((step, metrics))
            is_eval = step % t.eval_every == 0 or step == t.steps
            is_ckpt = step % t.checkpoint_every == 0 or step == t.steps
            if not (step % t.log_every == 0 or is_eval or is_ckpt or step in snapshot_at):
                continue
            # Flush: fetch the pending losses (this waits for the steps), check them, log.
            fetched = jax.device_get([m for _, m in pending])
            values = list(zip(*[plan.host_members(v) for v in fetched]))  # [run][pending step]
            steps = [s for s, _ in pending]
            for run, run_values in zip(runs, values):
                run.check_losses(steps, run_values)
            now = time.perf_counter()
            train_time += now - tick
            steps_per_s = (step - last_flush_step) / max(train_time - last_flush_time, 1e-9)
            last_flush_step, last_flush_time = step, train_time
            pending = []
            members = plan.members(state) if (is_eval or is_ckpt or step in snapshot_at) else [None] * len(runs)
            records = []
            for run, run_values, member in zip(runs, values, members):
                validation = validate(eval_step, member.variables(), dataset, config) if is_eval else None
                record = run.flush(step, run_values, train_time, steps_per_s, validation)
                if is_eval:
                    run.board.predictions(step, member.variables(), dataset)
                records.append(record)
                if is_eval and progress and plan.primary:
                    tqdm.write(f"{run.label}step {step}/{t.steps}  loss {record['loss']:.4f}  val Dice "
                               f"{record['val_dice']:.4f}  {steps_per_s:.2f} steps/s", file=sys.stderr)
                if member is not None:
                    run.save(member, snapshot=step in snapshot_at, checkpoint_now=is_ckpt, evaluated=is_eval)
            del members
            val_dices = [run.val_dice for run in runs if run.val_dice is not None]
            bar.set_postfix(loss=f"{np.mean([r['loss'] for r in records]):.4f}",
                            val_dice=f"{np.mean(val_dices):.4f}" if val_dices else "-",
                            steps_per_s=f"{steps_per_s:.2f}", refresh=False)
            bar.update(step - bar.n)
            tick = time.perf_counter()
    finally:
        bar.close()
        source.close()

    after = _compilations(train_step)
    compilations = after - compiled_before if start < t.steps and after is not None else None
    run_datasets = run_datasets or [dataset] * len(runs)  # each run's own training subset, for its summary
    return [run.finish(member, dataset=run_data, train_time=train_time, compilations=compilations,
                       extra=summary_extra) for run, member, run_data in zip(runs, plan.members(state), run_datasets)]


def _compilations(compiled) -> int | None:
    """Cache entries of a jitted function in this process (None where JAX does not expose them)."""
    size = getattr(compiled, "_cache_size", None)
    return int(size()) if callable(size) else None


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def _json_float(x):
    return float(x) if _finite(x) else None


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
