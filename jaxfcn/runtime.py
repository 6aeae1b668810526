"""Process-wide JAX settings of the ``jaxfcn`` command (and the test suite): a persistent compilation cache.

A study compiles the same few programs again and again (every condition of a grid trains the same
architecture; only the data, the seed and the initial values change), and each compilation costs seconds
on a CPU. XLA's persistent cache keys a program by its HLO, compiler options and backend, so identical
programs are compiled once per machine, across conditions and across invocations.

The settings go through JAX's environment variables, set only where the user has not set them, so this
module imports nothing heavy and the user's own ``JAX_COMPILATION_CACHE_DIR`` wins.
``JAXFCN_COMPILE_CACHE=0`` turns the cache off.
"""
from __future__ import annotations

import os
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
