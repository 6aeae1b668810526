"""kill -9 in the middle of a run, re-run the same command: the final params are bitwise identical.

The killed run is a real `jaxfcn train` subprocess on the built-in tissue task; it is SIGKILLed as soon
as a checkpoint after step 40 exists (orbax renames a finished checkpoint into place, so the directory
appearing means a complete save). The reference is the same config trained without interruption.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.config import load_config
from jaxfcn.train.checkpoint import checkpoint_steps, load_params
from jaxfcn.train.loop import train_and_evaluate
from train_helpers import write_tiny_config

STEPS = 120
KILL_AFTER = 40  # first checkpoint step that triggers the kill (80 steps remain: the kill lands mid-run)


def train_command(config, workdir):
    return [sys.executable, "-m", "jaxfcn", "train", "--config", config, "--workdir", workdir, "--no-progress"]


def saved_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return [int(name) for name in os.listdir(directory) if name.isdigit()]


@pytest.mark.slow
def test_kill_and_resume_is_bitwise(tmp_path):
    config = write_tiny_config(tmp_path / "tiny.py", train__steps=STEPS, train__checkpoint_every=40,
                               train__eval_every=40, train__log_every=10, train__snapshot_steps="log:4")
    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    # The uninterrupted reference runs in this process (it also fills the compilation cache the
    # subprocesses read); the same config file and the same compiled programs as the command.
    train_and_evaluate(load_config(config), reference, progress=False)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    victim = subprocess.Popen(train_command(config, killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not any(s >= KILL_AFTER for s in saved_steps(killed)):
            assert victim.poll() is None, "the run ended before it could be killed: " + victim.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    at_kill = max(saved_steps(killed))
    assert KILL_AFTER <= at_kill < STEPS

    # Resume with the same command (its CLI entry point, in this process: all state comes from disk).
    assert main(train_command(config, killed)[3:]) == 0

    resumed, uninterrupted = load_params(killed), load_params(reference)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        assert np.array_equal(a, b)
    summary = json.load(open(os.path.join(killed, "train_summary.json")))
    restored = summary["resumed_at"][0]
    assert restored >= at_kill and summary["final_step"] == STEPS
    steps = [json.loads(line)["step"] for line in open(os.path.join(killed, "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated records after the resume
    assert max(checkpoint_steps(killed)) == STEPS


def test_a_workdir_written_with_conv_impl_xla_still_resumes_and_evaluates(tmp_path):
    """Workdirs of earlier versions say model.conv_impl = "xla" (renamed "fast"): they resume, not refuse."""
    config = write_tiny_config(tmp_path / "tiny.py", train__steps=4, train__checkpoint_every=2, train__eval_every=2,
                               train__log_every=2, train__snapshot_steps="log:2")
    workdir = str(tmp_path / "old")
    assert main(["train", "--config", config, "--workdir", workdir, "--no-progress"]) == 0
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    assert saved["model"]["conv_impl"] == "fast"
    saved["model"]["conv_impl"] = "xla"  # as an earlier version wrote it
    with open(path, "w") as f:
        json.dump(saved, f)
    assert main(["train", "--config", config, "--workdir", workdir, "--no-progress",
                 "--set", "train.steps=6"]) == 2  # a real difference is still refused
    assert main(["train", "--config", config, "--workdir", workdir, "--no-progress"]) == 0
    assert main(["evaluate", "--workdir", workdir, "--no-progress"]) == 0
