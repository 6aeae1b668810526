"""Integrity check of an MSD / nnU-Net folder (``jaxfcn data check``): one line per problem, naming the file.

Problems found, per case:

- a file listed in dataset.json (or implied by the nnU-Net naming) that does not exist;
- a NIfTI file that cannot be opened, or whose voxel data is truncated/corrupt;
- an image that is 4D where 3D is expected (single-channel MSD images, nnU-Net channel files, labels; a
  trailing axis of size 1 is accepted), or a multi-channel MSD image whose 4th axis ≠ the modality count;
- image and label (or nnU-Net channels) with different spatial shapes;
- image and label (or channels) with different affines (any entry differing by more than
  :data:`AFFINE_TOLERANCE` mm);
- NaN or infinite voxels (images and labels);
- label voxels that are not integers, or whose value is not declared in dataset.json ``labels``.

A malformed dataset.json is reported on its own (nothing else can be checked without it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxfcn.errors import UserError

AFFINE_TOLERANCE = 1e-3


def _read(path: Path, problems: list[str]):
    """``(nibabel image, voxel array)`` or ``(None, None)`` after recording why not."""
    from jaxfcn.data.volume import load_nifti, read_data

    if not path.exists():
        problems.append(f"{path}: listed in dataset.json but missing")
        return None, None
    try:
        image = load_nifti(path)
        data = read_data(image, path, dtype=np.float64)
    except UserError as e:
        problems.append(str(e))
        return None, None
    return image, data


def _spatial(data: np.ndarray, path: Path, channels: int, problems: list[str]) -> np.ndarray | None:
    """Data with a trailing channel axis, or None after recording a dimensionality problem."""
    if channels == 1:
        if data.ndim == 3:
            return data[..., None]
        if data.ndim == 4 and data.shape[3] == 1:
            return data
        problems.append(f"{path}: is {data.ndim}D {data.shape} where a 3D volume is expected")
        return None
    if data.ndim == 4 and data.shape[3] == channels:
        return data
    problems.append(f"{path}: shape {data.shape}, expected 4D with {channels} channels (one per modality)")
    return None


def case_problems(spec, case) -> list[str]:
    return inspect_case(spec, case)[0]


def inspect_case(spec, case) -> tuple[list[str], list]:
    """``(problems, volumes)``: volumes are ``(path, nibabel image, (X, Y, Z, C) float64 data)`` for every
    file that could be read, images first, label last (so a sound case is read from disk only once)."""
    problems: list[str] = []
    per_file = 1 if spec.format == "nnunet" else spec.in_channels
    volumes = []  # (path, nibabel image, (X, Y, Z, C) data)
    for path in case.images:
        image, data = _read(path, problems)
        if image is None:
            continue
        data = _spatial(data, path, per_file, problems)
        if data is None:
            continue
        if not np.isfinite(data).all():
            problems.append(f"{path}: {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
        volumes.append((path, image, data))
    if case.label is not None:
        image, data = _read(case.label, problems)
        if image is not None:
            data = _spatial(data, case.label, 1, problems)
        if image is not None and data is not None:
            data = data[..., 0]
            finite = np.isfinite(data)
            if not finite.all():
                problems.append(f"{case.label}: {int((~finite).sum())} NaN or infinite voxels")
            values = data[finite]
            if (values != np.round(values)).any():
                problems.append(f"{case.label}: label voxels with non-integer values")
            undeclared = sorted(set(np.unique(np.round(values)).astype(int).tolist()) - set(spec.label_values))
            if undeclared:
                problems.append(f"{case.label}: label values {undeclared} not declared in dataset.json labels "
                                f"{list(spec.label_values)}")
            volumes.append((case.label, image, data[..., None]))
    if volumes:
        ref_path, ref_image, ref_data = volumes[0]
        for path, image, data in volumes[1:]:
            if data.shape[:3] != ref_data.shape[:3]:
                problems.append(f"{path}: shape {data.shape[:3]} differs from {ref_path.name} {ref_data.shape[:3]}")
            else:
                difference = float(np.abs(image.affine - ref_image.affine).max())
                if difference > AFFINE_TOLERANCE:
                    problems.append(f"{path}: affine differs from {ref_path.name} (max difference {difference:.4g})")
    return problems, volumes


def check_folder(folder) -> tuple[list[str], str]:
    """``(problems, summary)`` for the folder; ``problems`` is empty when everything is sound."""
    from jaxfcn.data.folders import read_folder_spec

    try:
        spec = read_folder_spec(folder)
    except UserError as e:
        return [str(e)], ""
    problems: list[str] = []
    if not spec.cases:
        problems.append(f"{spec.dataset_json}: no labelled training cases")
    for case in spec.cases + spec.unlabelled:
        problems.extend(case_problems(spec, case))
    summary = (f"{spec.root}: OK: {spec.format.upper()} dataset '{spec.name}', {len(spec.cases)} labelled cases"
               f"{f' + {len(spec.unlabelled)} unlabelled' if spec.unlabelled else ''}, channels "
               f"{', '.join(spec.modality)}, classes {', '.join(spec.class_names)}")
    return problems, summary
