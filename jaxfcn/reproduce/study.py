"""Run the study: source pretraining, the target grid, evaluation, analysis, ``results.json`` and the report.

Each condition's seeds train together in one K-seed program (:func:`jaxfcn.train.multiseed.train_seeds`,
``--seed-strategy auto``), and the persistent compilation cache of :mod:`jaxfcn.runtime` lets conditions
with the same architecture reuse one compiled step.

Resumable at two depths: a run whose workdir already holds its test ``summary.json`` is skipped, and an
interrupted condition resumes from the latest checkpoint all its seeds saved (see :mod:`jaxfcn.train.multiseed`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time

from jaxfcn.reproduce.grid import Run, conditions, plan, program_dir, run_config, task_label
from jaxfcn.train.workdir import EVAL_SUMMARY_FILE, METRICS_FILE, TRAIN_SUMMARY_FILE, write_json_atomic


def steps_to_fraction_of_final(workdir: str, fraction: float = 0.95) -> tuple[int | None, float | None]:
    """(step, seconds) at the first validation reaching ``fraction`` × the run's final validation Dice.

    Seconds are training time since the first logged step, so compilation is excluded.
    """
    records = []
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    evals = [r for r in records if r.get("val_dice") is not None and math.isfinite(r["val_dice"])]
    if not evals:
        return None, None
    final = evals[-1]["val_dice"]
    first = next(r for r in evals if r["val_dice"] >= fraction * final)
    t0 = records[0].get("train_time_s") or 0.0
    seconds = first.get("train_time_s")
    return int(first["step"]), (None if seconds is None else float(seconds - t0))


def is_done(run: Run) -> bool:
    return os.path.isfile(os.path.join(run.workdir, EVAL_SUMMARY_FILE))


def is_trained(run: Run, steps: int) -> bool:
    path = os.path.join(run.workdir, TRAIN_SUMMARY_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("final_step") == steps


def execute(condition: list[Run], config, datasets: dict) -> None:
    """Train (or resume) one condition's seeds together as one K-seed program, then evaluate each seed
    on the test split. Transfer seeds start from their own source run (``Run.source_workdir``)."""
    from jaxfcn.train.evaluate import evaluate_run
    from jaxfcn.train.multiseed import train_seeds

    first = condition[0]
    c = run_config(config, first)
    c.train.seed, c.train.num_seeds = first.seed, len(condition)
    key = (c.data.task, c.data.train_size)
    if key not in datasets:
        from jaxfcn.data import open_dataset

        datasets[key] = open_dataset(c.data, depth=c.model.depth, progress=False)
    if not all(is_trained(run, c.train.steps) for run in condition):
        seed_inits = {run.seed: run.source_workdir for run in condition if run.source_workdir}
        train_seeds(c, program_dir(first), dataset=datasets[key], progress=False, seed_inits=seed_inits)
    for run in condition:
        if not is_done(run):
            evaluate_run(run.workdir, split="test", dataset=datasets[key], progress=False)


def run_record(run: Run) -> dict:
    with open(os.path.join(run.workdir, EVAL_SUMMARY_FILE)) as f:
        summary = json.load(f)
    step95, sec95 = steps_to_fraction_of_final(run.workdir)
    return {"kind": run.kind, "target": task_label(run.task), "train_size": run.train_size, "regime": run.regime,
            "seed": run.seed, "workdir": run.workdir, "test_dice": summary["foreground_mean"]["Dice"],
            "test_hd95": summary["foreground_mean"]["HD95"], "steps_to_95": step95, "seconds_to_95": sec95}


def about(started: float) -> dict:
    import jax

    return {"machine": f"{platform.node()} · {platform.processor() or platform.machine()} · "
                       f"{os.cpu_count()} cores · backend {jax.default_backend()}",
            "versions": f"python {platform.python_version()}, jax {jax.__version__}",
            "total time": f"{(time.time() - started) / 60:.1f} min",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "data": "built-in MRI: see docs/data.md for sources, citations and licences"}


def run_study(config, out_dir: str, progress: bool = True) -> dict:
    from tqdm import tqdm

    from jaxfcn.reproduce import analysis, claims, report

    started = time.time()
    os.makedirs(out_dir, exist_ok=True)
    sources, targets = plan(config, out_dir)
    runs = sources + targets
    datasets: dict = {}
    bar = tqdm(total=len(runs), desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for condition in conditions(runs):
        if not all(is_done(run) for run in condition):
            t0 = time.time()
            execute(condition, config, datasets)
            seconds = (time.time() - t0) / len(condition)
            for run in condition:
                tqdm.write(f"done  {run.label}: test Dice {run_record(run)['test_dice']:.3f} "
                           f"({seconds:.0f} s per seed, {len(condition)} seeds in one program)")
        bar.update(len(condition))
    bar.close()
    results = {"runs": [run_record(r) for r in targets], "source": [run_record(r) for r in sources]}
    results.update(analysis.analyse(config, sources, targets, out_dir, progress=progress))
    results["about"] = about(started)
    rows = claims.evaluate_claims(results)
    results["claims"] = rows
    figures = analysis.figures(results, out_dir, config)
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    report.write_report(results, rows, figures, out_dir)
    return results
