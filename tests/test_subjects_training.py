"""Training-set size counts subjects: a K-seed program on built-in subjects, each seed with its own subset.

``data.train_size = n`` must give every seed exactly n distinct subjects (all their slices), and with
``data.subset_per_seed`` two seeds must draw different subjects, in one program as in single runs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfcn.data import open_dataset
from jaxfcn.train.multiseed import shares_batches, stacked_batches, train_seeds

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402
from train_helpers import like_real  # noqa: E402

SIZE = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)) as root:
        yield root


@pytest.fixture
def config(tiny_config):
    like_real(tiny_config)
    c = tiny_config
    c.model.in_channels = 0
    c.data.task = "tissue"
    c.data.train_subjects, c.data.val_subjects, c.data.test_subjects = 6, 2, 2
    c.data.train_size, c.data.subset_per_seed = SIZE, True
    c.train.steps, c.train.eval_every, c.train.checkpoint_every, c.train.snapshot_steps = 2, 2, 2, "1"
    c.train.num_seeds, c.train.seed = 2, 0
    return c


def test_each_seed_trains_on_its_own_n_subjects(config, cache, tmp_path):
    # What the study does: one dataset opened for the condition, handed to the K-seed program.
    shared = open_dataset(config.data, depth=config.model.depth, progress=False)
    per_seed = [shared.with_training_subset(SIZE, seed) for seed in (0, 1)]
    subjects = [set(d.example_case_ids("train")) for d in per_seed]
    assert [len(s) for s in subjects] == [SIZE, SIZE] and subjects[0] != subjects[1]
    assert not shares_batches(per_seed, [0, 0])
    # Stacked batches: seed n's half of the batch holds only slices of seed n's subjects.
    batch = next(stacked_batches(per_seed, 4, [0, 0], start=0))
    assert batch["image"].shape[:2] == (2, 4)
    for n, dataset in enumerate(per_seed):
        idx = dataset.batch_indices(0, 4, 0)  # the first batch of the stream
        assert set(idx) <= set(dataset.train_indices)
        np.testing.assert_array_equal(batch["label"][n], dataset._stack("train", idx)["label"])

    summaries = train_seeds(config, str(tmp_path / "program"), dataset=shared, progress=False)
    counts = [s["num_train_examples"] for s in summaries]
    assert counts == [d.num_examples("train") for d in per_seed]
    # Each seed's recorded config reproduces its subset as a single run would (--seed n).
    for n in (0, 1):
        recorded = json.load(open(os.path.join(tmp_path, "program", f"seed_{n}", "config.json")))
        assert recorded["data"]["subset_per_seed"] is True and recorded["train"]["seed"] == n

    # Off: every seed shares the subset of data.subset_seed.
    config.data.subset_per_seed = False
    same = [shared.with_training_subset(SIZE, config.data.subset_seed)] * 2
    assert shares_batches(same, [0, 0])
