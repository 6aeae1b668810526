"""jaxfcn.data: built-in MRI tasks and MSD / nnU-Net folders → prepared, fixed-shape segmentation datasets.

Public API (heavy modules are imported on call, so ``import jaxfcn.data`` stays cheap):

- :func:`open_dataset` — a :class:`~jaxfcn.data.dataset.SegmentationDataset` for ``data.task``;
- :func:`augment` — jittable on-device augmentation of a batch;
- :func:`load_volume_for_prediction` — a NIfTI file on the preprocessed grid, plus the inverse mapping.
"""
from __future__ import annotations

from jaxfcn.data.dataset import (ArraySource, Case, DatasetInfo, SegmentationDataset, subset_cases, subset_seed,
                                 training_subset)


def recipe_for(data_config, depth: int = 4):
    """The :class:`~jaxfcn.data.prepared.Recipe` of ``data.task`` (built-in name or folder path)."""
    from jaxfcn.data import builtin

    if builtin.is_builtin(data_config.task):
        from jaxfcn.data.folders import selected_channels

        selected_channels(data_config, 1, f"built-in task {data_config.task}")  # refuse a channel it lacks
        return builtin.builtin_recipe(data_config, depth)
    import os

    from jaxfcn.errors import UserError

    if not os.path.isdir(str(data_config.task)):
        raise UserError(f"data.task={data_config.task}: neither a built-in task ({', '.join(builtin.TASKS)}) "
                        "nor an existing MSD / nnU-Net folder")
    from jaxfcn.data import folders

    return folders.folder_recipe(data_config, depth)


def open_dataset(data_config, *, depth: int = 4, progress: bool = True,
                 subset_seed: int | None = None) -> SegmentationDataset:
    """The prepared dataset for ``data_config`` (prepared into the cache on first use).

    ``depth`` is the U-Net depth: whole cases are padded to a multiple of 2^depth. The training subset
    holds the examples of ``data.train_size`` cases drawn by ``subset_seed`` (default ``data.subset_seed``;
    see :func:`~jaxfcn.data.dataset.subset_seed` for ``data.subset_per_seed``).
    """
    from jaxfcn.data import prepared

    directory = prepared.prepare(recipe_for(data_config, depth), data_config, depth, progress)
    return prepared.open_prepared(directory, data_config, subset_seed)


def augment(rng, batch: dict, data_config) -> dict:
    """Random flips, small rotation/scaling and intensity jitter; see :mod:`jaxfcn.data.augmentation`."""
    from jaxfcn.data.augmentation import augment_batch

    return augment_batch(rng, batch, data_config)


def load_volume_for_prediction(path, data_config, *, depth: int | None = None):
    """``(image (X, Y, Z, C) float32 on the preprocessed canonical grid, restore)``; see
    :func:`jaxfcn.data.predict.load_volume_for_prediction`."""
    from jaxfcn.data.predict import load_volume_for_prediction as load

    return load(path, data_config, depth=depth)


__all__ = ["ArraySource", "Case", "DatasetInfo", "SegmentationDataset", "augment", "load_volume_for_prediction",
           "open_dataset", "recipe_for", "subset_cases", "subset_seed", "training_subset"]
