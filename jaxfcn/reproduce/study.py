"""Run the study: source pretraining, the target grid, evaluation, analysis, ``results.json`` and the report.

Each condition's seeds train together in one K-seed program (:func:`jaxfcn.train.multiseed.train_seeds`,
``--seed-strategy auto``), and the persistent compilation cache of :mod:`jaxfcn.runtime` lets conditions
with the same architecture reuse one compiled step.

Resumable at two depths: a run whose workdir already holds its test ``summary.json`` is skipped, and an
interrupted condition resumes from the latest checkpoint all its seeds saved (see :mod:`jaxfcn.train.multiseed`).

Where it stands: one progress bar over the conditions of training and evaluation, advanced by the
seed-steps (training steps × seeds, :func:`condition_work`) as they are trained (every ``train.log_every``
steps, not only when a condition ends), so that its time left weighs an
800-step source program and a 500-step target program by their budgets; its rate is the mean over the
conditions trained in this invocation (conditions already done when a rerun starts count as done, not as
speed). After each condition, one line per seed (test Dice, or why it has none). The analysis phase after it
shows its own bars. :func:`verdict_line` is the closing one-line verdict summary.

The tasks are checked before anything is written: every source and target must be a built-in task or a
readable MSD / nnU-Net folder (a missing MSD task's error says how to fetch it), and when a regime transfers,
every target must give the network as many input channels as the source (``data.channels``); every
target must hold as many training cases as the largest training-set size: a folder's in its fold, a built-in
task's generated subjects (``data.train_subjects``); else that size would silently mean all of them.

Divergence never aborts the study. When a K-seed program stops on a non-finite loss
(:class:`jaxfcn.train.run_files.TrainingDiverged`), its seeds are resumed one at a time from their last
checkpoints, so the seed that diverges is found and the others finish; that seed gets ``diverged.json``
in its workdir (step, message, date) and status ``"diverged"``. A transfer run whose source model
diverged has status ``"source diverged"`` and is not trained. Both are recorded in ``results.json`` and the
report, left out of every statistic, and never retrained by a rerun (delete ``diverged.json`` to retry).
"""
from __future__ import annotations

import json
import os
import platform
import re
import time

from jaxfcn.errors import UserError
from jaxfcn.reproduce.grid import REGIMES, Run, conditions, plan, program_dir, run_config, target_steps, task_label
from jaxfcn.train import curves
from jaxfcn.train.lock import holding
from jaxfcn.files import write_json_atomic
from jaxfcn.train.workdir import EVAL_SUMMARY_FILE, METRICS_FILE, trained_to

DIVERGED_FILE = "diverged.json"
OK, DIVERGED, SOURCE_DIVERGED = "ok", "diverged", "source diverged"


def is_real_case(case_id: str) -> bool:
    """Whether a test case is a real image (the built-in tasks' unwarped held-out template, ``<t>_real``)
    rather than a generated subject; every case of a user's MSD/nnU-Net folder is real but is not marked so."""
    try:
        from jaxfcn.data.subjects import is_real_case as builtin_rule
    except ImportError:  # the built-in subjects' module defines the rule; this is its naming convention
        return str(case_id).endswith("_real")
    return builtin_rule(case_id)


# -------------------------------------------------------------------------------------- input checks
def _fetch_hint(task: str) -> str:
    from jaxfcn.data.msd_fetch import TASKS

    label = task_label(task)
    if label not in TASKS:
        return ""
    parent = os.path.dirname(os.path.normpath(str(task))) or "."
    return f"; fetch it with `jaxfcn data fetch msd {label} --to {parent}`"


def _task_inputs(config, task: str, role: str) -> tuple[int, str, int, str]:
    """(input channels the network gets from ``task`` after ``data.channels``, their names, its training
    cases, what they are: a folder's training cases in this fold, or a built-in task's generated training
    subjects, ``data.train_subjects``); a task that is neither built in nor a readable folder is a one-line
    UserError naming ``role`` and the folder."""
    from jaxfcn.data import builtin
    from jaxfcn.data.folders import read_folder_spec, selected_channels, split_cases

    data = config.data.copy_and_resolve_references()
    data.task = task
    if builtin.is_builtin(task):
        return (len(selected_channels(data, 1, f"built-in task {task}")), "MRI", int(data.train_subjects),
                "training subjects (data.train_subjects)")
    if not os.path.isdir(str(task)):
        raise UserError(f"{role}: {task}: no such folder, and not a built-in task "
                        f"({', '.join(builtin.TASKS)}){_fetch_hint(task)}")
    try:
        spec = read_folder_spec(task)
    except UserError as e:
        raise UserError(f"{role}: {e}{_fetch_hint(task)}") from None
    picked = selected_channels(data, spec.in_channels, spec.dataset_json)
    train_cases = len(split_cases(spec, int(data.fold), int(data.num_folds))["train"])
    return (len(picked), ", ".join(spec.modality[c] for c in picked), train_cases,
            f"training cases (fold {data.fold} of {data.num_folds})")


