"""Reading one NIfTI file for inference, and writing a prediction back onto that file's exact grid."""
from __future__ import annotations

from typing import Callable

import nibabel as nib
import numpy as np

from jaxfcn.data.preprocess import preprocess_case
from jaxfcn.data.volume import load_nifti, read_data, resample
from jaxfcn.errors import UserError

# Without a model depth, pad to a multiple of 2^5: valid for every U-Net of depth ≤ 5.
DEFAULT_PAD_MULTIPLE = 32


def label_values_for(data_config) -> np.ndarray | None:
    """For a folder task, the label value of each class index (dataset.json values need not be 0..K−1)."""
    from jaxfcn.data import builtin

    if builtin.is_builtin(data_config.task):
        return None
    from jaxfcn.data.folders import read_folder_spec

    return np.asarray(read_folder_spec(data_config.task).label_values)


def modality_for(data_config) -> str:
    """``data.modality`` if set, else the dataset's first-channel modality (built-in tasks are MRI)."""
    if data_config.modality:
        return data_config.modality
    from jaxfcn.data import builtin

    if builtin.is_builtin(data_config.task):
        return "MRI"
    from jaxfcn.data.folders import read_folder_spec, selected_channels

    spec = read_folder_spec(data_config.task)
    return spec.modality[selected_channels(data_config, spec.in_channels, spec.dataset_json)[0]]


def load_volume_for_prediction(path, data_config, *, depth: int | None = None
                               ) -> tuple[np.ndarray, Callable[[np.ndarray], nib.Nifti1Image]]:
    """Preprocess ``path`` exactly as training cases were (see :func:`~jaxfcn.data.preprocess.preprocess_case`).

    Returns ``(image, restore)``: ``image`` is (X, Y, Z, C) float32 on the preprocessed canonical grid
    (padded to a multiple of 2^``depth``, or of 32 without ``depth``); ``restore(labels)`` takes an integer
    volume of that grid's shape and returns a ``Nifti1Image`` with the input file's exact shape, voxel order
    and affine (nearest-neighbour through the affines; outside the cropped box is 0). For an MSD / nnU-Net
    task, class indices are written as the label values that dataset.json declares.
    """
    source = load_nifti(path)
    data = read_data(source, path)
    if data.ndim == 3:
        data = data[..., None]
    elif data.ndim != 4:
        raise UserError(f"{path}: expected a 3D or 4D (multi-channel) image, got {data.ndim}D")
    if data_config.get("channels"):  # the channels the model was trained on (data.channels)
        from jaxfcn.data.folders import selected_channels

        data = data[..., list(selected_channels(data_config, data.shape[-1], path))]
    if not np.isfinite(data).all():
        raise UserError(f"{path}: contains NaN or infinite voxels")
    multiple = 2 ** depth if depth else DEFAULT_PAD_MULTIPLE
    case, canonical = preprocess_case("input", data, source.affine, None, float(data_config.spacing),
                                      modality_for(data_config), data_config.ct_window, multiple)
    grid_shape = case.label.shape
    values = label_values_for(data_config)

    def restore(labels: np.ndarray) -> nib.Nifti1Image:
        labels = np.asarray(labels)
        if labels.shape != grid_shape:
            raise ValueError(f"restore: labels have shape {labels.shape}, expected the prediction grid {grid_shape}")
        on_canonical = resample(labels.astype(np.int32), case.affine, canonical.affine, canonical.shape, order=0)
        on_disk = canonical.from_canonical(on_canonical)
        if values is not None:
            if on_disk.min(initial=0) < 0 or on_disk.max(initial=0) >= len(values):
                raise ValueError(f"restore: class indices must be in 0..{len(values) - 1}")
            on_disk = values[on_disk]
        dtype = np.uint8 if on_disk.max(initial=0) < 256 and on_disk.min(initial=0) >= 0 else np.int16
        out = nib.Nifti1Image(on_disk.astype(dtype), source.affine)
        out.set_qform(source.affine, code=int(source.header["qform_code"]) or 1)
        out.set_sform(source.affine, code=int(source.header["sform_code"]) or 1)
        return out

    return case.image.astype(np.float32), restore
