"""The paper's three regimes end to end on the built-in real data, through the CLI.

Source: tissue (random init). Targets on `structures`: transfer from the source (--init), and a frozen
random encoder (--freeze encoder). Tiny model, a few steps: this checks the mechanics, not the accuracy.
"""
import json
import os

import jax
import numpy as np

from jaxfcn.cli import main
from jaxfcn.train.checkpoint import load_params
from train_helpers import write_tiny_config


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def train_regimes(root):
    config = write_tiny_config(root / "tiny.py")
    out = {"root": root, "config": config}
    for name, extra in (("source", []),
                        ("transfer", ["--data", "structures", "--init", str(root / "source")]),
                        ("frozen", ["--data", "structures", "--freeze", "encoder"])):
        workdir = str(root / name)
        assert main(["train", "--config", config, "--workdir", workdir, "--no-progress", *extra]) == 0
        out[name] = workdir
    return out


def summary_of(workdir, name="train_summary.json"):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def test_three_regimes_end_to_end(tmp_path, capsys):
    """One test (not a module fixture shared by several): under pytest-xdist every worker would train
    its own copy of the runs."""
    runs = train_regimes(tmp_path)
    check_transfer_starts_from_the_source(runs)
    check_frozen_encoder_stays_at_its_random_init(runs)
    check_evaluate_writes_per_case_summary(runs, capsys)


def check_transfer_starts_from_the_source(runs):
    source_final = load_params(runs["source"])
    start = load_params(runs["transfer"], 0)
    assert leaves_equal(start["encoder"], source_final["encoder"])
    assert leaves_equal(start["decoder"], source_final["decoder"])
    # 4 tissue classes → 6 structures classes: the head is re-initialised
    assert start["head"]["kernel"].shape[-1] == 6 != source_final["head"]["kernel"].shape[-1]
    init = summary_of(runs["transfer"])["init"]
    assert init["source"] == os.path.abspath(runs["source"]) and init["step"] == 6
    assert init["head_reinitialised"] and init["parts"] == ["encoder", "decoder"]
    assert not leaves_equal(load_params(runs["transfer"])["encoder"], source_final["encoder"])  # fine-tuned


def check_frozen_encoder_stays_at_its_random_init(runs):
    start, final = load_params(runs["frozen"], 0), load_params(runs["frozen"])
    assert leaves_equal(final["encoder"], start["encoder"])
    assert not leaves_equal(final["decoder"], start["decoder"])
    assert not leaves_equal(final["head"], start["head"])
    summary = summary_of(runs["frozen"])
    assert summary["frozen"] == ["encoder"] and summary["init"] == {"source": "random"}


def check_evaluate_writes_per_case_summary(runs, capsys):
    assert main(["evaluate", "--workdir", runs["transfer"], "--no-progress"]) == 0
    s = summary_of(runs["transfer"], "summary.json")
    assert s["split"] == "test" and s["dataset"] == "structures" and s["step"] == 6
    classes = s["class_names"][1:]
    assert len(classes) == 5 and s["num_cases"] == len(s["metric_per_case"]) >= 1
    case = s["metric_per_case"][0]
    for name in classes:
        dice = case["metrics"][name]["Dice"]
        assert dice is None or 0.0 <= dice <= 1.0
    assert set(s["mean"]) == set(classes) and set(s["foreground_mean"]) == {"Dice", "HD95"}
    assert "mean Dice" in capsys.readouterr().out
