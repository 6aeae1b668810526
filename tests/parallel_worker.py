"""Subprocess side of tests/test_parallel.py (several host devices or processes must be set before JAX starts).

    python tests/parallel_worker.py devices OUT.json                       # 8 host CPU devices (XLA_FLAGS)
    python tests/parallel_worker.py host PROCESS_ID NUM_PROCESSES PORT WORKDIR   # one process of a multi-host run
    python tests/parallel_worker.py cli CONFIG FOLDER                      # `jaxfcn train` in every --parallel mode

``devices``: with a frozen encoder, the train step of one seed under ``--parallel sharding``, two stacked
seeds (independent data order) under ``pmap`` and through the K-seed loop under ``auto`` (= sharding of the
seed and data axes), each against ``none``, and the device errors; writes the largest parameter
differences, relative to the largest update of the reference (:func:`update_difference`), to OUT.json. (Each compilation costs seconds, so each path is compiled once.) ``host``: trains the tiny run in WORKDIR as one of NUM_PROCESSES
processes (gloo collectives over 127.0.0.1:PORT). ``cli``: runs ``jaxfcn train --config CONFIG`` once per
``--parallel`` mode (workdirs FOLDER/<mode>) through the CLI's ``main``, one after the other in this process
(one interpreter start for four runs), and prints for each its exit code and the threads still alive
after it; the process then exits normally, so its exit code covers what all four runs left behind.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

if os.environ.get("JAXFCN_JAX_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXFCN_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

STEPS = 2
BATCH = 8  # divisible by the 8 devices


def tiny_config():
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.data.slice_shape = (32, 32)
    c.train.batch_size, c.train.steps, c.train.lr_schedule = BATCH, STEPS, "constant"
    # SGD: each update is lr × gradient, so a gradient off by a factor N moves the parameters N× as far
    # (Adam's first updates are ±lr whatever the gradient's scale, and would hide such a bug).
    c.train.optimizer, c.train.learning_rate = "sgd", 0.1
    c.train.eval_every = c.train.log_every = c.train.checkpoint_every = STEPS
    c.train.val_batches, c.train.snapshot_steps = 1, ""
    c.train.freeze = ("encoder",)
    return c


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def update_difference(init, reference, other) -> float:
    """max |other - reference| / max |reference - init|: how far ``other``'s training moved the parameters
    elsewhere than the reference's did, as a fraction of the reference's largest update (a gradient off
    by a factor N gives about N - 1)."""
    return max_difference(other, reference) / max_difference(reference, init)


def run_steps(plan, model, config, members, batches):
    """``members`` (per-seed initial states) stepped through ``batches`` under ``plan``; per-seed params."""
    from jaxfcn.train.programs import build_programs

    state = plan.place_state(plan.stack(jax.device_get(members)))  # host copies: the step donates its state
    step = build_programs(config, plan).train_step
    for batch in batches:
        state, _ = step(state, plan.place_batch(batch))
    return [jax.device_get(m.params) for m in plan.members(state)]


def devices_task(out_path: str) -> None:
    import tempfile

    from jaxfcn.errors import UserError
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_params
    from jaxfcn.config_checks import resolve_config
    from jaxfcn.train.multiseed import stacked_batches, train_seeds
    from jaxfcn.train.parallel import plan_devices
    from jaxfcn.train.step import init_train_state
    from train_helpers import shapes_dataset

    assert jax.device_count() == 8, jax.devices()
    data = shapes_dataset()
    config = resolve_config(tiny_config(), data.info)
    model = build_model(config.model)
    frozen = tuple(config.train.freeze)
    batches = [next(data.batches(BATCH, 0, start_step=s)) for s in range(STEPS)]
    out = {"errors": {}}
    for name, call in {
        "batch": lambda: plan_devices("sharding", 6),
        "batch_pmap": lambda: plan_devices("pmap", 4),
        "batch_seeds": lambda: plan_devices("sharding", 2, num_seeds=2),
        "devices": lambda: plan_devices("auto", 8, num_devices=9),
    }.items():
        try:
            call()
            out["errors"][name] = None
        except UserError as e:
            out["errors"][name] = str(e)

    # One seed under sharding: XLA partitions the one-device step over a (1, 8) mesh.
    start = init_train_state(model, config, frozen)
    (reference,) = run_steps(plan_devices("none", BATCH), model, config, [start], batches)
    plan = plan_devices("sharding", BATCH)
    (sharded,) = run_steps(plan, model, config, [start], batches)
    out["sharding_seeds0"] = update_difference(start.params, reference, sharded)
    out["sharding_seeds0_plan"] = plan.describe()

    # Two seeds with independent data order (seed n on the batches of data seed n, stacked): pmap, and the
    # K-seed loop under the default --parallel auto (sharding over a (seed 2, data 4) mesh), against none.
    config.train.seed_data_order = "independent"
    seed_batches = list(itertools.islice(stacked_batches(data, BATCH, [0, 1], 0), STEPS))
    members = []
    for seed in (0, 1):
        config.train.seed = seed
        members.append(init_train_state(model, config, frozen))
    reference = run_steps(plan_devices("none", BATCH, 2, seed_batches=True), model, config, members, seed_batches)
    plan = plan_devices("pmap", BATCH, 2, seed_batches=True)
    out["pmap_seeds2"] = max(update_difference(m.params, r, p) for m, r, p in zip(
        members, reference, run_steps(plan, model, config, members, seed_batches)))
    out["pmap_seeds2_plan"] = plan.describe()
    config.train.seed, config.train.num_seeds = 0, 2
    summaries = train_seeds(config, tempfile.mkdtemp(), dataset=data, progress=False)
    out["loop_parallel"] = summaries[0]["parallel"]
    out["loop_seeds2"] = max(update_difference(m.params, r, load_params(s["workdir"]))
                             for m, r, s in zip(members, reference, summaries))
    with open(out_path, "w") as f:
        json.dump(out, f)


def host_task(process_id: int, num_processes: int, port: int, workdir: str) -> None:
    from jaxfcn.train.parallel import initialize_distributed

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # JAX's CPU default too, said explicitly
        initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    from jaxfcn.train.loop import train_and_evaluate
    from train_helpers import shapes_dataset

    config = tiny_config()
    config.train.batch_size = 4  # 2 per process
    summary = train_and_evaluate(config, workdir, dataset=shapes_dataset(), progress=False)
    print("SUMMARY " + json.dumps({"parallel": summary["parallel"], "final_step": summary["final_step"]}), flush=True)


def cli_task(config: str, folder: str) -> None:
    import threading

    from tqdm._monitor import TMonitor  # tqdm's own idle monitor (unnamed in older tqdm), not a run's thread

    from jaxfcn.cli import main

    for mode in ("none", "pmap", "sharding", "auto"):
        code = main(["train", "--config", config, "--workdir", os.path.join(folder, mode), "--parallel", mode,
                     "--no-progress"])
        # A multiprocessing queue's feeder (a daemon of the event-file writer's queue) never calls into JAX.
        alive = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and not isinstance(t, TMonitor)
                 and t.name != "QueueFeederThread"]
        print("RUN " + json.dumps({"mode": mode, "code": code, "threads": alive}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        devices_task(sys.argv[2])
    elif sys.argv[1] == "cli":
        cli_task(sys.argv[2], sys.argv[3])
    else:
        host_task(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
