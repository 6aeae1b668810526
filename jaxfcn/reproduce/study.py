"""Run the study: source pretraining, the target grid, evaluation, analysis, ``results.json`` and the report.

Each condition's seeds train together in one K-seed program (:func:`jaxfcn.train.multiseed.train_seeds`,
``--seed-strategy auto``), and the persistent compilation cache of :mod:`jaxfcn.runtime` lets conditions
with the same architecture reuse one compiled step.

Resumable at two depths: a run whose workdir already holds its test ``summary.json`` is skipped, and an
interrupted condition resumes from the latest checkpoint all its seeds saved (see :mod:`jaxfcn.train.multiseed`).

Divergence never aborts the study. When a K-seed program stops on a non-finite loss
(:class:`jaxfcn.train.loop.TrainingDiverged`), its seeds are resumed one at a time from their last
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

from jaxfcn.reproduce.grid import Run, conditions, plan, program_dir, run_config, target_steps, task_label
from jaxfcn.train import curves
from jaxfcn.train.lock import holding
from jaxfcn.train.workdir import EVAL_SUMMARY_FILE, METRICS_FILE, TRAIN_SUMMARY_FILE, write_json_atomic

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


def is_trained(run: Run, steps: int) -> bool:
    path = os.path.join(run.workdir, TRAIN_SUMMARY_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("final_step") == steps


def mark_diverged(run: Run, error: Exception) -> None:
    message = str(error)
    step = re.search(r"at step (\d+)", message)
    os.makedirs(run.workdir, exist_ok=True)
    write_json_atomic(os.path.join(run.workdir, DIVERGED_FILE), {
        "step": int(step.group(1)) if step else None, "message": message,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


# ------------------------------------------------------------------------------------------ training
def execute(condition: list[Run], config, datasets: dict) -> None:
    """Train (or resume) one condition's seeds together as one K-seed program, then evaluate each seed
    on the test split. Transfer seeds start from their own source run (``Run.source_workdir``). A
    divergence is recorded, not raised (module docstring)."""
    from jaxfcn.train.evaluate import evaluate_run
    from jaxfcn.train.loop import TrainingDiverged
    from jaxfcn.train.multiseed import train_seeds

    first = condition[0]
    c = run_config(config, first)
    key = (c.data.task, c.data.train_size)
    if key not in datasets:
        from jaxfcn.data import open_dataset

        datasets[key] = open_dataset(c.data, depth=c.model.depth, progress=False)
    steps = c.train.steps
    pending = [r for r in condition if run_status(r) == OK and not is_trained(r, steps)]
    if pending and len(pending) == len(condition):
        c.train.seed, c.train.num_seeds = first.seed, len(condition)
        seed_inits = {run.seed: run.source_workdir for run in condition if run.source_workdir}
        try:
            train_seeds(c, program_dir(first), dataset=datasets[key], progress=False, seed_inits=seed_inits)
            pending = []
        except TrainingDiverged:
            pass  # find the seed: each resumes alone below from its last checkpoint
    for run in pending:
        _train_alone(run, config, datasets[key])
    for run in condition:
        if not is_done(run):
            evaluate_run(run.workdir, split="test", dataset=datasets[key], progress=False)


def _train_alone(run: Run, config, dataset) -> None:
    """Train (or resume) one seed of a condition in its own workdir, as ``jaxfcn train --seed s`` would;
    a divergence marks the run."""
    from jaxfcn.train.loop import TrainingDiverged, train_and_evaluate
    from jaxfcn.train.multiseed import seed_config

    try:
        train_and_evaluate(seed_config(run_config(config, run), run.seed), run.workdir, dataset=dataset,
                           progress=False)
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


def about(started: float, phases: dict[str, float] | None = None) -> dict:
    """Provenance: machine, versions, date, wall time (and its split by phase, in minutes)."""
    import jax

    return {"machine": f"{platform.node()} · {platform.processor() or platform.machine()} · "
                       f"{os.cpu_count()} cores · backend {jax.default_backend()}",
            "versions": f"python {platform.python_version()}, jax {jax.__version__}",
            "total time": f"{(time.time() - started) / 60:.1f} min",
            **({"phases": ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases.items())}
               if phases else {}),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "data": "built-in MRI: see docs/data.md for sources, citations and licences"}


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
    os.makedirs(out_dir, exist_ok=True)
    runs = sources + targets
    datasets: dict = {}
    bar = tqdm(total=len(runs), desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for condition in conditions(runs):
        if not all(is_done(run) for run in condition):
            t0 = time.time()
            execute(condition, config, datasets)
            seconds = (time.time() - t0) / len(condition)
            for run in condition:
                tqdm.write(_progress_line(run, seconds, len(condition)))
        bar.update(len(condition))
    bar.close()
    phases = {"training and evaluation": time.time() - started}
    results = {"design": design(config, sources, targets), "runs": [run_record(r) for r in targets],
               "source": [run_record(r) for r in sources]}
    status = {r["workdir"]: r["status"] for r in results["runs"] + results["source"]}
    analysed = time.time()
    results.update(analysis.analyse(config, sources, targets, status, progress=progress))
    phases["filters, CKA and evolution"] = time.time() - analysed
    results["about"] = about(started, phases)
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
