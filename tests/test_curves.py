"""Time to a Dice target and the area under the validation curve, on hand-made metrics records."""
import json

import pytest

from jaxfcn.train.curves import (curve_auc, read_metrics, time_to_fraction_of_best, time_to_target,
                                 val_dice_auc, validation_curve)


def records(dice_by_step: dict, extra_logs=()):
    """Flush records as the training loop writes them: log-only records have no ``val_dice``."""
    out = [{"step": s, "loss": 1.0, "train_time_s": 0.5 * s} for s in extra_logs]
    out += [{"step": s, "loss": 1.0, "train_time_s": 0.5 * s, "val_dice": d} for s, d in dice_by_step.items()]
    return sorted(out, key=lambda r: r["step"])


def test_first_evaluation_reaching_the_target():
    recs = records({50: 0.1, 100: 0.55, 150: 0.61, 200: 0.58}, extra_logs=[25, 75])
    t = time_to_target(recs, 0.6)
    assert t == {"target": 0.6, "reached": True, "step": 150, "train_time_s": 75.0, "val_dice": 0.61,
                 "censored_at": None}
    assert time_to_target(recs, 0.55)["step"] == 100  # ≥, not >


def test_a_run_that_never_learns_is_censored_not_fast():
    flat = records({50: 0.02, 100: 0.02, 150: 0.021, 200: 0.02})
    t = time_to_target(flat, 0.6)
    assert not t["reached"] and t["step"] is None and t["censored_at"] == 200
    # the old definition (fraction of the run's own final Dice) made this run the fastest possible:
    assert time_to_fraction_of_best(flat)["95%"]["step"] == 50


def test_fraction_of_best_and_nonfinite_values_are_skipped():
    recs = records({10: 0.2, 20: float("nan"), 30: 0.9, 40: 1.0})
    steps, dice, _ = validation_curve(recs)
    assert steps.tolist() == [10, 30, 40]
    out = time_to_fraction_of_best(recs)
    assert set(out) == {"90%", "95%", "99%"}
    assert out["90%"]["step"] == 30 and out["95%"]["step"] == 40 and out["99%"]["step"] == 40
    assert time_to_fraction_of_best([]) == {} and val_dice_auc([]) is None


def test_auc_is_the_trapezoidal_mean_over_the_evaluated_span():
    recs = records({100: 0.2, 200: 0.6, 400: 0.8})
    # (100·(0.2+0.6)/2 + 200·(0.6+0.8)/2) / 300
    assert val_dice_auc(recs) == pytest.approx((40 + 140) / 300)
    assert curve_auc([5], [0.4]) == 0.4
    # a curve that rises early has the larger area at the same final Dice
    assert curve_auc([1, 2, 3], [0.8, 0.8, 0.8]) > curve_auc([1, 2, 3], [0.0, 0.4, 0.8])


def test_read_metrics_skips_a_line_cut_by_a_kill(tmp_path):
    lines = [json.dumps({"step": 1, "val_dice": 0.3}), json.dumps({"step": 2, "val_dice": 0.5}), '{"step": 3, "va']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
