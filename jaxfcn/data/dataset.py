"""The contract between data and training: a prepared dataset with deterministic fixed-shape batches.

Everything the trainer, evaluator and analysis see of data goes through :class:`SegmentationDataset`.
Examples live in random-access sources (``len`` + ``__getitem__`` returning ``{"image", "label"}``), such as
a ``tfds.data_source`` over the prepared array_record cache or an in-memory :class:`ArraySource`.

Determinism: batch ``t`` of a training stream depends only on ``(seed, t)``: epoch ``e = t·B // n`` uses
the permutation drawn from ``numpy.random.default_rng([seed, e])``. So resuming at step ``t`` reproduces
the exact data position without replaying the stream.

Foreground sampling (``foreground_fraction`` f > 0, the 2D counterpart of the 3D patches' foreground
oversampling): the first ``m = round(f·B)`` examples of every training batch come from a second stream over
the training examples whose label has any foreground voxel (epoch permutations ``default_rng([seed, e, 1])``),
the other ``B − m`` from the stream over all training examples. A small structure present in a third of the
slices then appears in most batches, which shortens the all-background phase of training; both streams
stay functions of ``(seed, t)``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, Sequence

import numpy as np


class ExampleSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]  # index 0 is background
    in_channels: int
    spatial_dims: int  # of the examples: 2 (slices) or 3 (patches)
    example_shape: tuple[int, ...]  # spatial shape of every example
    modality: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass
class Case:
    """One whole preprocessed volume, for per-case evaluation (Dice/HD95 in 3D)."""

    case_id: str
    image: np.ndarray  # (X, Y, Z, C) float32, canonical (RAS+) orientation, preprocessed
    label: np.ndarray  # (X, Y, Z) int32
    affine: np.ndarray  # (4, 4) voxel → world of this grid
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


class ArraySource:
    """In-memory example source over stacked arrays (used for tests and small derived datasets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        assert len(images) == len(labels)
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": self.labels[index]}

    def take(self, indices: np.ndarray) -> dict:
        """Examples ``indices`` stacked, in one fancy-index per array (the fast path of batching)."""
        return {"image": self.images[indices], "label": self.labels[indices]}


def subset_cases(num_cases: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``size`` cases (all, in order, when size is 0 or ≥ num_cases).

    Nested: the subset of size N is contained in the same seed's subset of size M > N (both are prefixes
    of one seeded permutation), so a training-set-size sweep adds cases rather than redrawing them.
    """
    if size <= 0 or size >= num_cases:
        return np.arange(num_cases)
    return np.sort(np.random.default_rng([seed, 7919]).permutation(num_cases)[:size])


def training_subset(example_cases: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of every example of a seeded subset of ``size`` cases (:func:`subset_cases`).

    ``example_cases[i]`` is the case (subject) of example ``i``; cases are numbered ``0 … C − 1``, so
    ``data.train_size`` counts subjects and each chosen subject brings all its slices or patches.
    """
    example_cases = np.asarray(example_cases)
    num_cases = int(example_cases.max()) + 1 if len(example_cases) else 0
    chosen = subset_cases(num_cases, size, seed)
    return np.flatnonzero(np.isin(example_cases, chosen))


def subset_seed(data_config, train_config) -> int:
    """The seed of the training subset: ``train.seed`` when ``data.subset_per_seed`` (every seed of a
    program, and every ``--seed n`` run, draws its own subjects), else ``data.subset_seed``."""
    return int(train_config.seed) if data_config.subset_per_seed else int(data_config.subset_seed)


def has_foreground(source: ExampleSource, chunk: int = 512) -> np.ndarray:
    """(len(source),) bool: whether each example's label has a voxel of a class other than 0."""
    n = len(source)
    out = np.zeros(n, bool)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        labels = (source.take(idx)["label"] if hasattr(source, "take")
                  else np.stack([source[int(i)]["label"] for i in idx]))
        out[idx] = np.asarray(labels).reshape(len(idx), -1).any(axis=1)
    return out


class SegmentationDataset:
    """Splits of fixed-shape examples plus whole cases for evaluation.

    ``example_cases[split][i]`` is the index (into ``case_ids[split]``) of the case that example ``i`` of
    the split was cut from; without it every example counts as its own case. ``train_indices`` are the
    examples of the training subset (all by default). ``foreground_fraction``: see the module docstring.
    """

    def __init__(self, info: DatasetInfo, sources: dict[str, ExampleSource],
                 cases: dict[str, Sequence[Case]] | None = None, train_indices: np.ndarray | None = None,
                 example_cases: dict[str, np.ndarray] | None = None, case_ids: dict[str, Sequence[str]] | None = None,
                 foreground_fraction: float = 0.0, train_foreground: np.ndarray | None = None):
        self.info = info
        self.sources = sources
        self._cases = cases or {}
        self.example_cases = {split: np.asarray((example_cases or {}).get(split, np.arange(len(src))), np.int64)
                              for split, src in sources.items()}
        default_ids = lambda split: [f"{split}_{i}" for i in range(int(self.example_cases[split].max(initial=-1)) + 1)]
        self.case_ids = {split: list((case_ids or {}).get(split) or default_ids(split)) for split in sources}
        self.train_indices = np.arange(len(sources["train"])) if train_indices is None else train_indices
        if not 0.0 <= float(foreground_fraction) <= 1.0:
            raise ValueError(f"foreground_fraction={foreground_fraction}: must be in [0, 1]")
        self.foreground_fraction = float(foreground_fraction)
        self._train_foreground = train_foreground  # per example of the whole train split, computed once

    def with_training_subset(self, size: int, seed: int) -> "SegmentationDataset":
        """The same data with the training subset of ``size`` cases drawn by ``seed`` (0 = all cases)."""
        return SegmentationDataset(self.info, self.sources, self._cases,
                                   training_subset(self.example_cases["train"], size, seed), self.example_cases,
                                   self.case_ids, self.foreground_fraction, self._train_foreground)

    def train_foreground_indices(self) -> np.ndarray:
        """The training subset's examples (indices into the train split) whose label has foreground."""
        if self._train_foreground is None:
            self._train_foreground = has_foreground(self.sources["train"])
        return self.train_indices[self._train_foreground[self.train_indices]]

    def example_case_ids(self, split: str) -> list[str]:
        """The case id of every example of ``split`` (of the training subset for ``train``), in order."""
        ids = self.case_ids[split]
        return [ids[int(c)] for c in self.example_cases[split][self._indices(split)]]

    def num_cases(self, split: str) -> int:
        """Distinct cases behind the examples of ``split`` (of the training subset for ``train``)."""
        return len(np.unique(self.example_cases[split][self._indices(split)]))

    def num_examples(self, split: str) -> int:
        return len(self.train_indices) if split == "train" else len(self.sources[split])

    def _indices(self, split: str) -> np.ndarray:
        return self.train_indices if split == "train" else np.arange(len(self.sources[split]))

    def _stack(self, split: str, idx: np.ndarray) -> dict:
        src = self.sources[split]
        if hasattr(src, "take"):  # sources holding stacked arrays gather a batch at once
            batch = src.take(np.asarray(idx))
            return {"image": np.asarray(batch["image"], np.float32), "label": np.asarray(batch["label"], np.int32)}
        examples = [src[int(i)] for i in idx]
        return {"image": np.stack([e["image"] for e in examples]).astype(np.float32),
                "label": np.stack([e["label"] for e in examples]).astype(np.int32)}

    def batch_indices(self, step: int, batch_size: int, seed: int, split: str = "train") -> np.ndarray:
        """Indices (into the split) of training batch ``step``; see the module docstring."""
        base = self._indices(split)
        foreground = round(self.foreground_fraction * batch_size) if split == "train" else 0
        if foreground:
            pool = self.train_foreground_indices()
            if len(pool):
                return np.concatenate([_stream(pool, step, foreground, (seed,), 1),
                                       _stream(base, step, batch_size - foreground, (seed,))])
        return _stream(base, step, batch_size, (seed,))

    def batches(self, batch_size: int, seed: int, start_step: int = 0, split: str = "train") -> Iterator[dict]:
        """Infinite stream of ``{"image": (B, *S, C) float32, "label": (B, *S) int32}`` from ``start_step``."""
        step = start_step
        while True:
            yield self._stack(split, self.batch_indices(step, batch_size, seed, split))
            step += 1

    def eval_batches(self, split: str, batch_size: int, max_batches: int = 0) -> Iterator[dict]:
        """A fixed, ordered pass over a split (evenly strided when capped at ``max_batches``).

        Every batch has exactly ``batch_size`` examples; the last one is padded by repetition and its
        ``weight`` entries (B,) are 0 for the padding, 1 otherwise.
        """
        n = self.num_examples(split)
        order = self._indices(split)
        if max_batches and n > max_batches * batch_size:
            order = order[np.linspace(0, n - 1, max_batches * batch_size).round().astype(int)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            weight = np.ones(batch_size, np.float32)
            if len(idx) < batch_size:
                weight[len(idx):] = 0
                idx = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])
            batch = self._stack(split, idx)
            batch["weight"] = weight
            yield batch

    def cases(self, split: str) -> Sequence[Case]:
        """Whole preprocessed volumes of a split (val/test), for per-case 3D metrics."""
        return self._cases.get(split, ())


def _stream(base: np.ndarray, step: int, count: int, seed: tuple, *stream: int) -> np.ndarray:
    """Batch ``step`` (``count`` examples) of the epoch-permuted stream over ``base``: epoch ``e`` is
    ``base`` permuted by ``default_rng([*seed, e, *stream])``."""
    n = len(base)
    epochs, positions = np.divmod(step * count + np.arange(count), n)
    out = np.empty(count, np.int64)
    for epoch in np.unique(epochs):  # a batch spans at most a few epochs
        sel = epochs == epoch
        out[sel] = base[np.random.default_rng([*seed, int(epoch), *stream]).permutation(n)[positions[sel]]]
    return out
