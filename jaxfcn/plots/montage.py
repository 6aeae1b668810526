"""PNG montages of cases with their label overlays (``jaxfcn data show``): people should look at data."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxfcn.data.dataset import Case
from jaxfcn.data.preprocess import ORIENTATION_AXIS
from jaxfcn.plots import save


def _centre_slices(case: Case, orientation: str, count: int) -> list[int]:
    """``count`` evenly spaced slice indices through the labelled (or nonzero) part of the case."""
    axis = ORIENTATION_AXIS[orientation]
    content = (case.label > 0) | np.any(case.image != 0, axis=-1)
    present = np.flatnonzero(content.any(axis=tuple(a for a in range(3) if a != axis)))
    if len(present) == 0:
        present = np.arange(case.label.shape[axis])
    return [int(v) for v in np.linspace(present[0], present[-1], count + 2)[1:-1].round()]


def write_montage(cases: Sequence[Case], class_names: Sequence[str], out_path: str,
                  orientations: Sequence[str] = ("axial", "coronal", "sagittal"), per_orientation: int = 3,
                  title: str = "") -> None:
    """One row per case, ``per_orientation`` slices for each orientation; labels drawn in colour over the
    (first channel of the) image, displayed with superior/anterior up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    columns = len(orientations) * per_orientation
    fig, axes = plt.subplots(len(cases), columns, figsize=(1.8 * columns, 1.9 * len(cases) + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10" if len(class_names) <= 11 else "tab20")(np.arange(max(1, len(class_names) - 1)))
    cmap = ListedColormap(colours)
    for row, case in enumerate(cases):
        column = 0
        for orientation in orientations:
            axis = ORIENTATION_AXIS[orientation]
            for position in _centre_slices(case, orientation, per_orientation):
                image = np.take(case.image[..., 0], position, axis=axis)
                label = np.take(case.label, position, axis=axis)
                ax = axes[row, column]
                ax.imshow(image.T, cmap="gray", origin="lower", interpolation="nearest")
                overlay = np.ma.masked_where(label.T == 0, label.T - 1)
                ax.imshow(overlay, cmap=cmap, vmin=0, vmax=max(1, len(class_names) - 2), alpha=0.45,
                          origin="lower", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if column == 0:
                    ax.set_ylabel(case.case_id, fontsize=8)
                ax.set_title(f"{orientation} {position}", fontsize=7)
                column += 1
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(class_names[1:])]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    save(fig, out_path, dpi=100, bbox_inches=None)
