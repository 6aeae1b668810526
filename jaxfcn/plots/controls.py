"""Figures of the transfer controls (:mod:`jaxfcn.reproduce.controls`): val-Dice curves with bands, and the
step-0 diagnostics. Each function writes one PNG and returns its path."""
from __future__ import annotations

import os

import numpy as np

from jaxfcn.plots import pyplot as _pyplot
from jaxfcn.plots import save as _save

CURVE_GROUPS = {
    "what is transferred": ["random", "transfer", "transfer_encoder", "same_task", "same_task_fresh_head"],
    "optimiser, with matched random init": ["random_low_lr", "transfer_low_lr", "random_warmup", "transfer_warmup"],
    "source checkpoint and head": ["random", "transfer", "transfer_early", "transfer_zero_head", "transfer_probe_head",
                                   "random_probe_head"],
}


def write_figures(results: dict, figures_dir: str) -> dict[str, str]:
    s = results["settings"]
    return {"curves": banded_curves(results["controls"], f"{s['source']} → {s['target']}: validation Dice, mean and "
                                    f"95 % band over {s['seeds']} seeds", os.path.join(figures_dir, "curves.png")),
            "diagnostics": diagnostics_figure(results["diagnostics"], f"step-0 diagnostics on {s['target']} "
                                              f"(mean, 95 % interval over {s['seeds']} seeds)",
                                              os.path.join(figures_dir, "diagnostics.png"))}


def banded_curves(controls: list[dict], title: str, path: str) -> str:
    """One panel per :data:`CURVE_GROUPS` entry: each control's mean val-Dice curve and its band."""
    plt = _pyplot()
    by_name = {c["name"]: c for c in controls}
    groups = {k: [n for n in v if n in by_name] for k, v in CURVE_GROUPS.items()}
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False, sharey=True)
    for ax, (group, names) in zip(axes[0], groups.items()):
        for name in names:
            curve = by_name[name]["curve"]
            steps = np.asarray(curve["steps"])
            dashed = name.startswith("random")
            (line,) = ax.plot(steps, curve["mean"], "--" if dashed else "-", label=name, lw=1.6)
            ax.fill_between(steps, curve["low"], curve["high"], color=line.get_color(), alpha=0.18, lw=0)
        ax.set_title(group)
        ax.set_xlabel("target step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0, 0].set_ylabel("validation mean foreground Dice")
    fig.suptitle(title)
    return _save(fig, path)


def _m(node) -> float:
    return node["mean"]


def _err(node) -> list[float]:
    return [node["mean"] - node["low"], node["high"] - node["mean"]]


def diagnostics_figure(diagnostics: list[dict], title: str, path: str) -> str:
    """Activation RMS ratio and dead-ReLU fraction per layer, initial loss, gradient norm per part, probes."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    starts = [d for d in diagnostics if d["start"] != "random"]
    layers = [k for k in diagnostics[0]["activations"]]
    x = np.arange(len(layers))
    ax = axes[0, 0]
    for d in starts:
        a = d["activations"]
        ax.plot(x, [_m(a[k]["model"]["rms"]) / _m(a[k]["fresh"]["rms"]) for k in layers], "o-", label=d["start"])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, layers, rotation=70, fontsize=7)
    ax.set_ylabel("activation RMS, transferred / fresh")
    ax.set_title("activation scale per layer")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    relu_layers = [k for k in layers if k != "head"]
    xr = np.arange(len(relu_layers))
    for d in starts:
        a = d["activations"]
        ax.plot(xr, [_m(a[k]["model"]["dead_fraction"]) for k in relu_layers], "o-", label=d["start"])
    ref = diagnostics[0]["activations"]
    ax.plot(xr, [_m(ref[k]["fresh"]["dead_fraction"]) for k in relu_layers], "k--", label="fresh init")
    ax.set_xticks(xr, relu_layers, rotation=70, fontsize=7)
    ax.set_ylabel("fraction of channels dead on every target pixel")
    ax.set_title("dead ReLUs per layer")
    ax.legend(fontsize=7)

    names = [d["start"] for d in diagnostics]
    _grouped_bars(axes[0, 2], names, {"Dice + CE": [d["gradients"]["model"]["loss"] for d in diagnostics]},
                  "training loss at step 0", "initial loss")
    _grouped_bars(axes[1, 0], names, {part: [d["gradients"]["model"]["grad_norm"][part] for d in diagnostics]
                                      for part in ("encoder", "decoder", "head")},
                  "‖∂L/∂θ‖ per part at step 0", "gradient norm per part")
    layers_p = list(diagnostics[0]["probe"])
    _grouped_bars(axes[1, 1], names, {layer: [d["probe"][layer]["model"]["balanced_accuracy"] for d in diagnostics]
                                      for layer in layers_p},
                  "balanced accuracy on validation pixels", "linear probe of the target classes (random = fresh init)")

    ax = axes[1, 2]
    for d in diagnostics:
        vals = [d["probe"][layer]["model"]["mean_foreground_dice"] for layer in layers_p]
        ax.errorbar(np.arange(len(layers_p)), [_m(v) for v in vals], yerr=np.array([_err(v) for v in vals]).T,
                    marker="o", capsize=2, label=d["start"])
    ax.set_xticks(np.arange(len(layers_p)), layers_p)
    ax.set_ylabel("probe mean foreground Dice (validation pixels)")
    ax.set_title("linear probe, Dice")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _grouped_bars(ax, names: list[str], series: dict[str, list[dict]], ylabel: str, title: str) -> None:
    """Bars per start (x) and series (colour), with their 95 % intervals as error bars."""
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for j, (label, values) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, [_m(v) for v in values], width,
               yerr=np.array([_err(v) for v in values]).T, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
