"""Every figure jaxfcn draws (matplotlib, Agg backend), one module per caller.

- :mod:`jaxfcn.plots.montage`: case montages with label overlays (``jaxfcn data show``);
- :mod:`jaxfcn.plots.analysis`: the analysis commands' heatmaps and curves (``jaxfcn analyze``);
- :mod:`jaxfcn.plots.study`: the study report's figures (``jaxfcn reproduce``);
- :mod:`jaxfcn.plots.controls`: the transfer controls' figures.

Each figure function takes what it draws and an output path, writes one PNG and returns its path.

Example::

    from jaxfcn.plots import analysis
    analysis.heatmap(matrix, names, names, "CKA", "cka.png")
"""
from __future__ import annotations

import os


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> str:
    """Write ``fig`` to ``path`` (folders created), close it, return ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path
