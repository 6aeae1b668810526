"""The user's own data: Medical Segmentation Decathlon (MSD) and nnU-Net v2 folders of NIfTI files.

Formats read (the folder's ``dataset.json`` decides which):

- **MSD**: ``modality`` ``{"0": "MRI", ...}``, ``labels`` ``{"0": "background", "1": ...}`` (value → name),
  ``training`` ``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``. A multi-channel
  image is one 4D file (X, Y, Z, C), C = number of modalities.
- **nnU-Net v2**: ``channel_names`` ``{"0": "T2", ...}``, ``labels`` ``{"background": 0, ...}`` (name →
  value), ``file_ending``; cases are the files ``labelsTr/{case}{ending}`` with channels
  ``imagesTr/{case}_{XXXX}{ending}`` (one 3D file per channel). Region-based labels are not supported.

Label values need not be contiguous: class ``i`` is the ``i``-th smallest declared value.

Splits (``data.split`` = ``kfold``; the default ``templates`` means the same for folders): only labelled
cases can be evaluated, so a fixed test set of ``max(1, round(TEST_FRACTION · n))`` cases is held out
first (seeded by :data:`SPLIT_SEED`, identical for every fold); the remaining cases are dealt into
``data.num_folds`` folds by a seeded permutation, fold ``data.fold`` is validation and the rest train.
Unlabelled ``imagesTs`` cases are not used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from jaxfcn.errors import UserError

TEST_FRACTION = 0.2
SPLIT_SEED = 20200601  # fixed: the test set and folds must not move between experiments


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # MSD: one file (3D or 4D); nnU-Net: one 3D file per channel
    label: Path | None


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    root: Path
    format: str  # "msd" | "nnunet"
    name: str
    modality: tuple[str, ...]  # per channel
    label_values: tuple[int, ...]  # sorted declared values; class i ↔ label_values[i]
    class_names: tuple[str, ...]
    cases: tuple[CaseFiles, ...]  # labelled training cases
    unlabelled: tuple[CaseFiles, ...] = ()  # MSD "test" entries

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    @property
    def in_channels(self) -> int:
        return len(self.modality)


def _bad(path, what: str) -> UserError:
    return UserError(f"{path}: malformed dataset.json: {what}")


def _ordered_channels(mapping, path) -> tuple[str, ...]:
    if not isinstance(mapping, dict) or not mapping:
        raise _bad(path, "'modality'/'channel_names' must be a non-empty object {\"0\": name, ...}")
    try:
        keys = sorted(int(k) for k in mapping)
    except (TypeError, ValueError):
        raise _bad(path, "channel keys must be integers \"0\", \"1\", ...") from None
    if keys != list(range(len(keys))):
        raise _bad(path, f"channel keys must be 0..{len(keys) - 1}, got {keys}")
    return tuple(str(mapping[str(k)]) for k in keys)


def _labels(pairs, path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``pairs`` of (value, name) → sorted values and names; 0 must be declared (background)."""
    values = {}
    for value, name in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
            raise _bad(path, f"label value {value!r} is not an integer (region-based labels are not supported)")
        values[int(value)] = str(name)
    if 0 not in values:
        raise _bad(path, "'labels' must declare value 0 (background)")
    if len(values) < 2:
        raise _bad(path, "'labels' must declare at least one foreground class")
    ordered = tuple(sorted(values))
    return ordered, tuple(values[v] for v in ordered)


def _resolve(root: Path, entry) -> Path:
    return root / str(entry).removeprefix("./")


