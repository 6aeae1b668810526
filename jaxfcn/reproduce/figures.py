"""Figures of the study report (PNG, matplotlib Agg). Each takes the results dict and an output path."""
from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfcn.reproduce.stats import mean_interval  # noqa: E402

REGIME_STYLE = {"random": ("tab:gray", "o"), "transfer": ("tab:blue", "s"),
                "frozen_random": ("tab:orange", "^"), "frozen_transfer": ("tab:green", "v")}


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dice_vs_size(results, path):
    """Test Dice (mean and 95% interval over seeds) against target training-set size, per regime and target."""
    targets = sorted({r["target"] for r in results["runs"]})
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        by = defaultdict(list)
        for r in results["runs"]:
            if r["target"] == target:
                by[(r["regime"], r["train_size"])].append(r["test_dice"])
        for regime, (color, marker) in REGIME_STYLE.items():
            sizes = sorted(n for g, n in by if g == regime)
            if not sizes:
                continue
            s = [mean_interval(by[(regime, n)]) for n in sizes]
            m = np.array([x["mean"] for x in s])
            ax.errorbar(sizes, m, yerr=[m - [x["low"] for x in s], [x["high"] for x in s] - m], color=color,
                        marker=marker, capsize=3, label=regime)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("target training examples")
        ax.set_ylabel("test Dice (mean, 95% CI)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def time_to_95(results, path):
    """Steps to reach 95% of the final validation Dice, per regime (all targets and sizes pooled)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    regimes = [g for g in REGIME_STYLE if any(r["regime"] == g for r in results["runs"])]
    data = [[r["steps_to_95"] for r in results["runs"] if r["regime"] == g and r["steps_to_95"] is not None]
            for g in regimes]
    ax.boxplot(data, tick_labels=regimes)
    ax.set_ylabel("steps to 95% of final val Dice")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def filter_change(results, path):
    """Relative filter change ‖W−W0‖/‖W0‖ per layer (mean over runs), one line per regime."""
    fig, ax = plt.subplots(figsize=(8, 4))
    layers = list(dict.fromkeys(f["layer"] for f in results.get("filters", [])))
    for regime, (color, marker) in REGIME_STYLE.items():
        vals = [[f["relative_change"] for f in results["filters"] if f["regime"] == regime and f["layer"] == l]
                for l in layers]
        if not any(vals):
            continue
        ax.plot(range(len(layers)), [np.mean(v) if v else np.nan for v in vals], color=color, marker=marker,
                label=regime)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel("relative change from init")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reuse_per_layer(results, path):
    """CKA(source, fine-tuned) per layer, and CKA between/within regimes, per target."""
    targets = sorted(results.get("cka", {}))
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(6 * max(1, len(targets)), 4), squeeze=False)
    layers = results.get("layers", [])
    for ax, target in zip(axes[0], targets):
        c = results["cka"][target]
        curves = {"source vs fine-tuned (reuse)": c.get("reuse", {}),
                  "transfer vs random": c.get("between", {}),
                  "within random seeds": c.get("within", {}).get("random", {}),
                  "within transfer seeds": c.get("within", {}).get("transfer", {})}
        for name, per_layer in curves.items():
            ls = [l for l in layers if l in per_layer]
            if ls:
                ax.plot(range(len(ls)), [np.mean(per_layer[l]) for l in ls], marker="o", label=name)
                ax.set_xticks(range(len(ls)), ls, rotation=45, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("linear CKA")
        ax.set_title(target)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def prediction_examples(examples, path):
    """``examples``: list of (title, image2d, label2d, prediction2d)."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
    for row, (title, image, label, pred) in zip(axes, examples):
        vmax = max(int(label.max()), int(pred.max()), 1)
        for ax, overlay, name in zip(row, (None, label, pred), ("image", "reference", "prediction")):
            ax.imshow(image.T, cmap="gray", origin="lower")
            if overlay is not None:
                ax.imshow(np.ma.masked_equal(overlay.T, 0), cmap="tab10", vmin=0, vmax=max(vmax, 9), alpha=0.55,
                          origin="lower", interpolation="nearest")
            ax.set_title(f"{title}: {name}", fontsize=8)
            ax.axis("off")
    return _save(fig, path)


def model_heatmaps(matrices: dict, models: list[str], path, title: str = ""):
    """Model × model CKA, one panel per layer (``matrices``: layer → M×M)."""
    layers = list(matrices)
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    for ax, layer in zip(axes.ravel(), layers):
        im = ax.imshow(np.asarray(matrices[layer]), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(layer, fontsize=9)
        ax.set_xticks(range(len(models)), models, rotation=90, fontsize=6)
        ax.set_yticks(range(len(models)), models, fontsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="linear CKA")
    fig.suptitle(f"CKA between models per layer — {title}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
