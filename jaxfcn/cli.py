"""The ``jaxfcn`` command: data, train, evaluate, predict, analyze, import-torch, reproduce.

Each subsystem registers its own subcommands (``register(subparsers)`` in its ``commands`` module), so
this file only dispatches. A :class:`~jaxfcn.errors.UserError` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from jaxfcn.errors import UserError
from jaxfcn.runtime import enable_compilation_cache, keep_host_memory

# Subsystems with CLI commands, in help order.
COMMAND_MODULES = (
    "jaxfcn.data.commands",
    "jaxfcn.train.commands",
    "jaxfcn.analysis.commands",
    "jaxfcn.interop.commands",
    "jaxfcn.reproduce.commands",
)


def quiet_third_party_logs() -> None:
    """Silence TensorFlow/absl start-up chatter (tfds probes for TF; we never import it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxfcn", description="What does transfer learning really do to an FCN? Train, analyse, reproduce.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_logs()
    enable_compilation_cache()
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_host_memory()  # before any command starts JAX (it imports nothing)
    try:
        result = args.func(args)
    except UserError as e:
        print(f"jaxfcn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxfcn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
