"""TensorBoard event files (jaxfcn.train.tensorboard), read back from disk after tiny real runs.

A single run's scalars equal its ``metrics.jsonl`` records step by step (loss, grad norm, steps/s, val
Dice and per-class Dice by class name) plus the learning rate of its schedule; the prediction image is
written at every validation step; a K-seed program writes one event file per ``seed_<n>``; a resumed
run's purge step hides the events past its resume point; ``JAXFCN_TENSORBOARD=0`` writes none.
"""
import glob
import io
import json
import os

import numpy as np
import pytest

from jaxfcn.train import tensorboard
from jaxfcn.train.loop import train_and_evaluate
from jaxfcn.train.multiseed import train_seeds
from train_helpers import CLASS_NAMES, like_real, shapes_dataset


@pytest.fixture
def config(tiny_config):
    like_real(tiny_config)  # the compiled step of the other training tests
    tiny_config.model.num_classes = 0
    tiny_config.model.in_channels = 0
    return tiny_config


def records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def event_files(workdir):
    return glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def test_a_run_writes_its_metrics_and_predictions(config, tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir, dataset=shapes_dataset(), progress=False)
    assert len(event_files(workdir)) == 1
    scalars = tensorboard.read_scalars(workdir)
    logged = records(workdir)
    for key in ("loss", "loss_mean", "grad_norm", "steps_per_s"):
        assert scalars[f"train/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in logged]
    assert scalars["train/learning_rate"] == [(r["step"], pytest.approx(config.train.learning_rate)) for r in logged]
    validated = [r for r in logged if "val_dice" in r]
    assert [r["step"] for r in validated] == [3, 6]
    assert scalars["val/dice"] == [(r["step"], pytest.approx(r["val_dice"], rel=1e-6)) for r in validated]
    for i, name in enumerate(CLASS_NAMES[1:]):
        assert scalars[f"val/dice/{name}"] == [(r["step"], pytest.approx(r["val_dice_per_class"][i], rel=1e-6))
                                               for r in validated]
    assert tensorboard.read_image_steps(workdir) == [3, 6]
    from PIL import Image

    (event,) = [e for e in tensorboard.read_events(workdir) if e.step == 6 and e.summary.value
                and e.summary.value[0].tag == "val/predictions"]
    image = np.asarray(Image.open(io.BytesIO(event.summary.value[0].image.encoded_image_string)))
    assert image.shape == (tensorboard.EXAMPLES * 32, 3 * 32, 3)  # 4 examples × (image | truth | prediction)


def test_cosine_learning_rate_and_per_seed_runs(config, tmp_path):
    config.train.lr_schedule = "cosine"
    config.train.num_seeds, config.train.seed = 2, 0
    program = str(tmp_path / "program")
    train_seeds(config, program, dataset=shapes_dataset(), progress=False)
    losses = []
    for seed in (0, 1):
        member = os.path.join(program, f"seed_{seed}")
        assert len(event_files(member)) == 1
        scalars = tensorboard.read_scalars(member)
        assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records(member)]
        losses.append([v for _, v in scalars["train/loss"]])
        rates = [v for _, v in scalars["train/learning_rate"]]
        assert rates[0] == pytest.approx(config.train.learning_rate) and rates == sorted(rates, reverse=True)
    assert losses[0] != losses[1]  # each seed its own run
    assert not event_files(program)


def test_resume_purges_and_off_switch(config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    first = tensorboard.Board(workdir, config, 0)
    for step in (1, 2, 3):
        first.write({"step": step, "loss": float(step)})
    first.close()
    second = tensorboard.Board(workdir, config, 2)  # resumed at step 2: step 3 is trained again
    second.write({"step": 3, "loss": 30.0})
    second.close()
    assert tensorboard.read_scalars(workdir)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]

    monkeypatch.setenv("JAXFCN_TENSORBOARD", "0")
    off = str(tmp_path / "off")
    train_and_evaluate(config, off, dataset=shapes_dataset(), progress=False)
    assert not event_files(off) and os.path.isfile(os.path.join(off, "metrics.jsonl"))
