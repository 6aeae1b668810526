"""Process-wide JAX settings of the ``jaxfcn`` command (and the test suite): a persistent compilation cache,
host memory that XLA:CPU reuses from one run of a program to the next (with :func:`on_device`, which keeps
programs on the calling thread), and XLA compiler options filtered to those the installed XLA accepts.

A study compiles the same few programs again and again (every condition of a grid trains the same
architecture; only the data, the seed and the initial values change), and each compilation costs seconds
on a CPU. XLA's persistent cache keys a program by its HLO, compiler options and backend, so identical
programs are compiled once per machine, across conditions and across invocations.

The cache settings go through JAX's environment variables, set only where the user has not set them, so
the user's own ``JAX_COMPILATION_CACHE_DIR`` wins. Neither setting imports JAX; each reaches JAX at its import.
``JAXFCN_COMPILE_CACHE=0`` turns the cache off, ``JAXFCN_KEEP_HOST_MEMORY=0`` the memory setting.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.abc
import importlib.util
import logging
import os
import platform
import sys

# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.2


def compilation_cache_dir() -> str:
    """``$JAXFCN_JAX_CACHE``, else ``<jaxfcn cache>/jax`` (see :func:`jaxfcn.data.fetch.cache_root`)."""
    from jaxfcn.data.fetch import cache_root

    return os.environ.get("JAXFCN_JAX_CACHE") or str(cache_root() / "jax")


def enable_compilation_cache() -> str | None:
    """Turn on the persistent cache for JAX in this process (call before JAX compiles anything).

    Returns the cache folder, or None when ``JAXFCN_COMPILE_CACHE=0``.
    """
    if os.environ.get("JAXFCN_COMPILE_CACHE", "1") == "0":
        return None
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", compilation_cache_dir())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECONDS))
    if "jax" in sys.modules:  # JAX read its environment at import: update its config too
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_host_memory() -> bool:
    """Let XLA:CPU reuse the pages of its temporary buffer from one run of a program to the next (glibc).

    Why: every run of a compiled CPU program allocates one temporary buffer that holds all its intermediates
    (156 MB for the 2D 128² train step, 262 MB for the 3D 64³ one of ``tissue_3d``). Above glibc's mmap
    threshold that is a fresh ``mmap`` per run, unmapped again when the run ends, so each of its pages faults
    on first touch: 38 000 faults per 128² step and 64 000 per 64³ step, 10–30 % of the step's time
    (``benchmarks/README.md``, "Host memory kept between runs").

    How: CPU programs run on the calling thread (JAX's ``jax_cpu_enable_async_dispatch`` off), so the buffer
    comes from glibc's main arena, and that arena grows with ``brk`` and keeps what it frees (``mallopt``:
    ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` at its maximum). XLA's worker threads keep their own arenas:
    moving them onto the main arena too (``MALLOC_ARENA_MAX=1``) removes the faults as well but slows small
    programs by 40 %.

    Costs: the process keeps freed heap memory instead of returning it to the system (its resident size
    stays near its peak), and Python waits for each single-device CPU program instead of queueing the next
    (programs over several devices stay asynchronous). GPU programs are not affected.

    Call it before JAX's CPU backend starts (the first ``jax.devices()``, transfer or computation). It does
    not import JAX: if JAX is not imported yet, the dispatch setting is made right after its import, so a
    command that never uses JAX does not pay for importing it (≈ 1.5 s). Returns whether it applied: not
    after the backend started, not where the C library is not glibc, and not when
    ``JAXFCN_KEEP_HOST_MEMORY=0``.
    """
    if os.environ.get("JAXFCN_KEEP_HOST_MEMORY", "1") == "0":
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "jax" in sys.modules:
        from jax._src import xla_bridge  # private: JAX has no public way to ask whether a backend has started

        if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
            return False
        _synchronous_cpu_dispatch()
    else:
        sys.meta_path.insert(0, _AfterImport("jax", _synchronous_cpu_dispatch))
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def on_device(tree, device=None):
    """``tree``'s arrays (host or device) as device arrays: on ``device`` if given, else on JAX's default
    device, uncommitted (a jitted program may still move them to its own devices, as it would a NumPy
    array). On a CPU, copied before it returns.

    Why wait on a CPU: XLA:CPU copies a host array over 100 KiB in a background thread (a NumPy array that
    is 64-byte aligned is used in place instead, so whether a copy happens varies from array to array,
    with the address malloc returned). A program dispatched while one of its inputs is still being copied
    does not run on the calling thread: it runs when the copy ends, on one of XLA's pool threads. glibc serves those threads from their own arenas, whose heaps hold
    at most 64 MiB, so a larger temporary buffer (262 MB for the 64³ train step of ``tissue_3d``) is mapped
    fresh for that run and faults page by page, whatever :func:`keep_host_memory` set. And every program
    dispatched while it runs queues behind it on the pool too, until Python next waits for a result: the
    rest of a volume's sliding window, or every step up to the next log flush. Waiting costs nothing the
    program would not have waited for (its input), and keeps each program on the calling thread
    (``benchmarks/README.md``, "Inputs still being copied"). On other backends the copy is not waited for:
    the program's stream orders it, and the host stays free to queue more work.
    """
    import jax

    placed = jax.device_put(tree, device)
    if (device.platform if device is not None else jax.default_backend()) == "cpu":
        jax.block_until_ready(placed)
    return placed


def _synchronous_cpu_dispatch() -> None:
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)  # a flag JAX reads when the backend starts


class _AfterImport(importlib.abc.MetaPathFinder):
    """An import hook that runs ``action()`` once, right after the module ``name`` is first executed."""

    def __init__(self, name: str, action):
        self.name, self.action = name, action

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; and the search below must not find this hook again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec  # not installed: the import fails as it would have
        execute = spec.loader.exec_module

        def execute_then_act(module):
            execute(module)
            self.action()

        spec.loader.exec_module = execute_then_act
        return spec


def supported_compiler_options(options: dict, backend: str | None = None) -> dict:
    """``options`` (XLA compiler options for ``jax.jit(..., compiler_options=...)``) without those that the
    installed XLA rejects on ``backend`` (default: JAX's default backend).

    Option names and values belong to one XLA version (an experimental option may be added, renamed or
    dropped by any jaxlib), and one that XLA does not know makes every compilation that passes it fail.
    The options are tuning, never semantics, so an unknown one is dropped (logged at INFO on the
    ``jaxfcn`` logger). Each set is probed once per process by compiling a one-operation program.
    """
    import jax

    backend = backend or jax.default_backend()
    items = tuple(sorted(options.items()))
    if not items or _compiles(backend, items):
        return dict(items)
    kept = {k: v for k, v in items if _compiles(backend, ((k, v),))}
    dropped = sorted(set(options) - set(kept))
    import jaxlib

    logging.getLogger("jaxfcn").info("XLA compiler options not accepted by jaxlib %s on %s, not used: %s",
                                     jaxlib.__version__, backend, dropped)
    return kept


@functools.lru_cache(maxsize=None)
def _compiles(backend: str, items: tuple) -> bool:
    """Whether a trivial program compiles and runs on ``backend`` with the compiler options ``items``."""
    import jax
    import numpy as np

    x = jax.device_put(np.float32(0), jax.devices(backend)[0])
    try:
        jax.jit(lambda v: v + 1, compiler_options=dict(items))(x).block_until_ready()
    except Exception:  # XLA's error for an unknown option or value (JaxRuntimeError: INVALID_ARGUMENT)
        return False
    return True
