"""Dice and HD95 against hand cases and an independent brute-force computation."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jaxfcn.train.metrics import (case_metrics, confusion_counts, dice_from_counts, dice_score, hd95, json_safe,
                                  mean_foreground_dice, summarize)


def brute_force_hd95(pred, ref, spacing):
    """Independent HD95: surfaces by explicit neighbour shifts, all pairwise distances with cdist."""

    def surface_points(mask):
        padded = np.pad(mask, 1)  # outside the array is background
        interior = padded.copy()
        for axis in range(mask.ndim):
            for shift in (1, -1):
                interior &= np.roll(padded, shift, axis=axis)
        border = padded & ~interior
        return np.argwhere(border[tuple(slice(1, -1) for _ in range(mask.ndim))]) * np.asarray(spacing)

    p, g = surface_points(pred), surface_points(ref)
    d = cdist(p, g)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_dice_hand_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True
    b[0, 2:] = True
    b[1, :2] = True
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, a) == 1.0
    assert dice_score(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice_score(np.zeros_like(a), np.zeros_like(a)))


def test_hd95_single_voxels_with_spacing():
    pred = np.zeros((5, 6, 2), bool)
    ref = np.zeros((5, 6, 2), bool)
    pred[0, 0, 0] = True
    ref[3, 4, 0] = True
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(pred, ref, (2.0, 1.0, 7.0)) == pytest.approx(math.sqrt(36 + 16))


def test_hd95_shifted_square_is_the_shift():
    ref = np.zeros((20, 20), bool)
    ref[5:12, 5:12] = True
    pred = np.roll(ref, 3, axis=0)
    assert hd95(pred, ref, (1.5, 1.0)) == pytest.approx(4.5)


def test_hd95_empty_conventions():
    empty = np.zeros((4, 5, 6), bool)
    full = empty.copy()
    full[1, 1, 1] = True
    assert math.isnan(hd95(empty, empty, (1, 1, 1)))
    diag = math.sqrt((3 * 2.0) ** 2 + (4 * 1.0) ** 2 + (5 * 0.5) ** 2)
    assert hd95(full, empty, (2.0, 1.0, 0.5)) == pytest.approx(diag)
    assert hd95(empty, full, (2.0, 1.0, 0.5)) == pytest.approx(diag)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 12, 10)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c1, c2 = rng.uniform(2, 10, 3), rng.uniform(2, 10, 3)
    ref = (x - c1[0]) ** 2 + (y - c1[1]) ** 2 + (z - c1[2]) ** 2 < rng.uniform(4, 25)
    pred = ((x - c2[0]) ** 2 + (y - c2[1]) ** 2 + (z - c2[2]) ** 2 < rng.uniform(4, 25)) | (rng.random(shape) < 0.01)
    ref[0, :3, :3] = True  # touch the array border: it counts as surface
    spacing = (1.0, 0.7, 2.5)
    assert hd95(pred, ref, spacing) == pytest.approx(brute_force_hd95(pred, ref, spacing), rel=1e-9)


def test_case_metrics_and_summary():
    ref = np.zeros((6, 6, 3), np.int32)
    ref[1:3, 1:3] = 1
    pred = ref.copy()
    pred[4, 4, 0] = 2  # class 2: predicted, absent from the reference
    classes = ("background", "a", "b", "c")  # class c: absent everywhere
    m = case_metrics(pred, ref, classes, (1.0, 1.0, 1.0))
    assert m["a"]["Dice"] == 1.0 and m["a"]["HD95"] == 0.0
    assert m["b"]["Dice"] == 0.0 and m["b"]["HD95"] == pytest.approx(math.sqrt(25 + 25 + 4))
    assert math.isnan(m["c"]["Dice"]) and math.isnan(m["c"]["HD95"])
    assert m["mean"]["Dice"] == pytest.approx(0.5)  # NaN of class c excluded
    s = summarize([{"case_id": "x", "metrics": m}, {"case_id": "y", "metrics": case_metrics(ref, ref, classes, (1, 1, 1))}],
                  classes)
    assert s["mean"]["a"]["Dice"] == 1.0
    assert s["mean"]["b"]["Dice"] == 0.0  # case y: class b absent in both → NaN → excluded
    assert math.isnan(s["mean"]["c"]["Dice"])
    assert s["foreground_mean"]["Dice"] == pytest.approx(0.5)
    text = json.dumps(json_safe(s), allow_nan=False)  # strict JSON: NaN written as null
    assert '"Dice": null' in text


def test_confusion_counts_and_pooled_dice():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (3, 5, 5))
    label = rng.integers(0, 3, (3, 5, 5))
    weight = np.array([1, 1, 0])
    counts = np.asarray(confusion_counts(jnp.asarray(pred), jnp.asarray(label), 3, jnp.asarray(weight)))
    for c in range(3):
        p, g = pred[:2] == c, label[:2] == c
        assert counts[c].tolist() == [int((p & g).sum()), int(p.sum()), int(g.sum())]
        assert dice_from_counts(counts)[c] == pytest.approx(dice_score(p, g))
    assert mean_foreground_dice(counts) == pytest.approx(np.mean(dice_from_counts(counts)[1:]))
    assert math.isnan(mean_foreground_dice(np.zeros((3, 3))))
