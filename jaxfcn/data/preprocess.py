"""Preprocessing of canonical volumes into fixed-shape examples: normalise, crop, pad, slice, patch.

Definitions used throughout:

- *MRI z-score*: per channel, ``(x − μ) / σ`` with μ, σ over the nonzero voxels of that channel; voxels
  outside the nonzero region are set to 0.
- *CT window*: clip to ``[lo, hi]`` HU and map linearly to ``[−1, 1]``.
- *Foreground box*: the smallest box containing every voxel where any channel is nonzero or the label is
  positive.
- *Centre crop/pad* to a shape: per axis, the excess is removed (or zeros added) equally on both sides,
  the odd voxel going to the end.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from jaxfcn.data.dataset import Case
from jaxfcn.data.volume import shift_affine

# Canonical RAS+ axis that each 2D orientation slices along.
ORIENTATION_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """MRI normalisation of an (X, Y, Z, C) image (see module docstring)."""
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        mask = channel != 0
        if not mask.any():
            continue
        values = channel[mask].astype(np.float64)
        std = values.std()
        out[..., c][mask] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def ct_window(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(image, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)).astype(np.float32)


def normalise(image: np.ndarray, modality: str, ct_window_hu: Sequence[float]) -> np.ndarray:
    return ct_window(image, ct_window_hu) if modality.upper() == "CT" else zscore_nonzero(image)


def foreground_box(image: np.ndarray, label: np.ndarray | None = None) -> tuple[slice, slice, slice]:
    mask = np.any(image != 0, axis=-1)
    if label is not None:
        mask |= label > 0
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def crop_pad_offsets(shape: Sequence[int], target: Sequence[int]) -> list[int]:
    """Per axis, the source index that lands at target index 0 (negative = zero padding first)."""
    return [(n - t) // 2 for n, t in zip(shape, target)]


def crop_pad(array: np.ndarray, target: Sequence[int], start: Sequence[int] | None = None) -> np.ndarray:
    """Window of ``array`` (leading axes) of shape ``target`` beginning at ``start`` (default: centred).

    Positions outside ``array`` are zero. Trailing axes beyond ``len(target)`` are kept whole.
    """
    start = crop_pad_offsets(array.shape, target) if start is None else list(start)
    out = np.zeros(tuple(target) + array.shape[len(target):], array.dtype)
    src, dst = [], []
    for n, t, s in zip(array.shape, target, start):
        lo, hi = max(s, 0), min(s + t, n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def crop_and_pad_case(case: Case, multiple: int, box=None) -> Case:
    """Crop ``case`` to ``box`` (default: its foreground box), then centre-pad each axis to a multiple of
    ``multiple`` (= 2^depth, so a whole volume passes through the U-Net). The affine follows."""
    box = foreground_box(case.image, case.label) if box is None else box
    start = [b.start for b in box]
    image, label = case.image[box], case.label[box]
    target = [round_up(n, multiple) for n in image.shape[:3]]
    pad_start = crop_pad_offsets(image.shape[:3], target)
    image, label = crop_pad(image, target, pad_start), crop_pad(label, target, pad_start)
    affine = shift_affine(case.affine, np.add(start, pad_start))
    return Case(case.case_id, image, label, affine, case.spacing)


def slices_2d(case: Case, orientations: Sequence[str], slice_shape: Sequence[int]) -> Iterator[dict]:
    """Every slice of ``case`` along each orientation that contains brain/foreground (nonzero image),
    centre-cropped/padded to ``slice_shape``. Yields ``{"image" (H, W, C), "label" (H, W), "axis", "position"}``."""
    content = np.any(case.image != 0, axis=-1) | (case.label > 0)
    for orientation in orientations:
        axis = ORIENTATION_AXIS[orientation]
        has_content = content.any(axis=tuple(a for a in range(3) if a != axis))
        for position in np.flatnonzero(has_content):
            image = np.take(case.image, position, axis=axis)
            label = np.take(case.label, position, axis=axis)
            yield {"image": crop_pad(image, slice_shape), "label": crop_pad(label, slice_shape),
                   "axis": axis, "position": int(position)}


def patch_starts_grid(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, ...]]:
    """Starts of a tiling of ``shape`` by ``patch``-sized windows covering every voxel (last tile aligned
    to the end; a dimension smaller than the patch gets one centred window)."""
    per_axis = []
    for n, p in zip(shape, patch):
        if n <= p:
            per_axis.append([(n - p) // 2])
        else:
            count = -(-n // p)
            per_axis.append(sorted({min(i * p, n - p) for i in range(count)}))
    return [tuple(int(v) for v in s) for s in np.stack(np.meshgrid(*per_axis, indexing="ij"), -1).reshape(-1, 3)]


def patch_starts_random(case: Case, patch: Sequence[int], count: int, foreground_fraction: float,
                        rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``count`` patch starts: a ``foreground_fraction`` of them centred on a random foreground (label > 0)
    voxel, the rest uniform over all positions that keep the patch inside (or centred, if it cannot)."""
    shape = case.label.shape
    foreground = np.argwhere(case.label > 0)
    n_fg = int(round(count * foreground_fraction)) if len(foreground) else 0
    starts = []
    for i in range(count):
        if i < n_fg:
            centre = foreground[rng.integers(len(foreground))]
            start = [int(c) - p // 2 for c, p in zip(centre, patch)]
        else:
            start = [int(rng.integers(0, n - p + 1)) if n > p else (n - p) // 2 for n, p in zip(shape, patch)]
        starts.append(tuple(start))
    return starts


def patches_3d(case: Case, patch: Sequence[int], starts) -> Iterator[dict]:
    for start in starts:
        yield {"image": crop_pad(case.image, patch, start), "label": crop_pad(case.label, patch, start),
               "axis": -1, "position": int(np.ravel_multi_index(np.clip(start, 0, None), np.maximum(case.label.shape, 1)))}


def preprocess_case(case_id: str, image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, spacing: float,
                    modality: str, ct_window_hu: Sequence[float], multiple: int):
    """The full preprocessing of one volume as stored on disk.

    ``image`` is (X, Y, Z, C) in disk order (``label`` (X, Y, Z) or None). Steps: reorient to RAS+;
    resample to isotropic ``spacing`` mm if > 0 (image trilinear with anti-aliasing, label nearest);
    normalise (CT window or MRI z-score); crop to the foreground box of the *raw* image (nonzero in any
    channel) and label; centre-pad to a multiple of ``multiple``.

    Returns ``(Case, canonical)`` where ``canonical`` (:class:`~jaxfcn.data.volume.Canonical`) undoes
    the reorientation; ``Case.affine`` maps the final grid to the same world space as ``affine``.
    """
    from jaxfcn.data.volume import canonical_of, grid_at_spacing, resample, resample_image, voxel_sizes

    canonical = canonical_of(affine, image.shape[:3])
    image = canonical.to_canonical(image)
    label = canonical.to_canonical(label) if label is not None else None
    grid_affine, grid_shape = canonical.affine, canonical.shape
    if spacing > 0 and not np.allclose(voxel_sizes(grid_affine), spacing):
        grid_affine, grid_shape = grid_at_spacing(canonical.affine, canonical.shape, spacing)
        image = resample_image(image, canonical.affine, grid_affine, grid_shape)
        if label is not None:
            label = resample(label, canonical.affine, grid_affine, grid_shape, order=0)
    if label is None:
        label = np.zeros(grid_shape, np.int32)
    box = foreground_box(image, label)
    image = normalise(image, modality, ct_window_hu)
    case = Case(case_id, image, label.astype(np.int32), grid_affine,
                tuple(float(v) for v in voxel_sizes(grid_affine)))
    return crop_and_pad_case(case, multiple, box=box), canonical
