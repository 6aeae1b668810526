"""Figures of the study report (PNG, matplotlib Agg). Each takes what it draws and an output path.

Every CKA figure carries the study's two null baselines: CKA between independently initialised untrained
networks (black, dashed) and the permutation null's 95th percentile (grey, dotted).
"""
from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfcn.analysis.width_null import targets_sharing_a_baseline  # noqa: E402
from jaxfcn.plots import save  # noqa: E402

REGIME_STYLE = {"random": ("tab:gray", "o"), "transfer": ("tab:blue", "s"), "transfer_encoder": ("tab:purple", "D"),
                "frozen_random": ("tab:orange", "^"), "frozen_transfer": ("tab:green", "v")}
UNTRAINED_STYLE = {"color": "black", "linestyle": "--"}
PERMUTATION_STYLE = {"color": "0.55", "linestyle": ":"}


def _save(fig, path):
    fig.tight_layout()
    return save(fig, path, dpi=110, bbox_inches=None)


def _errorbar(ax, x, intervals, **style):
    """Points with their intervals (``{"estimate", "low", "high"}``); undefined ones are skipped."""
    keep = [(xi, s) for xi, s in zip(x, intervals) if s and s.get("estimate") is not None]
    if not keep:
        return
    xs = np.array([k[0] for k in keep], float)
    m = np.array([k[1]["estimate"] for k in keep])
    lo = np.array([k[1]["low"] if k[1].get("low") is not None else k[1]["estimate"] for k in keep])
    hi = np.array([k[1]["high"] if k[1].get("high") is not None else k[1]["estimate"] for k in keep])
    ax.errorbar(xs, m, yerr=[m - lo, hi - m], capsize=3, **style)


def _size_axis(ax, sizes):
    ax.set_xticks(range(len(sizes)), [str(s or "all") for s in sizes])
    ax.set_xlabel("target training subjects")


def _by_target(rows) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[r["target"]].append(r)
    return dict(sorted(out.items()))


def dice_vs_size(results, path):
    """Test Dice per regime against training-set size, per target (``results["conditions"]``); the real
    held-out image (where the data have one) as open markers."""
    from jaxfcn.reproduce.claims import size_order

    targets = _by_target(results.get("conditions", []))
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(5 * max(1, len(targets)), 4), squeeze=False)
    for ax, (target, rows) in zip(axes[0], targets.items()):
        sizes = sorted({r["train_size"] for r in rows}, key=size_order)
        for k, (regime, (color, marker)) in enumerate(REGIME_STYLE.items()):
            cells = {r["train_size"]: r for r in rows if r["regime"] == regime}
            if not cells:
                continue
            x = [i + 0.06 * (k - 2) for i, s in enumerate(sizes)]
            _errorbar(ax, x, [cells.get(s, {}).get("dice") for s in sizes], color=color, marker=marker, label=regime)
            if any("dice_real" in c for c in cells.values()):
                _errorbar(ax, [xi + 0.03 for xi in x], [cells.get(s, {}).get("dice_real") for s in sizes],
                          color=color, marker=marker, mfc="none", linestyle="none")
        _size_axis(ax, sizes)
        ax.set_ylabel("test Dice (filled: all test subjects; open: real image)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _save(fig, path)


def _legend(ax, **kw):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=kw.pop("fontsize", 8), **kw)


def time_to_target(results, path):
    """Claim 1 per condition: mean steps to the common target (censored runs at their last evaluation) and
    the area under the val-Dice curve, per regime."""
    from jaxfcn.reproduce.claims import size_order

    claim = next((r for r in results.get("claims", []) if r["claim"] == "1"), {})
    targets = _by_target(claim.get("numbers", {}).get("conditions", []))
    cols = max(1, len(targets))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 7), squeeze=False)
    if not targets:
        for ax in axes[:, 0]:
            ax.text(0.5, 0.5, "no condition whose random-init runs reach the floor", ha="center", va="center")
            ax.axis("off")
    for col, (target, cells) in enumerate(targets.items()):
        cells = sorted(cells, key=lambda c: size_order(c["train_size"]))
        for k, (regime, (color, marker)) in enumerate(REGIME_STYLE.items()):
            x = [i + 0.06 * (k - 2) for i in range(len(cells))]
            for row, key in ((0, "mean_time"), (1, "auc")):
                values = [c[key].get(regime) for c in cells]
                if any(values):
                    _errorbar(axes[row, col], x, values, color=color, marker=marker, label=regime)
        for row, label in ((0, "steps to τ (mean; censored at budget)"), (1, "val-Dice AUC (mean val Dice)")):
            ax = axes[row, col]
            _size_axis(ax, [c["train_size"] for c in cells])
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            _legend(ax)
        axes[0, col].set_title(f"{target}: τ = 0.9 × random-init final val Dice")
    return _save(fig, path)


