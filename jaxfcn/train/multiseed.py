"""K seeds in one program: ``jaxfcn train --seeds K [--seed S]`` trains seeds S, …, S+K−1 together.

Layout::

    DIR/
      seeds.json          # the program: first seed, K, the seeds' workdirs (owns DIR)
      seed_<n>/           # an ordinary workdir (see jaxfcn.train.workdir) per seed n
        config.json       # the config of `jaxfcn train --seed n` (train.num_seeds = 1)
        checkpoints/  snapshots/  metrics.jsonl  train_summary.json

Each ``seed_<n>`` is exactly what a single run with ``--seed n`` writes, so ``evaluate``, ``predict``,
``analyze`` and ``--init`` use it as if it had been trained alone, and re-running the single command
in it resumes it.

How: the K train states are stacked on a leading seed axis and the one-seed step of
:func:`jaxfcn.train.step.train_step_function` is mapped over it (the ``train.seed_strategy`` of
:mod:`jaxfcn.train.seeds`), in one compiled program (:func:`jaxfcn.train.programs.build_programs` on a
plan with K seeds). The loop, validation and files are those of one run (:func:`jaxfcn.train.loop.train_runs`),
once per seed.

Data order (``train.seed_data_order``): ``shared`` (default) gives every seed the batches of data seed 0,
so seeds differ in initialisation and augmentation only, and member n equals the single run ``--seed n``
up to floating-point summation order (the stacked step batches convolutions differently; asserted within
1e-5 after 6 Adam steps in ``tests/test_multiseed.py``). ``independent`` gives seed n the batches of data seed n (as ``--seed n``
alone would), stacked on the seed axis. With ``data.subset_per_seed`` seed n also trains on its own
training subset (subset seed n), so the batches are stacked whatever the data order.

Devices: ``train.parallel`` as for one run (:mod:`jaxfcn.train.parallel`); with ``sharding`` the seed axis
is split over devices where K and the device count allow (mesh ``(gcd(K, D), D / gcd(K, D))``).

Resume: re-running the command resumes every seed from the latest step that all of them saved (each
seed keeps at least its 2 latest checkpoints, so a kill between two seeds' saves leaves a common step).

Example::

    config.train.num_seeds, config.train.seed = 4, 10
    summaries = train_seeds(config, "runs/sub_frozen")   # runs/sub_frozen/seed_10 … seed_13
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from jaxfcn.errors import UserError
from jaxfcn.files import write_json_atomic
from jaxfcn.train import workdir as wd
from jaxfcn.config_checks import check_config
from jaxfcn.train.loop import data_seed, open_training_data, prepare_run, train_runs
from jaxfcn.train.run_files import RunFiles

MANIFEST_FILE = "seeds.json"
MIN_KEEP = 2  # checkpoints each seed keeps (see "Resume" above)


def seed_workdir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, f"seed_{seed}")


def seed_config(config, seed: int, init: str | None = None):
    """The config of the single run ``--seed seed`` (what that seed's workdir records); ``init``
    replaces ``train.init`` (a member started from its own source run)."""
    config = copy.deepcopy(config)
    config.train.seed = int(seed)
    config.train.num_seeds = 1
    if init is not None:
        config.train.init = init
    return config


def program_seeds(train_config) -> list[int]:
    """Seeds ``train.seed … train.seed + train.num_seeds − 1``."""
    return list(range(int(train_config.seed), int(train_config.seed) + int(train_config.num_seeds)))


def shares_batches(datasets: list, data_seeds: list[int]) -> bool:
    """Whether every seed would draw the same batches: one data seed and one training subset."""
    first = datasets[0].train_indices
    return len(set(data_seeds)) == 1 and all(np.array_equal(d.train_indices, first) for d in datasets[1:])


def stacked_batches(datasets, batch_size: int, data_seeds: list[int], start: int):
    """Host batches from step ``start + 1``: one shared stream when all seeds share data seed and training
    subset (:func:`shares_batches`), else the seeds' streams stacked on a leading seed axis. ``datasets``:
    one dataset for all seeds, or one per seed (its own training subset)."""
    if not isinstance(datasets, (list, tuple)):
        datasets = [datasets] * len(data_seeds)
    if shares_batches(datasets, data_seeds):
        yield from datasets[0].batches(batch_size, data_seeds[0], start_step=start)
        return
    streams = [d.batches(batch_size, s, start_step=start) for d, s in zip(datasets, data_seeds)]
    for batches in zip(*streams):
        yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def check_program_dir(workdir: str, seeds: list[int]) -> None:
    """``workdir`` must be new, empty, or the directory of this very program (same seeds)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir}: exists and is not a directory")
    if not os.path.isdir(workdir) or not wd.entries(workdir):
        return
    path = os.path.join(workdir, MANIFEST_FILE)
    if not os.path.isfile(path):
        what = "a single-seed workdir" if os.path.isfile(os.path.join(workdir, wd.CONFIG_FILE)) else "not empty"
        raise UserError(f"--workdir {workdir}: {what} and not a --seeds directory (no {MANIFEST_FILE}); choose another")
    with open(path) as f:
        recorded = json.load(f).get("seeds")
    if recorded != seeds:
        raise UserError(f"--workdir {workdir}: holds seeds {recorded}, not {seeds}; use a new workdir "
                        "(or train extra seeds in another one)")