def read_folder_spec(folder) -> FolderSpec:
    """Parse ``folder/dataset.json``; every problem with the file itself is a one-line UserError."""
    root = Path(folder)
    path = root / "dataset.json"
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    if not path.is_file():
        raise UserError(f"{path}: missing (an MSD or nnU-Net folder needs a dataset.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "top level must be an object")
    if "labels" not in meta or not isinstance(meta["labels"], dict):
        raise _bad(path, "missing object 'labels'")
    name = str(meta.get("name") or root.name)
    if "channel_names" in meta:  # nnU-Net v2
        modality = _ordered_channels(meta["channel_names"], path)
        values, names = _labels(((v, k) for k, v in meta["labels"].items()), path)
        ending = meta.get("file_ending")
        if not isinstance(ending, str) or not ending:
            raise _bad(path, "missing string 'file_ending' (e.g. \".nii.gz\")")
        labels_dir = root / "labelsTr"
        if not labels_dir.is_dir():
            raise UserError(f"{labels_dir}: missing (nnU-Net folders keep labels in labelsTr/)")
        case_ids = sorted(p.name[:-len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending))
        cases = tuple(CaseFiles(cid, tuple(root / "imagesTr" / f"{cid}_{c:04d}{ending}" for c in range(len(modality))),
                                labels_dir / f"{cid}{ending}") for cid in case_ids)
        declared = meta.get("numTraining")
        if isinstance(declared, int) and declared != len(cases):
            raise _bad(path, f"numTraining is {declared} but labelsTr/ holds {len(cases)} label files")
        return FolderSpec(root, "nnunet", name, modality, values, names, cases)
    if "modality" in meta:  # MSD
        modality = _ordered_channels(meta["modality"], path)
        values, names = _labels(meta["labels"].items(), path)
        training = meta.get("training")
        if not isinstance(training, list) or not training:
            raise _bad(path, "'training' must be a non-empty list of {\"image\", \"label\"}")
        cases = []
        for i, entry in enumerate(training):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or \
                    not isinstance(entry.get("label"), str):
                raise _bad(path, f"training[{i}] must be {{\"image\": path, \"label\": path}}")
            image = _resolve(root, entry["image"])
            case_id = image.name.split(".nii")[0]
            cases.append(CaseFiles(case_id, (image,), _resolve(root, entry["label"])))
        if len({c.case_id for c in cases}) != len(cases):
            raise _bad(path, "two training entries have the same image file name")
        unlabelled = tuple(CaseFiles(Path(str(e)).name.split(".nii")[0], (_resolve(root, e),), None)
                           for e in meta.get("test", []) if isinstance(e, str))
        return FolderSpec(root, "msd", name, modality, values, names, tuple(cases), unlabelled)
    raise _bad(path, "neither MSD ('modality', 'training') nor nnU-Net v2 ('channel_names', 'file_ending')")


def split_cases(spec: FolderSpec, fold: int, num_folds: int) -> dict[str, list[CaseFiles]]:
    """Case-level split (see module docstring)."""
    n = len(spec.cases)
    if num_folds < 2:
        raise UserError(f"data.num_folds={num_folds}: need at least 2 folds")
    if not 0 <= fold < num_folds:
        raise UserError(f"data.fold={fold}: must be in 0..{num_folds - 1}")
    n_test = max(1, int(round(TEST_FRACTION * n)))
    if n - n_test < num_folds:
        raise UserError(f"{spec.dataset_json}: {n} labelled cases are too few for a test set of {n_test} and "
                        f"{num_folds} folds (need at least {n_test + num_folds})")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test, rest = order[:n_test], order[n_test:]
    folds = np.array_split(np.random.default_rng([SPLIT_SEED, num_folds]).permutation(rest), num_folds)
    val = folds[fold]
    train = np.concatenate([f for i, f in enumerate(folds) if i != fold])
    pick = lambda idx: [spec.cases[i] for i in sorted(int(j) for j in idx)]
    return {"train": pick(train), "val": pick(val), "test": pick(test)}


def fingerprint(spec: FolderSpec) -> str:
    """Identity of the folder's inputs: dataset.json content and each file's path, size and mtime."""
    h = hashlib.sha256(spec.dataset_json.read_bytes())
    for case in spec.cases:
        for path in case.images + ((case.label,) if case.label else ()):
            try:
                st = os.stat(path)
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except FileNotFoundError:
                h.update(f"{path}|missing".encode())
    return h.hexdigest()


def load_case(spec: FolderSpec, case: CaseFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image (X, Y, Z, C) float32, affine, label (X, Y, Z) class indices or None)`` in disk order.

    Raises a UserError naming the file on the first defect (:mod:`jaxfcn.data.check` lists them all).
    """
    from jaxfcn.data.check import inspect_case

    problems, volumes = inspect_case(spec, case)
    if problems:
        raise UserError(f"{problems[0]} (run `jaxfcn data check {spec.root}` for every problem)")
    channels = [data for path, _, data in volumes if path != case.label]
    image = np.concatenate(channels, axis=-1).astype(np.float32)
    affine = volumes[0][1].affine
    label = None
    if case.label is not None:
        raw = np.round(volumes[-1][2][..., 0]).astype(np.int64)
        lookup = {v: i for i, v in enumerate(spec.label_values)}
        label = np.zeros(raw.shape, np.int32)
        for value, index in lookup.items():
            label[raw == value] = index
    return image, affine, label


def selected_channels(data_config, available: int, where) -> tuple[int, ...]:
    """The indices of the channels ``data.channels`` picks for ``data.task``, which has ``available``.

    ``data.channels``: ``""`` = all, in order; ``"1"`` or ``"0,2"`` = these, of any task; ``"A=1,B=0+2"`` =
    per task, by folder name (``os.path.basename`` of ``data.task``; a task not named keeps all its
    channels), so one setting serves a study's source and targets. A malformed setting, or an index the task
    lacks, is a one-line UserError naming ``where`` (the folder or file) and the key."""
    text = str(data_config.get("channels", "") or "").strip()
    chosen = text
    if "=" in text:
        entries = [item.partition("=") for item in text.split(",")]
        if not all(sep and name.strip() for name, sep, _ in entries):
            raise UserError(f"data.channels={text!r}: per-task entries are task=i or task=i+j, comma-separated")
        by_task = {name.strip(): value.strip().replace("+", ",") for name, _, value in entries}
        chosen = by_task.get(os.path.basename(os.path.normpath(str(data_config.task))), "")
    if not chosen:
        return tuple(range(available))
    items = [item.strip() for item in chosen.split(",")]
    if not all(item.isdigit() for item in items):
        raise UserError(f"data.channels={text!r}: '{chosen}' is not channel indices such as 1 or 0,2 ({where})")
    picked = tuple(int(item) for item in items)
    if len(set(picked)) != len(picked) or max(picked) >= available:
        raise UserError(f"data.channels={text!r}: {where} has {available} channel(s), indices 0..{available - 1}; "
                        f"'{chosen}' picks {', '.join(items)}")
    return picked


def folder_recipe(data_config, depth: int):
    from tqdm import tqdm

    from jaxfcn.data.prepared import Recipe
    from jaxfcn.data.preprocess import preprocess_case

    spec = read_folder_spec(data_config.task)
    if data_config.split not in ("kfold", "templates"):
        raise UserError(f"data.split={data_config.split}: MSD / nnU-Net folders are split by 'kfold'")
    if data_config.modality not in ("", "CT", "MRI"):
        raise UserError(f"data.modality={data_config.modality}: use '' (from dataset.json), 'CT' or 'MRI'")
    channels = selected_channels(data_config, spec.in_channels, spec.dataset_json)
    modality = tuple(data_config.modality or spec.modality[c] for c in channels)
    # Normalisation follows the first channel's modality name: "CT" (any case) windows, anything else z-scores.
    normalisation = "CT" if modality[0].upper() == "CT" else "MRI"
    splits = split_cases(spec, int(data_config.fold), int(data_config.num_folds))
    spacing, window = float(data_config.spacing), tuple(float(v) for v in data_config.ct_window)

    def make_cases(progress: bool):
        out = {}
        for split, members in splits.items():
            out[split] = []
            for case in tqdm(members, desc=f"{spec.name}: {split} cases", unit="case", disable=not progress,
                             leave=False):
                image, affine, label = load_case(spec, case)
                image = image[..., list(channels)]  # before preprocessing: the foreground box follows them too
                prepared, _ = preprocess_case(case.case_id, image, affine, label, spacing, normalisation, window,
                                              2 ** depth)
                out[split].append(prepared)
        return out

    settings = {"split": {s: [c.case_id for c in m] for s, m in splits.items()}, "normalisation": normalisation,
                "ct_window": window if normalisation == "CT" else None, "label_values": spec.label_values}
    if channels != tuple(range(spec.in_channels)):  # only then: all channels keep their existing cache entries
        settings["channels"] = list(channels)
    return Recipe(name=spec.name, class_names=spec.class_names, modality=modality, fingerprint=fingerprint(spec),
                  settings=settings, make_cases=make_cases)