def filter_change(results, path):
    """Relative filter change ‖W−W0‖/‖W0‖ per layer (mean over runs), one line per regime."""
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = results.get("filters", [])
    layers = list(dict.fromkeys(f["layer"] for f in rows))
    for regime, (color, marker) in {**REGIME_STYLE, "source": ("tab:red", "x")}.items():
        vals = [[f["relative_change"] for f in rows if f["regime"] == regime and f["layer"] == l] for l in layers]
        if not any(vals):
            continue
        ax.plot(range(len(layers)), [np.mean(v) if v else np.nan for v in vals], color=color, marker=marker,
                label=regime)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_ylabel("relative change from init")
    _legend(ax)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _null_lines(ax, x, layer_rows):
    """The two null baselines of CKA per layer."""
    untrained = [r.get("within", {}).get("untrained") for r in layer_rows]
    _errorbar(ax, x, untrained, marker="", label="untrained networks (null)", **UNTRAINED_STYLE)
    q95 = [r.get("permutation", {}).get("q95") for r in layer_rows]
    if any(v is not None for v in q95):
        ax.plot(x, [np.nan if v is None else v for v in q95], label="permutation null, 95th pct", **PERMUTATION_STYLE)


def cka_per_layer(results, path):
    """Per target: CKA per layer within regimes, transfer vs random-init, reuse (transfer vs its own source),
    with both null baselines (``results["cka_summary"]``)."""
    summary = results.get("cka_summary", {})
    targets = sorted(summary)
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(6.5 * max(1, len(targets)), 4.5), squeeze=False)
    estimator = results.get("cka_settings", {}).get("estimator", "debiased")
    for ax, target in zip(axes[0], targets):
        layers = [l for l in results.get("layers", summary[target]) if l in summary[target]]
        rows = [summary[target][l] for l in layers]
        x = list(range(len(layers)))
        curves = {"within random-init seeds": ("tab:gray", [r["within"].get("random") for r in rows]),
                  "within transfer seeds": ("tab:blue", [r["within"].get("transfer") for r in rows]),
                  "transfer vs random-init": ("tab:cyan", [r["vs_random"].get("transfer") for r in rows]),
                  "reuse: transfer vs own source": ("tab:red", [r.get("reuse") for r in rows])}
        for name, (color, values) in curves.items():
            if any(values):
                _errorbar(ax, x, values, color=color, marker="o", label=name)
        _null_lines(ax, x, rows)
        ax.set_xticks(x, layers, rotation=45, fontsize=8)
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.02)
        ax.axhline(0, color="0.8", linewidth=0.8)
        ax.set_ylabel(f"{estimator} linear CKA (95% interval, models resampled)")
        ax.set_title(target)
        _legend(ax, fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def untrained_by_width(results, path):
    """Untrained-network CKA per layer against base width, one panel per baseline (targets with the same
    probe images share one); the study's width marked."""
    groups = targets_sharing_a_baseline(results["cka_untrained_by_width"])
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (targets, c) in zip(axes[0], groups):
        for layer in c["layers"]:
            ax.plot(c["widths"], c["mean"][layer], marker="o", label=layer)
        if c.get("study_width"):
            ax.axvline(c["study_width"], color="0.5", linestyle=":", label="the study's width")
        ax.set_xscale("log", base=2)
        ax.set_xticks(c["widths"], [str(w) for w in c["widths"]])
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
        ax.set_xlabel("base width (channels of the first level)")
        ax.set_ylabel("CKA between untrained networks")
        ax.set_title(", ".join(targets))
        _legend(ax, fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def model_heatmaps(target_cka: dict, path, title: str = ""):
    """Model × model CKA, one panel per layer; the untrained networks are among the models, and each
    panel's title gives the permutation null's 95th percentile."""
    matrices, models = target_cka["matrices"], target_cka["models"]
    null = target_cka.get("permutation_null", {})
    layers = list(matrices)
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    low = min(0.0, min(float(np.min(m)) for m in matrices.values()))
    for ax, layer in zip(axes.ravel(), layers):
        im = ax.imshow(np.asarray(matrices[layer]), vmin=low, vmax=1, cmap="viridis")
        q95 = null.get(layer, {}).get("q95")
        ax.set_title(layer + (f" (perm. null 95%: {q95:.2f})" if q95 is not None else ""), fontsize=8)
        ax.set_xticks(range(len(models)), models, rotation=90, fontsize=5)
        ax.set_yticks(range(len(models)), models, fontsize=5)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="linear CKA")
    fig.suptitle(f"CKA between models per layer — {title} (untrained/<s>: the null of independent initialisations)")
    return save(fig, path, dpi=110, bbox_inches=None)


def evolution(evo: dict, layer_summary: dict, title: str, path):
    """CKA of each layer vs its initialisation and vs its final state over training; per layer, the
    untrained-network null (CKA between independent initialisations) as a dashed level in the layer's
    colour, and the largest permutation-null 95th percentile over layers as a dotted line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    steps = evo["steps"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(evo["vs_init"]))))
    q95 = [r.get("permutation", {}).get("q95") for r in layer_summary.values()]
    q95 = max((v for v in q95 if v is not None), default=None)
    for ax, key, name in ((axes[0], "vs_init", "CKA(initialisation, step)"), (axes[1], "vs_final", "CKA(step, final)")):
        for color, (layer, values) in zip(colors, evo[key].items()):
            ax.plot(steps, values, marker="o", color=color, label=layer)
            untrained = layer_summary.get(layer, {}).get("within", {}).get("untrained", {}).get("estimate")
            if untrained is not None:
                ax.axhline(untrained, color=color, linestyle="--", linewidth=1, alpha=0.6)
        if q95 is not None:
            ax.axhline(q95, label="permutation null, 95th pct", **PERMUTATION_STYLE)
        ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
        ax.set_xlabel("training step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("linear CKA (dashed: untrained-network null per layer)")
    _legend(axes[1], fontsize=7, ncol=2)
    fig.suptitle(title)
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
