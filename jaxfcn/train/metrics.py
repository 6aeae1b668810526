"""Evaluation metrics: Dice and HD95 per foreground class, per case, and their means.

Definitions (for one class c; ``P`` = predicted voxels of c, ``G`` = reference voxels of c):

- **Dice** ``= 2|P ∩ G| / (|P| + |G|)``.
- **Surface** of a mask: its voxels with at least one face neighbour (6-connectivity in 3D, 4 in 2D)
  outside the mask; voxels on the array border count as surface (the outside is background).
- **HD95** (the medpy / nnU-Net-v1 convention): with ``d(x, B)`` the Euclidean distance in millimetres
  (voxel ``spacing`` applied) from voxel x to the nearest surface voxel of B,
  ``HD95 = max(q95{d(x, G) : x ∈ surface(P)}, q95{d(y, P) : y ∈ surface(G)})`` where q95 is numpy's
  95th percentile with linear interpolation.
- **Empty masks**: ``P`` and ``G`` both empty → Dice and HD95 are NaN (the class is absent; NaN is excluded
  from every mean and written as ``null`` in JSON). Exactly one empty → Dice 0 and HD95 = the diagonal of
  the volume in millimetres ``sqrt(Σ_i ((n_i − 1)·s_i)²)``, the largest distance the grid allows, so a
  missed or hallucinated structure is penalised by a finite worst case.
- **Means**: a case's ``mean`` is the NaN-ignoring mean over its foreground classes; a class's mean is the
  NaN-ignoring mean over cases; ``foreground_mean`` is the mean of the class means (nnU-Net's summary).

The validation metric used during training, :func:`mean_foreground_dice`, pools the counts of a whole pass
(``Dice_c = 2 ΣTP_c / (ΣP_c + ΣG_c)`` over all examples) and averages over the foreground classes that
occur in prediction or reference.

Example::

    result = case_metrics(pred, ref, class_names=("background", "gm", "wm"), spacing=(1.0, 1.0, 1.0))
    result["gm"]["Dice"], result["gm"]["HD95"], result["mean"]["Dice"]
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

METRICS = ("Dice", "HD95")


# --- jittable pooled counts (validation during training) -------------------------------------------

def confusion_counts(pred: jax.Array, labels: jax.Array, num_classes: int, weight: jax.Array | None = None) -> jax.Array:
    """(K, 3) int32: per class [|P ∩ G|, |P|, |G|] summed over the (weighted 0/1) examples."""
    p = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)
    g = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    if weight is not None:
        w = jnp.asarray(weight).astype(jnp.int32).reshape((-1,) + (1,) * (labels.ndim - 1) + (1,))
        p, g = p * w, g * w
    axes = tuple(range(labels.ndim))
    return jnp.stack([jnp.sum(p * g, axes), jnp.sum(p, axes), jnp.sum(g, axes)], axis=-1)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per class from (K, 3) counts; NaN where both P and G are empty."""
    counts = np.asarray(counts, np.float64)
    tp, npred, nref = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npred + nref > 0, 2.0 * tp / (npred + nref), np.nan)


def mean_foreground_dice(counts: np.ndarray) -> float:
    """Mean Dice over foreground classes (1..K−1) from pooled counts; NaN if no class occurs."""
    dice = dice_from_counts(counts)[1:]
    return float(np.nanmean(dice)) if np.any(np.isfinite(dice)) else float("nan")


# --- per-case metrics (numpy / scipy) --------------------------------------------------------------

def dice_score(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    total = int(pred_mask.sum()) + int(ref_mask.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred_mask, ref_mask).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (array borders count as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest voxel-to-voxel distance in the grid, in millimetres."""
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see the module docstring for empty masks)."""
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    spacing = tuple(float(s) for s in spacing)[:pred_mask.ndim]
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not (has_pred or has_ref):
        return float("nan")
    if not (has_pred and has_ref):
        return volume_diagonal(pred_mask.shape, spacing)
    # Distances only involve the two masks' surfaces, so cropping to the union's bounding box (plus one
    # background voxel, which keeps the surfaces unchanged) is exact and makes large volumes cheap.
    union = np.argwhere(pred_mask | ref_mask)
    lo, hi = union.min(0), union.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred_mask = np.pad(pred_mask[crop], 1)
    ref_mask = np.pad(ref_mask[crop], 1)
    pred_surface, ref_surface = surface(pred_mask), surface(ref_mask)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def case_metrics(pred: np.ndarray, ref: np.ndarray, class_names: Sequence[str],
                 spacing: Sequence[float]) -> dict:
    """``{class_name: {"Dice", "HD95", "n_pred", "n_ref"}, ..., "mean": {"Dice", "HD95"}}`` for classes 1..K−1."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    out = {}
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        p, g = pred == c, ref == c
        out[name] = {"Dice": dice_score(p, g), "HD95": hd95(p, g, spacing),
                     "n_pred": int(p.sum()), "n_ref": int(g.sum())}
    out["mean"] = {m: _nanmean([out[n][m] for n in class_names[1:]]) for m in METRICS}
    return out


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")


def summarize(per_case: Sequence[dict], class_names: Sequence[str]) -> dict:
    """nnU-Net-like summary: per-class means over cases and the foreground mean of those means.

    ``per_case`` items are ``{"case_id": ..., "metrics": case_metrics(...)}``.
    """
    foreground = list(class_names[1:])
    mean = {name: {m: _nanmean([c["metrics"][name][m] for c in per_case]) for m in METRICS} for name in foreground}
    return {
        "metric_per_case": list(per_case),
        "mean": mean,
        "foreground_mean": {m: _nanmean([mean[name][m] for name in foreground]) for m in METRICS},
        "num_cases": len(per_case),
    }


def json_safe(obj):
    """Replace NaN/inf floats by None (strict JSON has no NaN) throughout a nested structure."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
