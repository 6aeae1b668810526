"""Figures of the analysis commands (matplotlib, Agg backend; every function writes one PNG and returns its path)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxfcn.plots import pyplot as _pyplot
from jaxfcn.plots import save as _save


def heatmap(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str, path: str,
            *, xlabel: str = "", ylabel: str = "", vmin: float = 0.0, vmax: float = 1.0) -> str:
    """A CKA heatmap with the value written in each cell."""
    plt = _pyplot()
    matrix = np.asarray(matrix, float)
    size = max(3.0, 0.5 * max(matrix.shape) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="magma")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    if matrix.size <= 400:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    return _save(fig, path)


def curves_vs_step(series: Mapping[str, tuple[Sequence[int], Sequence[float]]], title: str, ylabel: str,
                   path: str, *, ylim: tuple[float, float] | None = None) -> str:
    """One line per named series against training step (symmetric-log x axis, so step 0 is shown)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for k, (name, (steps, values)) in enumerate(series.items()):
        ax.plot(steps, values, marker="o", ms=3, label=name, color=cmap(k / max(1, len(series) - 1)))
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1, loc="best")
    return _save(fig, path)


def evolution(series_init, series_final, title: str, path: str) -> str:
    """Two panels: CKA of each layer vs its initial and vs its final representation, against step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, series, name in ((axes[0], series_init, "vs initialisation (step 0)"),
                             (axes[1], series_final, "vs final")):
        for k, (layer, (steps, values)) in enumerate(series.items()):
            ax.plot(steps, values, marker="o", ms=3, label=layer, color=cmap(k / max(1, len(series) - 1)))
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("step")
        ax.set_title(f"CKA {name}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CKA")
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def filter_grid(banks: Mapping[str, np.ndarray], title: str, path: str, max_filters: int = 16) -> str:
    """Rows = named filter banks ``(*spatial, Cin, Cout)`` (e.g. initial, trained, fresh random); columns =
    the first ``max_filters`` output channels, input channel 0 (3D: the middle slice). Each filter is
    scaled to its own symmetric range so shapes, not magnitudes, are compared."""
    plt = _pyplot()
    names = list(banks)
    count = min(max_filters, min(b.shape[-1] for b in banks.values()))
    fig, axes = plt.subplots(len(names), count, figsize=(0.9 * count + 1.2, 1.0 * len(names) + 0.6), squeeze=False)
    for r, name in enumerate(names):
        bank = np.asarray(banks[name], float)
        for c in range(count):
            f = bank[..., 0, c]
            while f.ndim > 2:
                f = f[f.shape[0] // 2]
            f = np.atleast_2d(f)
            lim = np.abs(f).max() or 1.0
            ax = axes[r, c]
            ax.imshow(f, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
