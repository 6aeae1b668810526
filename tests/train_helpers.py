"""Helpers of the training tests: a tiny synthetic dataset (a ball and a box in noise), tiny real-data configs.

Real-data end-to-end tests use the built-in tasks; this one isolates the loop mechanics (resume,
freezing, compilation counts) from data preparation, in memory and in milliseconds.
"""
from __future__ import annotations

import numpy as np

from jaxfcn.data.dataset import ArraySource, Case, DatasetInfo, SegmentationDataset

# Four classes, like the built-in tissue task: with the same tiny model and batch shape the compiled
# train step is then the same program for synthetic and real-data tests (one compilation in the suite).
CLASS_NAMES = ("background", "ball", "box", "rod")


def shapes_volume(rng: np.random.Generator, size: int = 32, depth: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z, 1) float32, label (X, Y, Z) int32): a ball (1), a box (2) and a rod (3) in noise."""
    x, y, z = np.meshgrid(np.arange(size), np.arange(size), np.arange(depth), indexing="ij")
    label = np.zeros((size, size, depth), np.int32)
    c = rng.uniform(size * 0.3, size * 0.7, 2)
    r = rng.uniform(size * 0.12, size * 0.22)
    label[(x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - depth / 2) * 2) ** 2 < r**2] = 1
    b0 = rng.integers(0, size // 2, 2)
    w = rng.integers(size // 6, size // 3, 2)
    label[b0[0]:b0[0] + w[0], b0[1]:b0[1] + w[1], 1:depth - 1] = 2
    r0 = rng.integers(size // 2, size - 3)
    label[r0:r0 + 2, size // 4:size - 2, :] = 3
    image = np.array([0.0, 1.0, -1.0, 2.0], np.float32)[label] + rng.normal(0, 0.3, label.shape).astype(np.float32)
    return image[..., None], label


def shapes_dataset(n_train: int = 6, n_val: int = 2, n_test: int = 2, size: int = 32, depth: int = 8,
                   seed: int = 0, spatial_dims: int = 2) -> SegmentationDataset:
    """Volumes split into train/val/test cases; 2D examples are their axial slices, 3D examples the volumes."""
    rng = np.random.default_rng(seed)
    splits = {"train": n_train, "val": n_val, "test": n_test}
    sources, cases = {}, {}
    for split, n in splits.items():
        volumes = [shapes_volume(rng, size, depth) for _ in range(n)]
        cases[split] = [Case(f"{split}_{i:02d}", img, lab, np.diag([2.0, 2.0, 3.0, 1.0]), (2.0, 2.0, 3.0))
                        for i, (img, lab) in enumerate(volumes)]
        if spatial_dims == 2:
            images = np.concatenate([np.moveaxis(img, 2, 0) for img, _ in volumes])
            labels = np.concatenate([np.moveaxis(lab, 2, 0) for _, lab in volumes])
        else:
            images = np.stack([img for img, _ in volumes])
            labels = np.stack([lab for _, lab in volumes])
        sources[split] = ArraySource(images, labels)
    example_shape = (size, size) if spatial_dims == 2 else (size, size, depth)
    info = DatasetInfo("shapes", CLASS_NAMES, 1, spatial_dims, example_shape, ("MRI",))
    return SegmentationDataset(info, sources, cases)


# The tiny model of `tiny_config` on real built-in data (6 mm grid, 32² slices). A constant learning rate
# keeps the compiled step independent of train.steps, so runs of different lengths share one program.
TINY_REAL = {
    "model.depth": 2, "model.base_width": 4, "model.norm_groups": 2,
    "data.task": "tissue", "data.spacing": 6.0, "data.slice_shape": (32, 32), "data.patch_shape": (16, 16, 16),
    "train.batch_size": 4, "train.steps": 6, "train.lr_schedule": "constant", "train.eval_every": 3,
    "train.log_every": 1, "train.checkpoint_every": 3, "train.val_batches": 2, "train.snapshot_steps": "1,3",
}


def write_tiny_config(path, **changes) -> str:
    """A config file (``get_config()``) with :data:`TINY_REAL` plus ``changes`` ("train__steps": 9 style keys)."""
    values = {**TINY_REAL, **{k.replace("__", "."): v for k, v in changes.items()}}
    lines = ["from jaxfcn.config import base_config", "", "", "def get_config():", "    c = base_config()"]
    lines += [f"    c.{key} = {value!r}" for key, value in values.items()]
    lines += ["    return c", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return str(path)


def like_real(config):
    """``tiny_config`` made to compile to the same train step as :data:`TINY_REAL` on the tissue task."""
    config.model.num_classes = 4
    config.train.lr_schedule = "constant"
    return config
