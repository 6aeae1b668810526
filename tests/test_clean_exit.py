"""A finished run exits with code 0 from every ``--parallel`` mode and device count.

The fault: the batch prefetch thread of the training loop (:class:`jaxfcn.train.prefetch.Prefetcher`) was
only told to stop, not waited for, so it could still be inside JAX, placing the next batch on the devices,
when the interpreter shut down. CPython then ends such a thread in the middle of its C++ call, and the
process aborts (``terminate called after throwing an instance of ''``, exit 134) after the run has
printed its final line. Whether it happens is a race between that thread and the end of the run, so
:func:`test_prefetcher_close_waits_for_its_thread` checks the cause directly and the subprocess tests
check the exit code.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from jaxfcn.train.prefetch import Prefetcher
from test_parallel import WORKER, worker_env
from train_helpers import write_tiny_config

MODES = ("none", "pmap", "sharding", "auto")


def test_prefetcher_close_waits_for_its_thread():
    def slow():  # the sleep stands for a C++ call that releases the GIL (a device transfer)
        for i in range(100):
            time.sleep(0.2)
            yield i

    source = Prefetcher(slow())
    assert next(source) == 0
    source.close()
    assert not source._thread.is_alive()
    # a finite iterator ends the consumer's loop instead of blocking it
    assert list(Prefetcher(iter(range(5)))) == [0, 1, 2, 3, 4]


# A prefetcher whose thread keeps going in and out of JAX (many small transfers to 4 devices per item),
# closed just before the interpreter exits: the end of a multi-device run, with the race made certain.
# Before the fix every run of it aborted (SIGABRT); each costs about 1.5 s.
BUSY_PREFETCH = textwrap.dedent("""
    import jax, numpy as np
    from jaxfcn.train.prefetch import Prefetcher
    sharding = jax.sharding.NamedSharding(jax.make_mesh((4,), ("data",)), jax.sharding.PartitionSpec("data"))
    host = np.ones((8, 64, 64), np.float32)
    def batches():
        while True:
            for _ in range(50):
                x = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
                x.block_until_ready()
            yield x
    source = Prefetcher(batches())
    next(source), next(source)
    source.close()
""")


def test_busy_prefetch_thread_does_not_abort_the_exit():
    done = subprocess.run([sys.executable, "-c", BUSY_PREFETCH], env=worker_env(4), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_cli_train_exits_cleanly_in_every_parallel_mode(devices, tmp_path):
    """``jaxfcn train`` of the tiny model for 2 steps (batch 8: divisible by every device count) under each
    ``--parallel`` mode with ``devices`` host CPU devices, in one subprocess (tests/parallel_worker.py cli):
    every run returns 0 and leaves no thread behind, the process exits with 0, each run used the plan
    its mode names."""
    config = write_tiny_config(tmp_path / "tiny.py", train__batch_size=8, train__steps=2, train__eval_every=2,
                               train__checkpoint_every=2, train__val_batches=1, train__snapshot_steps="")
    done = subprocess.run([sys.executable, WORKER, "cli", config, str(tmp_path)], env=worker_env(devices),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (devices, done.returncode, done.stderr[-3000:])
    runs = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert [(r["mode"], r["code"], r["threads"]) for r in runs] == [(m, 0, []) for m in MODES], runs
    for mode in MODES:
        with open(os.path.join(tmp_path, mode, "train_summary.json")) as f:
            summary = json.load(f)
        expected = mode if mode != "auto" else ("sharding" if devices > 1 else "none")
        assert summary["final_step"] == 2
        assert (summary["parallel"]["mode"], summary["parallel"]["devices"]) == (
            expected, 1 if expected == "none" else devices), mode
