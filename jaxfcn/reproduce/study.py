"""Run the study: source pretraining, the target grid, evaluation, analysis, ``results.json`` and the report.

Resumable at two depths: a run whose workdir already holds its test ``summary.json`` is skipped, and an
interrupted run resumes from its own latest checkpoint (see :mod:`jaxfcn.train.loop`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time

from jaxfcn.reproduce.grid import Run, plan, run_config
from jaxfcn.train.workdir import EVAL_SUMMARY_FILE, METRICS_FILE, write_json_atomic


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


def execute(run: Run, config, datasets: dict) -> None:
    """Train (or resume) and evaluate one run on the test split."""
    from jaxfcn.train.evaluate import evaluate_run
    from jaxfcn.train.loop import train_and_evaluate

    c = run_config(config, run)
    key = (c.data.task, c.data.train_size)
    if key not in datasets:
        from jaxfcn.data import open_dataset

        datasets[key] = open_dataset(c.data, depth=c.model.depth, progress=False)
    train_and_evaluate(c, run.workdir, dataset=datasets[key], progress=False)
    evaluate_run(run.workdir, split="test", dataset=datasets[key], progress=False)


def run_record(run: Run) -> dict:
    with open(os.path.join(run.workdir, EVAL_SUMMARY_FILE)) as f:
        summary = json.load(f)
    step95, sec95 = steps_to_fraction_of_final(run.workdir)
    return {"kind": run.kind, "target": run.task, "train_size": run.train_size, "regime": run.regime,
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
    for run in runs:
        if not is_done(run):
            t0 = time.time()
            execute(run, config, datasets)
            tqdm.write(f"done  {run.label}: test Dice {run_record(run)['test_dice']:.3f} ({time.time() - t0:.0f} s)")
        bar.update(1)
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
