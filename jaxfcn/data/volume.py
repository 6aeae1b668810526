"""Voxel grids and their affines: NIfTI loading, canonical (RAS+) reorientation and its exact inverse, resampling.

A *grid* is ``(shape, affine)`` where ``affine`` maps voxel indices ``(i, j, k, 1)`` to world millimetres.
Everything inside jaxfcn works on canonical grids (first axis towards Right, second Anterior, third
Superior), so "axial" always means "slices along the third axis". The original orientation and affine are
kept in a :class:`Canonical` so a prediction can be written back onto the input file's exact grid.
"""
from __future__ import annotations

import dataclasses
import zlib

import nibabel as nib
import numpy as np
from nibabel import orientations as ornts
from scipy import ndimage

from jaxfcn.errors import UserError

RAS = ornts.axcodes2ornt(("R", "A", "S"))


def load_nifti(path) -> nib.Nifti1Image:
    """Open a NIfTI file and read its header; unreadable or truncated files are user errors."""
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # nibabel raises many types for broken headers
        raise UserError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    return image


def read_data(image: nib.Nifti1Image, path, dtype=np.float32) -> np.ndarray:
    """All voxels of ``image`` as ``dtype``; a truncated or corrupt payload is a user error naming ``path``."""
    try:
        return np.asarray(image.dataobj, dtype=dtype)
    except (EOFError, OSError, ValueError, zlib.error) as e:
        raise UserError(f"{path}: truncated or unreadable voxel data ({type(e).__name__}: {e})") from None


@dataclasses.dataclass(frozen=True)
class Canonical:
    """How a volume was reoriented to RAS+: enough to undo it exactly."""

    original_shape: tuple[int, ...]  # spatial shape on disk
    original_affine: np.ndarray
    transform: np.ndarray  # nibabel orientation transform, original → RAS
    affine: np.ndarray  # affine of the canonical grid

    @property
    def shape(self) -> tuple[int, ...]:
        order = [int(a) for a in self.transform[:, 0]]
        out = [0, 0, 0]
        for src_axis, dst_axis in enumerate(order):
            out[dst_axis] = self.original_shape[src_axis]
        return tuple(out)

    def to_canonical(self, data: np.ndarray) -> np.ndarray:
        """Reorient ``data`` (spatial axes first, extra trailing axes allowed) from disk order to RAS+."""
        return np.ascontiguousarray(ornts.apply_orientation(data, self.transform))

    def from_canonical(self, data: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_canonical` (axis permutations and flips only, no interpolation)."""
        inverse = ornts.ornt_transform(RAS, ornts.io_orientation(self.original_affine))
        return np.ascontiguousarray(ornts.apply_orientation(data, inverse))


def canonical_of(affine: np.ndarray, spatial_shape) -> Canonical:
    """The reorientation of a grid to RAS+ (nearest axis-aligned orientation, as nibabel defines it)."""
    affine = np.asarray(affine, np.float64)
    spatial_shape = tuple(int(s) for s in spatial_shape[:3])
    transform = ornts.ornt_transform(ornts.io_orientation(affine), RAS)
    new_affine = affine @ ornts.inv_ornt_aff(transform, spatial_shape)
    return Canonical(spatial_shape, affine, transform, new_affine)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def grid_at_spacing(affine: np.ndarray, shape, spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid covering the same field of view as ``(shape, affine)`` with isotropic ``spacing`` mm voxels.

    Voxel (0,0,0) keeps the same outer corner as the source grid, so the field of view is preserved up
    to rounding of the voxel count (``round(n · size / spacing)``, at least 1).
    """
    affine = np.asarray(affine, np.float64)
    sizes = voxel_sizes(affine)
    scale = spacing / sizes
    new_shape = tuple(max(1, int(round(n / f))) for n, f in zip(shape[:3], scale))
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * scale  # columns scaled: same directions, new voxel size
    # Corner of voxel 0 stays put: the new centre sits at old index (scale - 1) / 2.
    new_affine[:3, 3] = affine[:3, :3] @ ((scale - 1) / 2) + affine[:3, 3]
    return new_affine, new_shape


def resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape, order: int,
             antialias: bool = False, cval: float = 0.0) -> np.ndarray:
    """Values of ``data`` (3D, on ``src_affine``) at the voxel centres of the grid ``(dst_shape, dst_affine)``.

    ``order`` 0 = nearest neighbour (labels), 1 = trilinear (images). With ``antialias`` and a coarser
    target, the source is first smoothed by a Gaussian of σ = (factor − 1)/2 voxels per axis (as in
    scikit-image's ``resize``), so downsampling does not alias. Points outside the source get ``cval``.
    """
    mapping = np.linalg.inv(np.asarray(src_affine, np.float64)) @ np.asarray(dst_affine, np.float64)
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    if antialias and order > 0:
        factors = np.sqrt((matrix ** 2).sum(axis=0))  # dst voxel size in src voxels, per dst axis
        sigma = np.zeros(3)
        src_axis = np.abs(matrix).argmax(axis=0)
        for dst_axis, s_axis in enumerate(src_axis):
            sigma[s_axis] = max(0.0, (factors[dst_axis] - 1) / 2)
        if sigma.any():
            data = ndimage.gaussian_filter(data.astype(np.float32), sigma)
    if np.allclose(matrix, np.diag(np.diag(matrix))):
        matrix = np.diag(matrix)  # axis-aligned: scipy takes a much faster path
    if order == 0 and np.allclose(matrix, np.round(matrix)) and np.allclose(offset, np.round(offset)):
        offset = np.round(offset)  # pure integer shift: make nearest-neighbour exact despite float noise
    out_dtype = data.dtype if order == 0 else np.float32
    return ndimage.affine_transform(data, matrix, offset, output_shape=tuple(int(s) for s in dst_shape),
                                    order=order, mode="constant", cval=cval, output=out_dtype, prefilter=False)


def resample_image(image: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape) -> np.ndarray:
    """Trilinear, anti-aliased resampling of an (X, Y, Z, C) image that keeps its zero background.

    Smoothing would spread nonzero values into the background (which the MRI z-score and the foreground
    box both rely on), so the nonzero region (any channel) is resampled as a fraction and thresholded at
    ½; outside it the result is exactly 0, inside it is at least 1e-6 in magnitude.
    """
    nonzero = np.any(image != 0, axis=-1).astype(np.float32)
    inside = resample(nonzero, src_affine, dst_affine, dst_shape, order=1, antialias=True) >= 0.5
    channels = []
    for c in range(image.shape[-1]):
        values = resample(image[..., c].astype(np.float32), src_affine, dst_affine, dst_shape, order=1,
                          antialias=True)
        values = np.where(np.abs(values) < 1e-6, np.copysign(1e-6, values), values)  # stays "nonzero"
        channels.append(np.where(inside, values, 0).astype(np.float32))
    return np.stack(channels, axis=-1)


def shift_affine(affine: np.ndarray, start) -> np.ndarray:
    """Affine of the sub-grid whose voxel 0 is voxel ``start`` (may be negative: padding) of ``affine``."""
    out = np.array(affine, np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, np.float64) + affine[:3, 3]
    return out
