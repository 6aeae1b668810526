"""The training loop's mechanics on a tiny in-memory dataset: workdir, snapshots, resume, refusal, NaN."""
import json
import os

import jax
import numpy as np
import pytest

from jaxfcn.data.dataset import ArraySource, SegmentationDataset
from jaxfcn.errors import UserError
from jaxfcn.train import checkpoint
from jaxfcn.config_checks import parse_snapshot_steps
from jaxfcn.train.loop import data_seed, train_and_evaluate
from jaxfcn.train.run_files import TrainingDiverged
from jaxfcn.train.workdir import load_run_config
from train_helpers import like_real, shapes_dataset


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture
def config(tiny_config):
    like_real(tiny_config)  # shares the compiled step with the real-data tests
    tiny_config.model.num_classes = 0  # resolved from the data
    tiny_config.model.in_channels = 0
    return tiny_config


def test_parse_snapshot_steps():
    assert parse_snapshot_steps("log:4", 1000) == [1, 10, 100, 1000]
    assert parse_snapshot_steps("5, 50,5000", 100) == [5, 50]
    with pytest.raises(UserError, match="snapshot_steps"):
        parse_snapshot_steps("log:x", 10)


def test_run_layout_summary_and_snapshots(config, tmp_path):
    workdir = str(tmp_path / "run")
    summary = train_and_evaluate(config, workdir, dataset=shapes_dataset(), progress=False)
    names = sorted(os.listdir(workdir))  # with one TensorBoard event file (jaxfcn.train.tensorboard)
    assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
        "checkpoints", "config.json", "dataset_info.json", "metrics.jsonl", "snapshots", "train_summary.json"]
    assert len(names) == 7
    resolved = load_run_config(workdir)
    assert (resolved.model.num_classes, resolved.model.in_channels) == (4, 1)
    assert summary["train_step_compilations"] == 1  # a fresh ProgramSet builds its own step
    assert summary["final_step"] == 6 and summary["snapshot_steps"] == [0, 1, 3, 6]
    assert set(summary["time_to_best_fraction"]) == {"90%", "95%", "99%"}
    best = summary["best_val_dice"]
    for entry in summary["time_to_best_fraction"].values():
        assert entry["val_dice"] >= 0.9 * best and entry["step"] in (3, 6)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_dice" in r] == [3, 6]
    # step-0 snapshot is the seed's initialisation; the final snapshot equals the final checkpoint
    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state

    init = init_train_state(build_model(resolved.model), resolved)
    assert leaves_equal(checkpoint.load_params(workdir, 0), init.params)
    assert not leaves_equal(checkpoint.load_params(workdir), init.params)
    manager = checkpoint.state_manager(workdir, read_only=True)
    final_state = manager.restore(6)
    manager.close()
    assert leaves_equal(checkpoint.load_params(workdir), final_state["params"])
    assert checkpoint.snapshot_steps(workdir) == [0, 1, 3, 6]
    assert 6 in checkpoint.checkpoint_steps(workdir)
    assert checkpoint.best_checkpoint_step(workdir) == summary["best_step"]

    # the same config resumes (here: nothing left to do) ...
    again = train_and_evaluate(config, workdir, dataset=shapes_dataset(), progress=False)
    assert again["final_step"] == 6 and leaves_equal(checkpoint.load_params(workdir), final_state["params"])
    # ... a different config is refused before anything is written
    stamp = os.stat(os.path.join(workdir, "config.json")).st_mtime_ns
    config.train.learning_rate = 0.5
    with pytest.raises(UserError, match="different config.*learning_rate"):
        train_and_evaluate(config, workdir, dataset=shapes_dataset(), progress=False)
    assert os.stat(os.path.join(workdir, "config.json")).st_mtime_ns == stamp


def test_foreign_directory_is_refused(config, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a jaxfcn workdir"):
        train_and_evaluate(config, str(tmp_path), dataset=shapes_dataset(), progress=False)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_nan_loss_stops_with_last_good_checkpoint(config, tmp_path):
    data = shapes_dataset()
    images = data.sources["train"].images.copy()
    # poison one example, chosen so the first batch that contains it comes after the step-3 checkpoint
    # (train.steps stays 6: the step program is then the one the other tests compiled)
    seed = data_seed(config.train)
    first_use = {}
    for step in range(config.train.steps):
        for i in data.batch_indices(step, config.train.batch_size, seed):
            first_use.setdefault(int(i), step + 1)  # batch `step` is used by update number step + 1
    bad_index, bad_step = next((i, s) for i, s in sorted(first_use.items(), key=lambda kv: kv[1]) if s > 3)
    images[bad_index] = np.nan
    poisoned = SegmentationDataset(data.info, {**data.sources, "train": ArraySource(images, data.sources["train"].labels)},
                                   {s: data.cases(s) for s in ("val", "test")})
    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=f"loss is nan at step {bad_step};.*last good checkpoint: step 3"):
        train_and_evaluate(config, workdir, dataset=poisoned, progress=False)
    assert max(checkpoint.checkpoint_steps(workdir)) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(checkpoint.load_params(workdir, 3)))
