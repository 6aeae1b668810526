"""jaxfcn.runtime: XLA compiler options the installed XLA does not know are dropped, never fatal; and the
host memory XLA:CPU's programs reuse between runs.

The fault: jaxfcn passed ``xla_cpu_experimental_ynn_fusion_type`` to every CPU compilation, an option
that jaxlib 0.8.0 does not have, so every train step failed to compile there
(``INVALID_ARGUMENT: No such compile option``).
"""
import os
import subprocess
import sys

import jax
import numpy as np

from jaxfcn.models import build_model, layers
from jaxfcn.runtime import supported_compiler_options
from jaxfcn.train.step import init_train_state, make_train_step
from train_helpers import like_real, shapes_dataset

UNKNOWN = {"xla_jaxfcn_no_such_option": True}


def test_unknown_options_are_dropped_and_known_ones_kept():
    known = {"xla_backend_optimization_level": 0}
    assert supported_compiler_options({**known, **UNKNOWN}) == known
    assert supported_compiler_options(known) == known
    assert supported_compiler_options(UNKNOWN) == {}
    assert supported_compiler_options({}) == {}
    # a known option with a value this XLA rejects is dropped too
    assert supported_compiler_options({"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"}) == {}


def test_train_step_compiles_with_an_option_this_xla_does_not_know(tiny_config, monkeypatch):
    """The layers' CPU options plus an unknown one (as the ynn option is for jaxlib 0.8.0): the step runs."""
    monkeypatch.setattr(layers, "CPU_COMPILER_OPTIONS", {**layers.CPU_COMPILER_OPTIONS, **UNKNOWN})
    config = like_real(tiny_config)
    config.train.learning_rate = 2e-3  # another program than the suite's other steps: compiled here, now
    model = build_model(config.model)
    state = init_train_state(model, config)
    batch = next(shapes_dataset(n_train=2, n_val=1, n_test=1).batches(4, seed=0))
    state, metrics = make_train_step(model, config)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(jax.device_get(state.step)) == 1


# A program whose temporary buffer (205 MB: two 64 MB cumulative sums and XLA's scratch) is above glibc's
# mmap threshold; prints whether keep_host_memory applied and the minor page faults of its second run.
_FAULTS_SCRIPT = """
import resource, sys
from jaxfcn.runtime import keep_host_memory
applied = keep_host_memory()
import jax, jax.numpy as jnp

@jax.jit
def program(x):
    y = jnp.cumsum(x, axis=0)
    z = jnp.cumsum(y, axis=1)
    return (y * z).sum()

x = jnp.ones((4096, 4096), jnp.float32)
program(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
program(x).block_until_ready()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_run_faults(keep: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env={**os.environ, "JAXFCN_KEEP_HOST_MEMORY": keep},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[-2] == "True", int(out[-1])


def test_keep_host_memory_removes_the_page_faults_of_each_run():
    """The fault it fixes: XLA:CPU mmaps a fresh temporary buffer per run, so every page of it faults again.
    Without the setting the second run faults on every 4 KiB page of its 205 MB temporary buffer (≈ 50 000
    faults, 66 500 measured); with it that buffer's pages are reused (16 400 measured: the rest are
    allocations of XLA's worker threads, which keep their own arenas)."""
    applied, kept = _second_run_faults("1")
    not_applied, fresh = _second_run_faults("0")
    assert applied and not not_applied
    assert fresh > 45_000, fresh
    assert kept < fresh / 2.5, (kept, fresh)


def test_keep_host_memory_does_not_import_jax_and_applies_when_jax_is_imported():
    """A command that never uses JAX (``jaxfcn data list``) must not pay for importing it (≈ 1.5 s); the
    dispatch setting then reaches JAX at its import, before any backend starts."""
    script = ("import sys\n"
              "from jaxfcn.runtime import keep_host_memory\n"
              "print(keep_host_memory(), 'jax' in sys.modules)\n"
              "import jax\n"
              "print(jax.config.read('jax_cpu_enable_async_dispatch'))\n")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "JAXFCN_KEEP_HOST_MEMORY": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"], out


def test_keep_host_memory_does_nothing_once_the_backend_runs():
    from jaxfcn.runtime import keep_host_memory

    jax.devices()
    assert keep_host_memory() is False


# A 64 MB host input, 4 bytes past a 64-byte boundary (JAX uses an aligned NumPy array in place; this one it
# must copy, in the background), handed to a program either as it comes back from jax.device_put or through
# on_device. The program records, through a host callback, the thread it runs on; prints how many of five
# runs ran on the calling thread.
_RUNS_ON_SCRIPT = """
import sys, threading
from jaxfcn.runtime import keep_host_memory, on_device
keep_host_memory()
import jax, numpy as np

ran_on = []

@jax.jit
def program(x):
    total = x.sum()
    jax.debug.callback(lambda v: ran_on.append(threading.get_ident()), total)
    return 2 * total

size = 64 * 2**20
raw = np.empty(size + 128, np.uint8)
start = -raw.ctypes.data % 64 + 4
host = raw[start:start + size].view(np.float32)
host[:] = 1
place = on_device if sys.argv[1] == "on_device" else jax.device_put
program(on_device(host)).block_until_ready()
ran_on.clear()
for _ in range(5):
    program(place(host)).block_until_ready()
print(sum(thread == threading.get_ident() for thread in ran_on))
"""


def _runs_on_the_calling_thread(place: str) -> int:
    out = subprocess.run([sys.executable, "-c", _RUNS_ON_SCRIPT, place], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[-1])


def test_on_device_keeps_programs_on_the_calling_thread():
    """The fault it fixes: a program dispatched while its input is still being copied does not run on the
    calling thread but later on an XLA pool thread, whose glibc arena maps a temporary buffer over 64 MiB
    fresh at every run, so each of its pages faults (benchmarks/README.md, "Inputs still being copied":
    22 of 30 train steps fed NumPy batches faulted 64 590 times, none fed through on_device). Measured here:
    0 of 5 runs on the calling thread after jax.device_put, 5 of 5 after on_device."""
    assert _runs_on_the_calling_thread("device_put") <= 1
    assert _runs_on_the_calling_thread("on_device") == 5
