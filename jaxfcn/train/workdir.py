"""A run's working directory: the config snapshot that owns it, and small atomic JSON files.

Layout (see also :mod:`jaxfcn.train.checkpoint`)::

    WORKDIR/
      config.json          # the resolved config (num_classes / in_channels filled in); owns the workdir
      dataset_info.json    # DatasetInfo of the training data (class names, channels, example shape)
      checkpoints/         # orbax CheckpointManager of the full train state (latest N + best val Dice)
      snapshots/           # orbax: params at step 0, the log-spaced steps and the final step
      metrics.jsonl        # one JSON record per logged/validated step
      train_summary.json   # best/final val Dice, time to 90/95/99 % of best, init source, compilations
      summary.json         # `jaxfcn evaluate`: per-case, per-class Dice and HD95 with means
      .jaxfcn.lock         # while a run writes: its PID and host (jaxfcn.train.lock)
      damaged/             # only after a resume found damaged steps: they are moved here

A workdir belongs to exactly one config: re-running the same config resumes it, a different config is
refused (so two experiments never mix their checkpoints). One process writes it at a time
(:mod:`jaxfcn.train.lock`).
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from jaxfcn.config import base_config, config_to_json
from jaxfcn.errors import UserError
from jaxfcn.files import write_json_atomic, write_text_atomic
from jaxfcn.train.lock import LOCK_FILE

CONFIG_FILE = "config.json"
DATASET_INFO_FILE = "dataset_info.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_SUMMARY_FILE = "train_summary.json"
EVAL_SUMMARY_FILE = "summary.json"


def entries(directory: str) -> list[str]:
    """``os.listdir(directory)`` without the lock file: a directory holding only its lock is empty."""
    return [name for name in os.listdir(directory) if name != LOCK_FILE]


# The sections that define a training run (others, e.g. ``study``, configure other commands).
RUN_SECTIONS = ("model", "data", "train")


def _normalised(config) -> dict:
    """The run-defining sections of the config as plain JSON data (tuples become lists), for comparisons."""
    data = json.loads(config_to_json(config))
    return {k: v for k, v in data.items() if k in RUN_SECTIONS}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, prefix + key + ".")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} in the workdir, {vb!r} now")
    return out


# Values that earlier versions wrote under a name since changed, read as today's name, so their workdirs
# still resume, evaluate and transfer: conv_impl "xla" computed exactly what "fast" computes now.
RENAMED_VALUES = {("model", "conv_impl"): {"xla": "fast"}}


def config_from_json(data: dict) -> ml_collections.ConfigDict:
    """Rebuild a ConfigDict from JSON data on top of :func:`base_config` (lists back to tuples; values of
    :data:`RENAMED_VALUES` under their current name)."""
    config = base_config()
    for section, values in data.items():
        if section not in config:
            raise ValueError(f"unknown config section '{section}'")
        for key, value in values.items():
            if key not in config[section]:
                raise ValueError(f"unknown config key '{section}.{key}'")
            if isinstance(config[section][key], tuple):
                value = tuple(value)
            value = RENAMED_VALUES.get((section, key), {}).get(value, value) if isinstance(value, str) else value
            config[section][key] = value
    return config


def trained_to(workdir: str, steps: int) -> bool:
    """Whether the run in ``workdir`` finished training at ``steps`` (its train summary says so)."""
    path = os.path.join(workdir, TRAIN_SUMMARY_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("final_step") == steps


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of a jaxfcn workdir (UserError if ``workdir`` is not one)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{workdir}: not a jaxfcn workdir (no {CONFIG_FILE})")
    try:
        with open(path) as f:
            return config_from_json(json.load(f))
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: unreadable run config: {e}") from None


def check_workdir(workdir: str, config) -> bool:
    """Whether ``workdir`` already belongs to ``config`` (resume). Raises UserError if it cannot be used.

    A missing or empty directory is a fresh run; a directory with another config, or with files but no
    config, is refused.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir}: exists and is not a directory")
    if not os.path.isdir(workdir) or not entries(workdir):
        return False
    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        raise UserError(f"--workdir {workdir}: not empty and not a jaxfcn workdir (no {CONFIG_FILE}); choose another")
    existing = _normalised(load_run_config(workdir))
    diffs = _differences(existing, _normalised(config))
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise UserError(f"--workdir {workdir}: belongs to a different config ({'; '.join(diffs[:3])}{more}); "
                        "use a new workdir")
    return True


def create_workdir(workdir: str, config, dataset_info) -> None:
    """Create ``workdir`` with its config and dataset snapshots (call only after all validation)."""
    os.makedirs(workdir, exist_ok=True)
    write_text_atomic(os.path.join(workdir, CONFIG_FILE), config_to_json(config) + "\n")
    write_json_atomic(os.path.join(workdir, DATASET_INFO_FILE), dataclasses.asdict(dataset_info))


def load_dataset_info(workdir: str):
    """The DatasetInfo a run was trained on."""
    from jaxfcn.data.dataset import DatasetInfo

    path = os.path.join(workdir, DATASET_INFO_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{workdir}: no {DATASET_INFO_FILE} (not a trained jaxfcn workdir)")
    with open(path) as f:
        data = json.load(f)
    return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
