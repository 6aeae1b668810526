"""``jaxfcn data export TASK --subjects N --out DIR``: built-in subjects as a standard MSD / nnU-Net folder.

Layout (MSD; nnU-Net v1 reads it as is, and `jaxfcn data check DIR` passes on it)::

    DIR/dataset.json         # MSD keys (modality, labels, training, test) + a "jaxfcn" provenance block
    DIR/imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz   # N training subjects of the training template
    DIR/imagesTs/<case>.nii.gz, labelsTs/<case>.nii.gz   # the test split: the real held-out template
                                                          # and data.test_subjects warped subjects of it
    DIR/subjects.json        # per case: template, real or not, min Jacobian determinant, warp RMS/max

Every volume of one template lies on the same grid (the fixed box of
:data:`jaxfcn.data.builtin.SUBJECT_BOX_MM` at ``data.spacing``, RAS+), uncropped and unnormalised:
images are float32 on the template's intensity scale divided by its 99.5th brain percentile (background
exactly 0), labels uint8 class indices. So voxel ``(i, j, k)`` of two subjects is the same point in
space, and the subjects can be compared voxel by voxel. Subjects are those the built-in task trains on
(same indices, same generator settings), so other toolkits can train on the very same data.

The folder is written next to ``DIR`` under a temporary name and renamed into place at the end, so an
interrupted export leaves nothing at ``DIR``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from jaxfcn.errors import UserError


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def check_target(out: str) -> Path:
    """``out`` must not exist, or be an empty folder; its parent must exist."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder (nothing written)")
    if not path.absolute().parent.is_dir():
        raise UserError(f"--out {out}: parent folder {path.absolute().parent} does not exist")
    return path


def export_subjects(task: str, count: int, out: str, data_config, progress: bool = True) -> dict:
    """Write ``count`` training subjects and the test split of built-in ``task`` to ``out``; returns the
    dataset.json written."""
    from tqdm import tqdm

    from jaxfcn.data import builtin
    from jaxfcn.data.subjects import is_real_case

    if not builtin.is_builtin(task):
        raise UserError(f"data export {task}: not a built-in task (one of {', '.join(builtin.TASKS)})")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= builtin.MAX_SUBJECTS:
        raise UserError(f"--subjects {count}: must be an integer in 1..{builtin.MAX_SUBJECTS}")
    target = check_target(out)
    spacing = float(data_config.spacing)
    if spacing <= 0:
        raise UserError(f"data.spacing={data_config.spacing}: built-in subjects need a grid spacing > 0 mm")
    counts = dict(builtin.subject_counts(data_config), train=count)
    settings = builtin.subject_settings(data_config)
    indices = builtin.split_indices(task, counts)

    tmp = target.absolute().with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        records, training, test = {}, [], []
        for split, folder in (("train", "Tr"), ("test", "Ts")):
            (template,) = builtin.TEMPLATE_SPLIT[split]
            for name in ("images", "labels"):
                (tmp / f"{name}{folder}").mkdir(parents=True, exist_ok=True)
            subjects = builtin.generator(task, template, spacing, settings).render(indices[split])
            for subject in tqdm(subjects, total=len(indices[split]), desc=f"export {task}: {split} ({template})",
                                unit="subject", disable=not progress, leave=False):
                _save(tmp / f"images{folder}" / f"{subject.case_id}.nii.gz", subject.image, subject.affine)
                _save(tmp / f"labels{folder}" / f"{subject.case_id}.nii.gz", subject.label, subject.affine)
                entry = {"image": f"./images{folder}/{subject.case_id}.nii.gz",
                         "label": f"./labels{folder}/{subject.case_id}.nii.gz"}
                (training if split == "train" else test).append(entry)
                records[subject.case_id] = {
                    "split": split, "template": template, "real": is_real_case(subject.case_id),
                    "min_jacobian": subject.min_jacobian, "warp_rms_mm": subject.warp_rms_mm,
                    "warp_max_mm": subject.warp_max_mm}
        meta = {
            "name": f"jaxfcn_{task}",
            "description": f"jaxfcn built-in task '{task}': {builtin.TASK_DESCRIPTION[task]}. Subjects generated "
                           "from real T1 templates (jaxfcn.data.subjects); see docs/data.md",
            "licence": "CC BY-NC (Neuromorphometrics labels)" if task != "tissue" else "see docs/data.md",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {str(i): name for i, name in enumerate(builtin.TASKS[task])},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": [e["image"] for e in test],
            "jaxfcn": {"task": task, "spacing_mm": spacing, "role": builtin.TASK_ROLE[task],
                       "templates": {"train": builtin.TEMPLATE_SPLIT["train"][0],
                                     "test": builtin.TEMPLATE_SPLIT["test"][0]},
                       "test_labels": "labelsTs/", "generator": settings.as_dict()},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        (tmp / "subjects.json").write_text(json.dumps(records, indent=2))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
