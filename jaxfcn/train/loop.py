"""``train_and_evaluate(config, workdir)``: train one model, validate, checkpoint, resume.

What a run does, in order:

1. Validate everything that can be wrong (config values: :mod:`jaxfcn.config_checks`; dataset; ``--init``
   source; workdir ownership) before anything is written; resolve ``model.num_classes`` /
   ``model.in_channels`` from the dataset.
2. Lock, then create or resume the workdir (:mod:`jaxfcn.train.lock`, :mod:`jaxfcn.train.workdir`). A
   fresh run saves its step-0 params as a snapshot; a resumed run restores params, optimiser state, rng
   and step from the latest checkpoint that verifies (damaged steps are moved aside, see
   :func:`jaxfcn.train.checkpoint.set_aside_damaged`) and continues the data stream at that step (batch t
   depends only on (data seed, t)).
3. Train with the programs of :mod:`jaxfcn.train.programs` (built here, or handed in by a caller that
   trains many runs of one architecture); every ``eval_every`` steps (and at the end)
   validate: mean foreground Dice of pooled counts over ``eval_batches("val", batch_size, val_batches)``.
4. Checkpoint every ``checkpoint_every`` steps, at every new best validation Dice (unless
   ``train.checkpoint_best`` is off), and at the end; save
   parameter snapshots at ``train.snapshot_steps`` and at the end.
5. Write ``train_summary.json``: best/final val Dice, the area under the val-Dice curve, and the time
   (first step and training wall time) to 90/95/99 % of the run's best val Dice, by the one definition
   of time to a Dice target in :mod:`jaxfcn.train.curves`. The run's files are :mod:`jaxfcn.train.run_files`.

Determinism: a run killed at any point (``kill -9``) and restarted with the same command ends with params
bitwise identical to an uninterrupted run on the same machine. Losses are checked at every flush (log,
validation, checkpoint and snapshot steps); a NaN/inf loss stops the run naming the first bad step, and
since flushes precede saves no non-finite state is ever written.

Data order: with ``train.seed_data_order == "shared"`` (default) every seed sees the same batches (data
seed 0) and seeds differ in initialisation and augmentation only; ``"independent"`` uses ``train.seed``.

``train_time_s`` counts the time spent in training steps (compilation included), not validation or saving.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from jaxfcn.config_checks import check_config, parse_snapshot_steps, resolve_config
from jaxfcn.runtime import on_device
from jaxfcn.train import workdir as wd
from jaxfcn.train.prefetch import Prefetcher
from jaxfcn.train.run_files import RunFiles, check_init_source


def open_training_data(config, progress: bool = True):
    """The dataset named by ``config.data`` (UserError if missing or invalid), with this run's training subset."""
    from jaxfcn.data import open_dataset, subset_seed

    return open_dataset(config.data, depth=config.model.depth, progress=progress,
                        subset_seed=subset_seed(config.data, config.train))


def data_seed(train_config) -> int:
    return 0 if train_config.seed_data_order == "shared" else int(train_config.seed)


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


def train_and_evaluate(config, workdir: str, *, dataset=None, programs=None, progress: bool = True,
                       devices: int | None = None, on_step=None) -> dict:
    """Train (or resume) the run of ``config`` in ``workdir``; returns the final train summary.

    ``dataset`` overrides ``config.data`` (a :class:`~jaxfcn.data.dataset.SegmentationDataset`, e.g. built
    in memory); otherwise the dataset is opened with :func:`jaxfcn.data.open_dataset`. ``programs``: a
    :class:`~jaxfcn.train.programs.ProgramSet` shared with other runs (default: a new one). ``train.parallel``
    and ``devices`` (default: all) choose the devices (:func:`jaxfcn.train.parallel.plan_devices`).
    ``on_step(step)``: called with the step training starts from, then at every log flush (a caller's own
    progress display).
    """
    config, dataset, init, resume = prepare_run(config, workdir, dataset, progress)
    from jaxfcn.train.parallel import plan_devices
    from jaxfcn.train.programs import ProgramSet

    t = config.train
    plan = plan_devices(t.parallel, t.batch_size, num_devices=devices)
    plan.barrier("jaxfcn-checked")  # every process has checked the workdir before one writes to it

    from jaxfcn.train.lock import maybe_hold

    with maybe_hold(workdir, plan.primary):  # one writer: a second run on this workdir is refused here
        if plan.primary:
            wd.check_workdir(workdir, config)  # again, now that no other run can change it
            wd.create_workdir(workdir, config, dataset.info)
        plan.barrier("jaxfcn-created")
        built = (programs if programs is not None else ProgramSet()).get(config, plan)
        run = RunFiles(workdir, config, init=init, primary=plan.primary)
        try:
            saved = run.checkpoint_steps()
            state = plan.place_state(run.initial_state(built, saved[-1] if saved else None))
            (summary,) = train_runs(
                config, dataset, [run], plan, state, built,
                batches=lambda start: dataset.batches(t.batch_size, data_seed(t), start_step=start),
                progress=progress, summary_extra={"parallel": plan.describe()}, on_step=on_step)
            return summary
        finally:
            run.close()


def validate(eval_step, variables, dataset, config) -> tuple[float, list[float]]:
    """Mean foreground Dice (and per-class Dice) of pooled counts over the validation batches."""
    from jaxfcn.train.metrics import dice_from_counts, mean_foreground_dice

    if "val" not in dataset.sources or dataset.num_examples("val") == 0:
        return float("nan"), []
    total = None
    for batch in dataset.eval_batches("val", config.train.batch_size, config.train.val_batches):
        counts = np.asarray(eval_step(variables, on_device(batch)), np.int64)
        total = counts if total is None else total + counts
    return mean_foreground_dice(total), [float(d) for d in dice_from_counts(total)[1:]]


def train_runs(config, dataset, runs: list[RunFiles], plan, state, programs, *, batches,
               progress: bool = True, summary_extra: dict | None = None,
               run_datasets: list | None = None, on_step=None) -> list[dict]:
    """Train the runs of one program (one run, or the K seeds of a stacked program) to ``train.steps``.

    ``state``: placed by ``plan`` (:class:`jaxfcn.train.parallel.DevicePlan`), whose ``members`` are the
    runs' states in order; ``programs``: built for ``plan`` (:class:`jaxfcn.train.programs.Programs`);
    ``batches(start)``: the host batches
    from step ``start + 1`` on; ``run_datasets``: each run's own dataset (training subset) where they
    differ (``data.subset_per_seed``), else ``dataset`` for all; ``on_step(step)``: called with the step
    it starts from, then with the step reached at every log flush. Returns the runs' summaries.
    """
    import jax
    from tqdm import tqdm

    t = config.train
    train_step, eval_step = programs.train_step, programs.eval_step
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
    if on_step is not None:
        on_step(start)
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
            if on_step is not None:
                on_step(step)
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