def resume_step(runs: list[RunFiles]) -> int | None:
    """The latest checkpoint step every seed has (None: start afresh)."""
    common = set.intersection(*(set(run.checkpoint_steps()) for run in runs))
    return max(common) if common else None


def train_seeds(config, workdir: str, *, dataset=None, programs=None, progress: bool = True,
                devices: int | None = None, seed_inits: dict[int, str] | None = None, on_step=None) -> list[dict]:
    """Train (or resume) seeds ``train.seed … + train.num_seeds − 1`` together in ``workdir/seed_<n>``.

    ``seed_inits`` maps a seed to its own ``train.init`` (e.g. transfer from source seed n mod S); seeds
    not in it use ``train.init``. The sources must share the architecture (checked per seed). ``programs``: a
    :class:`~jaxfcn.train.programs.ProgramSet` shared with other programs (default: a new one).
    ``on_step(step)``: called with the step the seeds reached at every log flush.
    Returns the seeds' train summaries (as :func:`jaxfcn.train.loop.train_and_evaluate` does for one).
    """
    t = config.train
    if t.num_seeds < 1:
        raise UserError(f"--seeds {t.num_seeds}: must be at least 1")
    from jaxfcn.train.seeds import check_strategy

    strategy = check_strategy(t.seed_strategy)
    seeds = program_seeds(t)
    check_config(config)
    check_program_dir(workdir, seeds)
    if dataset is None:
        dataset = open_training_data(config, progress=progress)
    seed_inits = seed_inits or {}
    prepared = [prepare_run(seed_config(config, n, seed_inits.get(n)), seed_workdir(workdir, n), dataset, progress)
                for n in seeds]
    configs = [p[0] for p in prepared]
    seed_datasets = [p[1] for p in prepared]  # differ in their training subsets with data.subset_per_seed
    run_config = configs[0]
    data_seeds = [data_seed(c.train) for c in configs]

    from jaxfcn.train.parallel import plan_devices

    plan = plan_devices(t.parallel, t.batch_size, num_seeds=len(seeds), num_devices=devices,
                        seed_batches=not shares_batches(seed_datasets, data_seeds))
    plan.barrier("jaxfcn-checked")

    from jaxfcn.train.programs import ProgramSet

    if plan.primary:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(os.path.join(workdir, MANIFEST_FILE), {
            "seeds": seeds, "seed_data_order": t.seed_data_order,
            "workdirs": [os.path.basename(seed_workdir(workdir, n)) for n in seeds]})
        for n, c in zip(seeds, configs):
            wd.create_workdir(seed_workdir(workdir, n), c, dataset.info)
    plan.barrier("jaxfcn-created")

    built = (programs if programs is not None else ProgramSet()).get(run_config, plan)
    runs = []
    try:
        for n, (c, _, init, _) in zip(seeds, prepared):
            runs.append(RunFiles(seed_workdir(workdir, n), c, init=init, keep=max(c.train.keep_checkpoints, MIN_KEEP),
                                 primary=plan.primary, label=f"seed {n}: "))
        step = resume_step(runs)
        state = plan.place_state(plan.stack([run.initial_state(built, step) for run in runs]))
        return train_runs(
            run_config, dataset, runs, plan, state, built,
            batches=lambda start: stacked_batches(seed_datasets, t.batch_size, data_seeds, start),
            run_datasets=seed_datasets, progress=progress, on_step=on_step, summary_extra={
                "parallel": plan.describe(),
                "program": {"seeds": seeds, "workdir": os.path.abspath(workdir), "seed_strategy": strategy}})
    finally:
        for run in runs:
            run.close()
