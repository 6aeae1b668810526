"""The validation-Dice curve of a run, and the one definition of "time to a Dice target" (paper claim 1).

A run's ``metrics.jsonl`` holds one record per flush; the records with a finite ``val_dice`` form its
validation curve: steps s_1 < … < s_m with Dice D_1 … D_m (training time t_1 … t_m where logged).

* **Time to a target** τ (:func:`time_to_target`): the first evaluated step s_k with D_k ≥ τ, with the
  training time t_k logged there. A run that never reaches τ within its budget is **censored**: it is
  reported as ``reached = False`` with ``censored_at`` = its last evaluated step, and never as fast.
  ``train_summary.json`` applies this to τ = f · (the run's best val Dice) for f = 90/95/99 %
  (:func:`time_to_fraction_of_best`); the study's claim 1 applies it to a target common to every run of a
  condition (:mod:`jaxfcn.reproduce.claims`).
* **Area under the curve** (:func:`val_dice_auc`): the trapezoidal area under D over [s_1, s_m] divided by
  s_m − s_1, i.e. the mean validation Dice over training (D_1 when there is a single evaluation).

Example::

    records = read_metrics(workdir)
    time_to_target(records, 0.6)      # {"target": 0.6, "reached": True, "step": 300, ...}
    val_dice_auc(records)             # 0.52
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from jaxfcn.train.workdir import METRICS_FILE

BEST_FRACTIONS = (0.90, 0.95, 0.99)


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (a line cut by a kill is skipped)."""
    records = []
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def validation_curve(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, val Dice, train_time_s) of the records with a finite ``val_dice``, in step order
    (train time NaN where not logged)."""
    evals = sorted((r for r in records if _finite(r.get("val_dice"))), key=lambda r: r["step"])
    steps = np.asarray([int(r["step"]) for r in evals], np.int64)
    dice = np.asarray([float(r["val_dice"]) for r in evals], np.float64)
    times = np.asarray([float(r["train_time_s"]) if _finite(r.get("train_time_s")) else math.nan for r in evals])
    return steps, dice, times


def first_reaching(steps, dice, target: float) -> int | None:
    """Index of the first evaluation with ``dice ≥ target`` (None: never reached, i.e. censored)."""
    hits = np.flatnonzero(np.asarray(dice, np.float64) >= target)
    return int(hits[0]) if hits.size else None


def time_to_target(records: Sequence[dict], target: float) -> dict:
    """``{"target", "reached", "step", "train_time_s", "val_dice", "censored_at"}`` (module docstring).

    ``step``/``train_time_s``/``val_dice`` are those of the first evaluation reaching ``target`` (None if
    censored); ``censored_at`` is the last evaluated step when censored (None otherwise, or with no
    evaluations at all).
    """
    steps, dice, times = validation_curve(records)
    k = first_reaching(steps, dice, target)
    if k is None:
        return {"target": float(target), "reached": False, "step": None, "train_time_s": None, "val_dice": None,
                "censored_at": int(steps[-1]) if steps.size else None}
    return {"target": float(target), "reached": True, "step": int(steps[k]),
            "train_time_s": None if math.isnan(times[k]) else float(times[k]), "val_dice": float(dice[k]),
            "censored_at": None}


def time_to_fraction_of_best(records: Sequence[dict], fractions: Sequence[float] = BEST_FRACTIONS) -> dict:
    """``{"90%": time_to_target(records, 0.9 · best), …}`` with best = the run's best val Dice ({} without
    evaluations). Every entry is reached (the best evaluation reaches all of them)."""
    _, dice, _ = validation_curve(records)
    if not dice.size:
        return {}
    best = float(dice.max())
    return {f"{round(f * 100)}%": time_to_target(records, f * best) for f in fractions}


def val_dice_auc(records: Sequence[dict]) -> float | None:
    """Mean validation Dice over training: trapezoidal area over the evaluated steps / their span."""
    steps, dice, _ = validation_curve(records)
    return curve_auc(steps, dice)


def curve_auc(steps, dice) -> float | None:
    """:func:`val_dice_auc` of a curve given as arrays (None when empty)."""
    steps, dice = np.asarray(steps, np.float64), np.asarray(dice, np.float64)
    if not steps.size:
        return None
    if steps.size == 1 or steps[-1] == steps[0]:
        return float(dice[-1])
    area = float(np.sum(np.diff(steps) * (dice[1:] + dice[:-1]) / 2))
    return area / float(steps[-1] - steps[0])


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
