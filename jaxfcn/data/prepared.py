"""The prepared-dataset cache: preprocessed cases → fixed-shape examples in array_record, keyed by recipe.

A :class:`Recipe` says how to make the preprocessed cases of each split (built-in templates or a user
folder). :func:`prepare` turns them into examples (2D slices or 3D patches) once, into
``$JAXFCN_CACHE/prepared/<name>-<key>/``, where ``key`` is a hash of everything that changes the
examples (input files, preprocessing settings, split, shapes, depth). :func:`open_prepared` reads it back
with ``tfds.data_source`` and returns a :class:`~jaxfcn.data.dataset.SegmentationDataset`. A second call
with the same settings finds the directory and does no preprocessing at all.

Directory layout::

    meta.json                    # class names, modality, shapes, example counts, case ids, the key
    cases/<split>.npz            # whole preprocessed val/test volumes (image, label, affine per case)
    cases/example_cases.npz      # per split: the case index of every example (also stored in each record)
    jaxfcn_prepared/1.0.0/...    # tfds array_record files, one per split
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from jaxfcn.data import preprocess
from jaxfcn.data.dataset import ArraySource, Case, DatasetInfo, SegmentationDataset, training_subset
from jaxfcn.data.fetch import cache_root, file_lock
from jaxfcn.errors import UserError

PREPARE_VERSION = 3  # bump when preprocessing code changes what examples contain (3: generated subjects)
SPLITS = ("train", "val", "test")
MATERIALISE_BYTES = 1 << 30  # splits up to this size are read into memory once (fast batching)
MIN_TRAIN_PATCHES_PER_CASE = 32


@dataclasses.dataclass
class Recipe:
    """How to make one dataset's preprocessed cases.

    ``make_cases(progress)`` returns ``{split: [Case]}`` for train/val/test: canonical, normalised,
    cropped to the foreground and padded to a multiple of 2^depth. ``settings`` holds everything else
    that changes those cases (it goes into the cache key with the example shapes).
    """

    name: str
    class_names: tuple[str, ...]
    modality: tuple[str, ...]
    fingerprint: str
    settings: dict
    make_cases: Callable[[bool], dict[str, list[Case]]]


def example_settings(data_config, depth: int) -> dict:
    """The data-config values that shape examples (train_size/subset_seed do not: they select at read time)."""
    dims = int(data_config.dims)
    if dims not in (2, 3):
        raise UserError(f"data.dims={dims}: must be 2 (slices) or 3 (patches)")
    settings = {"dims": dims, "depth": int(depth), "spacing": float(data_config.spacing)}
    if dims == 2:
        unknown = [o for o in data_config.orientations if o not in preprocess.ORIENTATION_AXIS]
        if unknown or not data_config.orientations:
            raise UserError(f"data.orientations={tuple(data_config.orientations)}: use a non-empty subset of "
                            f"{tuple(preprocess.ORIENTATION_AXIS)}")
        settings.update(orientations=list(data_config.orientations), example_shape=list(data_config.slice_shape))
    else:
        settings.update(example_shape=list(data_config.patch_shape),
                        foreground_oversample=float(data_config.foreground_oversample))
    if len(settings["example_shape"]) != dims or min(settings["example_shape"]) < 1:
        raise UserError(f"data.{'slice' if dims == 2 else 'patch'}_shape={tuple(settings['example_shape'])}: "
                        f"need {dims} positive sizes")
    return settings


def cache_key(recipe: Recipe, settings: dict) -> str:
    payload = {"version": PREPARE_VERSION, "name": recipe.name, "fingerprint": recipe.fingerprint,
               "recipe": recipe.settings, "examples": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepared_dir(recipe: Recipe, settings: dict) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in recipe.name)[-60:]
    return cache_root() / "prepared" / f"{safe}-{cache_key(recipe, settings)}"


def _examples(cases: list[Case], split: str, settings: dict, seed: int, progress: bool, made_from: list[int]):
    """Yield the split's examples in a fixed order (case by case), as the builder stores them; the case
    index of each is appended to ``made_from``."""
    from tqdm import tqdm

    shape = settings["example_shape"]
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    for case_index, case in enumerate(tqdm(cases, desc=f"{split} examples", unit="case", disable=not progress,
                                           leave=False)):
        if settings["dims"] == 2:
            made = preprocess.slices_2d(case, settings["orientations"], shape)
        elif split == "train":
            count = max(MIN_TRAIN_PATCHES_PER_CASE, 4 * len(preprocess.patch_starts_grid(case.label.shape, shape)))
            made = preprocess.patches_3d(case, shape, preprocess.patch_starts_random(
                case, shape, count, settings["foreground_oversample"], rng))
        else:
            made = preprocess.patches_3d(case, shape, preprocess.patch_starts_grid(case.label.shape, shape))
        for example in made:
            made_from.append(case_index)
            yield {"image": example["image"].astype(np.float32), "label": example["label"].astype(np.uint8),
                   "case": case_index, "axis": example["axis"], "position": example["position"]}


def _save_cases(path: Path, cases: list[Case]) -> None:
    arrays = {}
    for i, case in enumerate(cases):
        arrays[f"image_{i}"] = case.image.astype(np.float32)
        arrays[f"label_{i}"] = case.label.astype(np.uint8)
        arrays[f"affine_{i}"] = case.affine
        arrays[f"spacing_{i}"] = np.asarray(case.spacing, np.float64)
    arrays["case_ids"] = np.asarray([c.case_id for c in cases], dtype=str)
    np.savez(path, **arrays)


def load_cases(path: Path) -> list[Case]:
    with np.load(path) as data:
        return [Case(str(case_id), data[f"image_{i}"], data[f"label_{i}"].astype(np.int32), data[f"affine_{i}"],
                     tuple(float(v) for v in data[f"spacing_{i}"])) for i, case_id in enumerate(data["case_ids"])]


def prepare(recipe: Recipe, data_config, depth: int, progress: bool = True) -> Path:
    """Materialise the prepared directory if missing (safe against concurrent preparers); return it."""
    settings = example_settings(data_config, depth)
    target = prepared_dir(recipe, settings)
    if (target / "meta.json").exists():
        return target
    with file_lock(cache_root() / "locks" / f"{target.name}.lock"):
        if (target / "meta.json").exists():  # another process finished it while we waited
            return target
        cases = recipe.make_cases(progress)
        for split in SPLITS:
            if not cases.get(split):
                raise UserError(f"{recipe.name}: the '{split}' split has no cases (need at least one per split)")
        num_classes = len(recipe.class_names)
        if num_classes > 256:
            raise UserError(f"{recipe.name}: {num_classes} classes; at most 256 are supported")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "cases").mkdir(parents=True)
        seed = int(cache_key(recipe, settings), 16) % (1 << 31)  # patch positions: fixed per cache entry
        from jaxfcn.data import tfds_builder

        channels = cases["train"][0].image.shape[-1]
        made_from = {s: [] for s in SPLITS}
        tfds_builder.write(str(tmp), settings["example_shape"], channels,
                           {s: (lambda s=s: _examples(cases[s], s, settings, seed, progress, made_from[s]))
                            for s in SPLITS})
        np.savez(tmp / "cases" / "example_cases.npz", **{s: np.asarray(v, np.int32) for s, v in made_from.items()})
        for split in ("val", "test"):
            _save_cases(tmp / "cases" / f"{split}.npz", cases[split])
        sources = tfds_builder.read(str(tmp))
        meta = {"name": recipe.name, "class_names": list(recipe.class_names), "modality": list(recipe.modality),
                "in_channels": int(channels), "dims": settings["dims"], "example_shape": settings["example_shape"],
                "num_examples": {s: len(sources[s]) for s in SPLITS},
                "case_ids": {s: [c.case_id for c in cases[s]] for s in SPLITS},
                "key": cache_key(recipe, settings), "settings": settings, "recipe": recipe.settings}
        for split in SPLITS:
            if meta["num_examples"][split] == 0:
                raise UserError(f"{recipe.name}: the '{split}' split produced no examples")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


class InMemorySource:
    """A prepared split, read into memory in full on first access when it is small (≤ MATERIALISE_BYTES),
    so batching costs array indexing instead of one record decode per example; larger splits stay on disk
    and are read record by record. Opening a dataset therefore reads nothing but metadata."""

    def __init__(self, source):
        self._source = source
        self._arrays: ArraySource | None = None

    def __len__(self) -> int:
        return len(self._source)

    def _load(self):
        n = len(self._source)
        first = self._source[0]
        if n * (first["image"].nbytes + first["label"].nbytes) > MATERIALISE_BYTES:
            self._arrays = self._source
            return
        images = np.empty((n,) + first["image"].shape, np.float32)
        labels = np.empty((n,) + first["label"].shape, np.uint8)
        for start in range(0, n, 256):
            chunk = self._source.__getitems__(list(range(start, min(n, start + 256))))
            images[start:start + len(chunk)] = np.stack([e["image"] for e in chunk])
            labels[start:start + len(chunk)] = np.stack([e["label"] for e in chunk])
        self._arrays = ArraySource(images, labels)

    def __getitem__(self, index: int) -> dict:
        if self._arrays is None:
            self._load()
        return self._arrays[index]

    def take(self, indices: np.ndarray) -> dict:
        if self._arrays is None:
            self._load()
        if isinstance(self._arrays, ArraySource):
            return self._arrays.take(indices)
        examples = self._arrays.__getitems__([int(i) for i in indices])
        return {"image": np.stack([e["image"] for e in examples]), "label": np.stack([e["label"] for e in examples])}


def read_meta(directory: Path) -> dict:
    return json.loads((Path(directory) / "meta.json").read_text())


def open_prepared(directory: Path, data_config, subset_seed: int | None = None) -> SegmentationDataset:
    """The prepared dataset in ``directory`` with the training subset of ``data.train_size`` cases drawn by
    ``subset_seed`` (default ``data.subset_seed``)."""
    from jaxfcn.data import tfds_builder

    meta = read_meta(directory)
    sources = {split: InMemorySource(src) for split, src in tfds_builder.read(str(directory)).items()}
    cases = {split: load_cases(Path(directory) / "cases" / f"{split}.npz") for split in ("val", "test")}
    info = DatasetInfo(name=meta["name"], class_names=tuple(meta["class_names"]), in_channels=meta["in_channels"],
                       spatial_dims=meta["dims"], example_shape=tuple(meta["example_shape"]),
                       modality=tuple(meta["modality"]))
    with np.load(Path(directory) / "cases" / "example_cases.npz") as data:
        example_cases = {split: data[split].astype(np.int64) for split in SPLITS}
    seed = int(data_config.subset_seed) if subset_seed is None else int(subset_seed)
    train_indices = training_subset(example_cases["train"], int(data_config.train_size), seed)
    return SegmentationDataset(info, sources, cases, train_indices, example_cases, meta["case_ids"],
                               foreground_fraction=float(data_config.get("foreground_batch_fraction", 0.0)))
