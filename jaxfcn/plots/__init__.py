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

import io
import os

from jaxfcn.files import write_bytes_atomic


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, dpi: int = 120, **savefig_options) -> str:
    """Write ``fig`` to ``path`` as PNG atomically (rendered in memory, then :func:`jaxfcn.files.write_bytes_atomic`;
    folders created), close it, return ``path``. Options: matplotlib's ``savefig``'s (default a tight box)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=dpi, **({"bbox_inches": "tight"} | savefig_options))
    finally:
        pyplot().close(fig)
    write_bytes_atomic(path, png.getvalue())
    return path
