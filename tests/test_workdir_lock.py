"""One writer per workdir (jaxfcn.train.lock): a second `jaxfcn train` on a workdir in use is refused with
the holder's PID and host; the lock of a run killed with SIGKILL is taken over and the rerun resumes.

The holders are real `jaxfcn train` subprocesses on the built-in tissue task (the tiny model), the second
writer is the CLI in this process; before the lock both ran to the end writing the same files.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from jaxfcn.cli import main
from jaxfcn.errors import UserError
from jaxfcn.train import lock
from jaxfcn.train.workdir import entries
from train_helpers import write_tiny_config

HOLDER = f"on host {socket.gethostname()}"


def train_command(config, workdir):
    return ["train", "--config", config, "--workdir", workdir, "--no-progress"]


def tiny_run(tmp_path, steps: int, checkpoint_every: int) -> tuple[str, str]:
    """(config file, workdir) of a tiny run of ``steps`` steps, validated only at its end."""
    config = write_tiny_config(tmp_path / "tiny.py", train__steps=steps, train__checkpoint_every=checkpoint_every,
                               train__eval_every=steps, train__log_every=checkpoint_every, train__snapshot_steps="")
    return config, str(tmp_path / "run")


@contextlib.contextmanager
def running(config, workdir):
    """A real `jaxfcn train` subprocess, killed (if still running) when the block ends."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    process = subprocess.Popen([sys.executable, "-m", "jaxfcn", *train_command(config, workdir)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        process.communicate()


def wait_for(condition, process, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: " + process.stderr.read().decode()
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.02)


def lock_holder(workdir) -> dict:
    try:
        with open(os.path.join(workdir, lock.LOCK_FILE)) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def checkpoints(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []


@pytest.mark.slow
def test_second_writer_is_refused_naming_pid_and_host(tmp_path, capsys):
    config, workdir = tiny_run(tmp_path, steps=1500, checkpoint_every=500)
    with running(config, workdir) as first:
        wait_for(lambda: lock_holder(workdir).get("pid") == first.pid, first, "lock taken by the first run")
        assert main(train_command(config, workdir)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--workdir {workdir}: in use by another jaxfcn process (PID {first.pid} {HOLDER}" \
            in err[0], err
        assert first.poll() is None  # the holder goes on


@pytest.mark.slow
def test_lock_of_a_killed_run_is_taken_over_and_the_rerun_resumes(tmp_path, capsys):
    config, workdir = tiny_run(tmp_path, steps=150, checkpoint_every=25)
    with running(config, workdir) as victim:
        wait_for(lambda: checkpoints(workdir), victim, "checkpoint")
        victim.send_signal(signal.SIGKILL)
    assert victim.returncode == -signal.SIGKILL
    at_kill = max(checkpoints(workdir))
    assert at_kill < 150 and lock_holder(workdir)["pid"] == victim.pid  # the stale lock is still on disk

    capsys.readouterr()
    assert main(train_command(config, workdir)) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock left by PID {victim.pid} {HOLDER}" in err, err
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    assert summary["resumed_at"][0] >= at_kill and summary["final_step"] == 150
    assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))  # a clean end releases and removes it


def test_lock_is_exclusive_and_a_release_leaves_nothing(tmp_path):
    directory = str(tmp_path / "new")
    with lock.hold(directory) as held:
        assert entries(directory) == [] and os.listdir(directory) == [lock.LOCK_FILE]
        assert lock_holder(directory)["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by another jaxfcn process \\(PID {os.getpid()} {HOLDER}"):
            lock.hold(directory)  # a lock is per open file: refused in the same process too
    assert held.fd is None and not os.path.exists(directory)  # created by the lock, empty: removed
    os.makedirs(directory)
    open(os.path.join(directory, "kept"), "w").close()
    with lock.hold(directory):
        pass
    assert os.listdir(directory) == ["kept"]


def test_k_seed_program_study_and_transfer_controls_lock_the_directory_given(tmp_path, capsys):
    config = write_tiny_config(tmp_path / "tiny.py")
    program, study, controls = str(tmp_path / "program"), str(tmp_path / "study"), str(tmp_path / "controls")
    with lock.hold(program), lock.hold(study), lock.hold(controls):
        assert main(train_command(config, program) + ["--seeds", "2"]) == 2
        assert main(["reproduce", "--quick", "--out", study]) == 2
        assert main(["analyze", "transfer", "--out", controls, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err
    assert f"--workdir {program}: in use by another jaxfcn process (PID {os.getpid()}" in err[0]
    assert f"--out {study}: in use by another jaxfcn process (PID {os.getpid()}" in err[1]
    assert f"--out {controls}: in use by another jaxfcn process (PID {os.getpid()}" in err[2]
    assert not any(os.path.exists(d) for d in (program, study, controls))
