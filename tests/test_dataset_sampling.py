"""Training batches: the uniform epoch stream and the foreground-sampling stream (jaxfcn.data.dataset)."""
from __future__ import annotations

import numpy as np
import pytest

from jaxfcn.data.dataset import ArraySource, DatasetInfo, SegmentationDataset, has_foreground

N, BATCH, SEED = 30, 8, 5


def _dataset(foreground_fraction: float = 0.0) -> SegmentationDataset:
    labels = np.zeros((N, 4, 4), np.int32)
    labels[::3, 1, 2] = 2  # examples 0, 3, 6, …: 10 of the 30 hold foreground
    images = np.arange(N, dtype=np.float32)[:, None, None, None] * np.ones((N, 4, 4, 1), np.float32)
    cases = np.repeat(np.arange(10), 3)  # 10 subjects of 3 slices each
    return SegmentationDataset(DatasetInfo("t", ("bg", "a", "b"), 1, 2, (4, 4)),
                               {"train": ArraySource(images, labels)}, example_cases={"train": cases},
                               foreground_fraction=foreground_fraction)


def _epoch_stream(base: np.ndarray, step: int, count: int, key: list[int]) -> np.ndarray:
    """The stream written out longhand: positions step·count … of the concatenated epoch permutations."""
    order = np.concatenate([base[np.random.default_rng([*key[:1], e, *key[1:]]).permutation(len(base))]
                            for e in range((step + 1) * count // len(base) + 1)])
    return order[step * count:(step + 1) * count]


def test_has_foreground_flags_every_example_with_a_nonzero_label():
    np.testing.assert_array_equal(has_foreground(_dataset().sources["train"]), np.arange(N) % 3 == 0)


def test_uniform_stream_is_the_epoch_permutation_stream():
    ds = _dataset()
    for step in (0, 3, 4, 11):  # 30 examples, batch 8: steps 3 and 11 span two epochs
        np.testing.assert_array_equal(ds.batch_indices(step, BATCH, SEED), _epoch_stream(np.arange(N), step, BATCH, [SEED]))


@pytest.mark.parametrize("fraction,foreground", [(0.5, 4), (0.3, 2), (1.0, 8)])
def test_foreground_sampling_fills_the_first_round_f_b_places_from_foreground_slices(fraction, foreground):
    ds = _dataset(fraction)
    pool = np.flatnonzero(np.arange(N) % 3 == 0)
    seen = []
    for step in range(5):
        batch = ds.batch_indices(step, BATCH, SEED)
        np.testing.assert_array_equal(batch[:foreground], _epoch_stream(pool, step, foreground, [SEED, 1]))
        np.testing.assert_array_equal(batch[foreground:], _epoch_stream(np.arange(N), step, BATCH - foreground, [SEED]))
        assert all(i % 3 == 0 for i in batch[:foreground])
        seen.extend(batch[:foreground])
    # one pass of the foreground stream holds every foreground example once before any repeats
    assert sorted(seen[:len(pool)]) == list(pool)
    labels = next(ds.batches(BATCH, SEED, start_step=2))["label"]
    assert (labels[:foreground].reshape(foreground, -1) > 0).any(axis=1).all()


def test_foreground_sampling_follows_the_training_subset():
    ds = _dataset(0.5).with_training_subset(4, seed=1)
    assert ds.foreground_fraction == 0.5
    subset = set(ds.train_indices.tolist())
    assert len(subset) == 12
    for step in range(6):
        batch = ds.batch_indices(step, BATCH, SEED)
        assert set(batch.tolist()) <= subset and all(i % 3 == 0 for i in batch[:4])
    # the same seed and step give the same batch: resuming needs no replay
    np.testing.assert_array_equal(ds.batch_indices(5, BATCH, SEED), _dataset(0.5).with_training_subset(4, 1).batch_indices(5, BATCH, SEED))


def test_without_foreground_in_the_subset_the_batch_is_uniform():
    ds = _dataset(0.5)
    ds.sources["train"].labels[:] = 0
    np.testing.assert_array_equal(ds.batch_indices(2, BATCH, SEED), _dataset().batch_indices(2, BATCH, SEED))


def test_fraction_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="foreground_fraction=1.5"):
        _dataset(1.5)