def check_tasks(config) -> None:
    """Refuse unusable tasks before anything is written or trained (module docstring)."""
    s = config.study
    source = _task_inputs(config, s.source, "study.source")
    targets = {t: _task_inputs(config, t, "study.targets") for t in s.targets}
    largest = max(s.train_sizes, default=0)
    for target, (_, _, train_cases, what) in targets.items():
        if largest > train_cases:  # the subset would silently be all of them
            raise UserError(f"study.train_sizes: {largest} subjects, but {task_label(target)} has {train_cases} "
                            f"{what}; use sizes up to {train_cases}, or 0 for all")
    if not any(REGIMES[r].from_source for r in s.regimes):
        return
    for target, (count, names, _, _) in targets.items():
        if count != source[0]:
            raise UserError(f"study: source {task_label(s.source)} gives {source[0]} input channel(s) ({source[1]}) "
                            f"but target {task_label(target)} gives {count} ({names}); transfer needs the same "
                            "channels: pick them with data.channels (e.g. "
                            f"'{task_label(s.source)}=0,{task_label(target)}=0')")


# ----------------------------------------------------------------------------------------- run state
def diverged_info(run: Run) -> dict | None:
    path = os.path.join(run.workdir, DIVERGED_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_status(run: Run) -> str:
    if diverged_info(run) is not None:
        return DIVERGED
    if run.source_workdir and os.path.isfile(os.path.join(run.source_workdir, DIVERGED_FILE)):
        return SOURCE_DIVERGED
    return OK


def is_done(run: Run) -> bool:
    """Evaluated, or never to be trained (diverged, or its source did)."""
    return run_status(run) != OK or os.path.isfile(os.path.join(run.workdir, EVAL_SUMMARY_FILE))


def mark_diverged(run: Run, error: Exception) -> None:
    message = str(error)
    step = re.search(r"at step (\d+)", message)
    os.makedirs(run.workdir, exist_ok=True)
    write_json_atomic(os.path.join(run.workdir, DIVERGED_FILE), {
        "step": int(step.group(1)) if step else None, "message": message,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


# ------------------------------------------------------------------------------------------ training
def execute(condition: list[Run], config, datasets: dict, programs=None, on_seed_steps=None) -> None:
    """Train (or resume) one condition's seeds together as one K-seed program, then evaluate each seed
    on the test split. Transfer seeds start from their own source run (``Run.source_workdir``). A
    divergence is recorded, not raised (module docstring). ``programs``: the study's
    :class:`~jaxfcn.train.programs.ProgramSet`, so conditions of one architecture share their programs.
    ``on_seed_steps(n)``: told of every ``n`` seed-steps trained as they happen (the study's progress bar)."""
    from jaxfcn.train.evaluate import evaluate_run
    from jaxfcn.train.run_files import TrainingDiverged
    from jaxfcn.train.multiseed import train_seeds

    first = condition[0]
    c = run_config(config, first)
    key = (c.data.task, c.data.train_size)
    if key not in datasets:
        from jaxfcn.data import open_dataset

        datasets[key] = open_dataset(c.data, depth=c.model.depth, progress=False)
    steps = c.train.steps
    pending = [r for r in condition if run_status(r) == OK and not trained_to(r.workdir, steps)]
    if pending and len(pending) == len(condition):
        c.train.seed, c.train.num_seeds = first.seed, len(condition)
        seed_inits = {run.seed: run.source_workdir for run in condition if run.source_workdir}
        try:
            train_seeds(c, program_dir(first), dataset=datasets[key], programs=programs, progress=False,
                        seed_inits=seed_inits, on_step=_step_counter(on_seed_steps, len(condition)))
            pending = []
        except TrainingDiverged:
            pass  # find the seed: each resumes alone below from its last checkpoint
    for run in pending:
        _train_alone(run, config, datasets[key], programs, on_step=_step_counter(on_seed_steps, 1))
    for run in condition:
        if not is_done(run):
            evaluate_run(run.workdir, split="test", dataset=datasets[key], progress=False)


def _step_counter(on_seed_steps, seeds: int):
    """An ``on_step(step)`` for a training loop (first called with the step it starts from) that reports
    each advance, times the seeds trained together, to ``on_seed_steps``."""
    if on_seed_steps is None:
        return None
    reached = {}

    def on_step(step: int) -> None:
        if "step" in reached:
            on_seed_steps((step - reached["step"]) * seeds)
        reached["step"] = step

    return on_step


def _train_alone(run: Run, config, dataset, programs=None, on_step=None) -> None:
    """Train (or resume) one seed of a condition in its own workdir, as ``jaxfcn train --seed s`` would;
    a divergence marks the run."""
    from jaxfcn.train.loop import train_and_evaluate
    from jaxfcn.train.run_files import TrainingDiverged
    from jaxfcn.train.multiseed import seed_config

    try:
        train_and_evaluate(seed_config(run_config(config, run), run.seed), run.workdir, dataset=dataset,
                           programs=programs, progress=False, on_step=on_step)
    except TrainingDiverged as error:
        mark_diverged(run, error)


# ------------------------------------------------------------------------------------------- records
def run_record(run: Run) -> dict:
    """What the claims need of one run: status, per-case test Dice (real cases marked), the val curve."""
    status = run_status(run)
    record = {"kind": run.kind, "target": task_label(run.task), "train_size": run.train_size,
              "regime": run.regime, "seed": run.seed, "workdir": run.workdir, "status": status,
              "diverged": diverged_info(run), "test_dice": None, "test_hd95": None, "test_cases": {},
              "test_dice_real": None, "val_curve": None, "final_val_dice": None, "val_dice_auc": None}
    if os.path.isfile(os.path.join(run.workdir, METRICS_FILE)):
        steps, dice, _ = curves.validation_curve(curves.read_metrics(run.workdir))
        record["val_curve"] = {"steps": steps.tolist(), "dice": dice.tolist()}
        record["final_val_dice"] = float(dice[-1]) if dice.size else None
        record["val_dice_auc"] = curves.curve_auc(steps, dice)
    if status != OK:
        return record
    with open(os.path.join(run.workdir, EVAL_SUMMARY_FILE)) as f:
        summary = json.load(f)
    cases = {c["case_id"]: c["metrics"]["mean"]["Dice"] for c in summary["metric_per_case"]}
    real = [d for case, d in cases.items() if is_real_case(case) and d is not None]
    record.update(test_dice=summary["foreground_mean"]["Dice"], test_hd95=summary["foreground_mean"]["HD95"],
                  test_cases=cases, test_dice_real=sum(real) / len(real) if real else None)
    return record


def design(config, sources: list[Run], targets: list[Run]) -> dict:
    s = config.study
    return {"grid": s.get("grid", "custom"), "source": task_label(s.source),
            "targets": [task_label(t) for t in s.targets], "train_sizes": list(s.train_sizes),
            "regimes": list(s.regimes), "seeds": sorted({r.seed for r in targets}),
            "source_steps": s.source_steps,
            "target_steps": {task_label(t): n for t, n in target_steps(s).items()},
            "runs": len(sources) + len(targets)}


def about(started: float, phases: dict[str, float] | None = None, tasks=()) -> dict:
    """Provenance: machine, versions, date, wall time (and its split by phase, in minutes), the data."""
    import jax

    from jaxfcn.data import builtin

    folders = [str(t) for t in tasks if not builtin.is_builtin(t)]
    data = ([f"folders {', '.join(folders)}"] if folders else []) + (
        ["built-in MRI: see docs/data.md for sources, citations and licences"] if len(folders) < len(tasks) or not tasks
        else [])

    return {"machine": f"{platform.node()} · {platform.processor() or platform.machine()} · "
                       f"{os.cpu_count()} cores · backend {jax.default_backend()}",
            "versions": f"python {platform.python_version()}, jax {jax.__version__}",
            "total time": f"{(time.time() - started) / 60:.1f} min",
            **({"phases": ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases.items())}
               if phases else {}),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "data": "; ".join(data)}


# ------------------------------------------------------------------------------------------ progress
def condition_work(condition: list[Run], config) -> int:
    """What the time-left estimate weighs a condition by: its training steps × its seeds."""
    run = condition[0]
    steps = config.study.source_steps if run.kind == "source" else target_steps(config.study)[run.task]
    return int(steps) * len(condition)


def condition_label(condition: list[Run]) -> str:
    run = condition[0]
    if run.kind == "source":
        return f"source {task_label(run.task)}"
    return f"{task_label(run.task)} n={run.train_size or 'all'} {run.regime}"


def verdict_line(claims: list[dict]) -> str:
    """Every claim's verdict in one line, in claim order: ``claims: 1 mixed, 2 not supported, …``."""
    return "claims: " + (", ".join(f"{row['claim']} {row['verdict']}" for row in claims) or "none")


def _progress_line(run: Run, seconds: float, seeds: int) -> str:
    record = run_record(run)
    if record["status"] != OK:
        detail = (record["diverged"] or {}).get("message", "") if record["status"] == DIVERGED else ""
        return f"{record['status']:>5}  {run.label}" + (f": {detail}" if detail else "")
    return (f"done  {run.label}: test Dice {record['test_dice']:.3f} "
            f"({seconds:.0f} s per seed, {seeds} seeds in one program)")


@holding("out_dir", flag="--out")  # one study writes out_dir at a time
def run_study(config, out_dir: str, progress: bool = True) -> dict:
    from tqdm import tqdm

    from jaxfcn.reproduce import analysis, claims, report

    started = time.time()
    sources, targets = plan(config, out_dir)
    analysis.check_settings(config)  # before anything is written or trained
    check_tasks(config)
    os.makedirs(out_dir, exist_ok=True)
    runs = sources + targets
    datasets: dict = {}
    from jaxfcn.train.programs import ProgramSet

    programs = ProgramSet()  # built once per architecture and training setting, handed to every condition
    groups = conditions(runs)
    work = [condition_work(c, config) for c in groups]
    pending = [i for i, c in enumerate(groups) if not all(is_done(run) for run in c)]
    finished = len(groups) - len(pending)
    # smoothing=0: the rate is the mean over this invocation (conditions differ in speed, so tqdm's default
    # moving average would follow the current one alone); `initial` is excluded from it.
    bar = tqdm(total=sum(work), initial=sum(work) - sum(work[i] for i in pending), desc="study", smoothing=0,
               disable=not progress, dynamic_ncols=True, postfix=f"conditions {finished}/{len(groups)}",
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} seed-steps{postfix} "
                          "[{elapsed} elapsed, {remaining} left]")
    for i in pending:
        bar.set_postfix_str(f"conditions {finished}/{len(groups)}, now {condition_label(groups[i])}")
        t0 = time.time()
        shown = [0]  # seed-steps of this condition on the bar so far (a resumed condition reports fewer)

        def advance(seed_steps: int, total: int = work[i]) -> None:
            seed_steps = min(seed_steps, total - shown[0])
            shown[0] += seed_steps
            bar.update(seed_steps)

        execute(groups[i], config, datasets, programs, on_seed_steps=advance)
        seconds = (time.time() - t0) / len(groups[i])
        for run in groups[i]:
            tqdm.write(_progress_line(run, seconds, len(groups[i])))
        finished += 1
        bar.set_postfix_str(f"conditions {finished}/{len(groups)}", refresh=False)
        advance(work[i])  # the rest: steps trained before a resume, or a seed retrained alone
    bar.close()
    phases = {"training and evaluation": time.time() - started}
    results = {"design": design(config, sources, targets), "runs": [run_record(r) for r in targets],
               "source": [run_record(r) for r in sources]}
    status = {r["workdir"]: r["status"] for r in results["runs"] + results["source"]}
    analysed = time.time()
    results.update(analysis.analyse(config, sources, targets, status, progress=progress))
    phases["filters, CKA and evolution"] = time.time() - analysed
    results["about"] = about(started, phases, tasks=(config.study.source, *config.study.targets))
    results["claims"], results["tests"] = claims.evaluate_claims(results)
    results["conditions"] = claims.condition_summary(results, is_real=is_real_case)
    results["cka_summary"] = claims.cka_summary(results)
    results["rules"] = {"version": claims.RULES_VERSION, "rules": {str(k): v for k, v in claims.RULES.items()},
                        "common": claims.COMMON_RULE, "deviations": claims.DEVIATIONS,
                        "constants": {"dice_floor": claims.DICE_FLOOR, "target_fraction": claims.TARGET_FRACTION,
                                      "frozen_level": claims.FROZEN_LEVEL, "bootstrap_draws": claims.BOOTSTRAP_DRAWS,
                                      "min_seeds": claims.MIN_SEEDS}}
    figures = analysis.figures(results, out_dir, config, is_real=is_real_case)
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    report.write_report(results, figures, out_dir)
    return results
