"""K seeds in one program (jaxfcn.train.multiseed): each member equals its single run, layout, resume, refusals.

Tolerance: member n of a K-seed run and the single run ``--seed n`` differ only in the order of float32
sums (the stacked step's convolutions are batched differently); after 6 Adam steps (lr 1e-3) of the tiny
model the largest parameter difference measured on CPU was 1.2e-7; asserted: ≤ 1e-5.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxfcn.errors import UserError
from jaxfcn.train import checkpoint
from jaxfcn.train.loop import train_and_evaluate
from jaxfcn.config import base_config
from jaxfcn.train.multiseed import MANIFEST_FILE, seed_config, stacked_batches, train_seeds
from jaxfcn.train.workdir import load_run_config
from train_helpers import like_real, shapes_dataset

TOLERANCE = 1e-5
RUN_FILES = ["checkpoints", "config.json", "dataset_info.json", "metrics.jsonl", "snapshots", "train_summary.json"]


@pytest.fixture
def config(tiny_config):
    like_real(tiny_config)  # the single runs share the compiled step of the training tests
    tiny_config.model.num_classes = 0
    tiny_config.model.in_channels = 0
    return tiny_config


@pytest.fixture(scope="module")
def data():
    return shapes_dataset()


def max_difference(a, b) -> float:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))


def records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def with_seeds(config, k, first):
    config = config.copy_and_resolve_references()
    config.train.num_seeds, config.train.seed = k, first
    return config


def test_members_equal_single_runs(config, data, tmp_path):
    program = str(tmp_path / "program")
    summaries = train_seeds(with_seeds(config, 2, 3), program, dataset=data, progress=False)
    assert sorted(os.listdir(program)) == ["seed_3", "seed_4", MANIFEST_FILE]
    assert json.load(open(os.path.join(program, MANIFEST_FILE)))["seeds"] == [3, 4]
    assert [s["final_step"] for s in summaries] == [6, 6]
    assert summaries[0]["train_step_compilations"] == 1  # a fresh ProgramSet builds its own step
    for n, summary in zip((3, 4), summaries):
        member = os.path.join(program, f"seed_{n}")
        assert [n for n in sorted(os.listdir(member)) if not n.startswith("events.out.tfevents.")] == RUN_FILES
        assert summary["workdir"] == os.path.abspath(member) and summary["program"]["seeds"] == [3, 4]
        recorded = load_run_config(member)
        assert (recorded.train.seed, recorded.train.num_seeds) == (n, 1)
        assert checkpoint.snapshot_steps(member) == [0, 1, 3, 6]

        single_config = config.copy_and_resolve_references()
        single_config.train.seed = n
        single = str(tmp_path / f"single_{n}")
        train_and_evaluate(single_config, single, dataset=data, progress=False)
        for step in (0, 3, 6):
            assert max_difference(checkpoint.load_params(member, step), checkpoint.load_params(single, step)) <= TOLERANCE
        mine, theirs = records(member), records(single)
        assert [r["step"] for r in mine] == [r["step"] for r in theirs]
        np.testing.assert_allclose([r["loss"] for r in mine], [r["loss"] for r in theirs], rtol=1e-5)
        np.testing.assert_allclose([r["val_dice"] for r in mine if "val_dice" in r],
                                   [r["val_dice"] for r in theirs if "val_dice" in r], atol=1e-4)
        # an ordinary workdir: the single command for that seed resumes it (nothing left to do)
        again = train_and_evaluate(seed_config(single_config, n), member, dataset=data, progress=False)
        assert again["final_step"] == 6 and again["resumed_at"] == [6]
    # the seeds differ from each other
    assert max_difference(checkpoint.load_params(os.path.join(program, "seed_3")),
                          checkpoint.load_params(os.path.join(program, "seed_4"))) > 1e-3


def test_resume_after_a_partial_save(config, data, tmp_path):
    """A kill between two seeds' checkpoint saves (seed_1 lacks its newest checkpoint) resumes both seeds
    from their latest common step and ends bitwise where the uninterrupted program ended."""
    config.train.steps = 4  # the compiled program of the test above (constant learning rate)
    program = str(tmp_path / "program")
    train_seeds(with_seeds(config, 2, 0), program, dataset=data, progress=False)
    final = [checkpoint.load_params(os.path.join(program, f"seed_{n}")) for n in (0, 1)]
    seed_1 = os.path.join(program, "seed_1")
    for directory in ("checkpoints", "snapshots"):  # seed_1's step-4 saves never reached the disk
        shutil.rmtree(os.path.join(seed_1, directory, "4"))
    summaries = train_seeds(with_seeds(config, 2, 0), program, dataset=data, progress=False)
    assert [s["resumed_at"] for s in summaries] == [[3], [3]]
    for n in (0, 1):
        assert max_difference(checkpoint.load_params(os.path.join(program, f"seed_{n}")), final[n]) == 0.0
        assert [r["step"] for r in records(os.path.join(program, f"seed_{n}"))] == [1, 2, 3, 4]
        assert checkpoint.snapshot_steps(os.path.join(program, f"seed_{n}")) == [0, 1, 3, 4]


def test_data_order(data):
    """shared: one stream (data seed 0) for all seeds; independent: seed n's stream, stacked on axis 0.
    (The independent program is checked against one device in tests/test_parallel.py.)"""
    from jaxfcn.train.loop import data_seed

    config = with_seeds(base_config(), 3, 5)
    assert [data_seed(seed_config(config, n).train) for n in (5, 6, 7)] == [0, 0, 0]
    config.train.seed_data_order = "independent"
    seeds = [data_seed(seed_config(config, n).train) for n in (5, 6, 7)]
    assert seeds == [5, 6, 7]
    stacked = next(stacked_batches(data, 4, seeds, start=2))
    assert stacked["image"].shape == (3, 4, 32, 32, 1)
    for i, n in enumerate(seeds):
        np.testing.assert_array_equal(stacked["label"][i], next(data.batches(4, n, start_step=2))["label"])
    shared = next(stacked_batches(data, 4, [0, 0, 0], start=2))
    np.testing.assert_array_equal(shared["image"], next(data.batches(4, 0, start_step=2))["image"])


def test_refusals(config, data, tmp_path):
    single = str(tmp_path / "single")
    os.makedirs(single)
    open(os.path.join(single, "config.json"), "w").write("{}")
    with pytest.raises(UserError, match="single-seed workdir"):
        train_seeds(with_seeds(config, 2, 0), single, dataset=data, progress=False)
    program = str(tmp_path / "program")
    os.makedirs(program)
    json.dump({"seeds": [0, 1]}, open(os.path.join(program, MANIFEST_FILE), "w"))
    with pytest.raises(UserError, match=r"holds seeds \[0, 1\], not \[0, 1, 2\]"):
        train_seeds(with_seeds(config, 3, 0), program, dataset=data, progress=False)
    bad = with_seeds(config, 2, 0)
    bad.train.seed_strategy = "telepathy"
    with pytest.raises(UserError, match="--seed-strategy telepathy"):
        train_seeds(bad, str(tmp_path / "new"), dataset=data, progress=False)
    assert not os.path.exists(tmp_path / "new")


def test_cli_flags_set_the_program(tmp_path):
    from jaxfcn.cli import build_parser
    from jaxfcn.train.commands import train_config_from_args
    from train_helpers import write_tiny_config

    path = write_tiny_config(tmp_path / "tiny.py")
    args = build_parser().parse_args(["train", "--config", path, "--workdir", str(tmp_path / "w"), "--seeds", "8",
                                      "--seed", "10", "--seed-strategy", "vmap", "--parallel", "pmap"])
    t = train_config_from_args(args).train
    assert (t.num_seeds, t.seed, t.seed_strategy, t.parallel) == (8, 10, "vmap", "pmap")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--config", path, "--workdir", "w", "--seeds", "0"])
