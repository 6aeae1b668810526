"""Pieces shared by this folder's experiment scripts (and ../2026-12-03_more_runs/fresh_batches.py): the minor
page faults of XLA's pool threads, and tissue_3d's 64³ base-8 train step with four fresh host batches, in the
benchmarks' process settings (`common`)."""
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402,F401  (the process settings of every benchmark)


def pool_faults() -> int:
    """Minor page faults so far of this process's XLA pool threads (names starting tf_XLA), from /proc."""
    total = 0
    for task in glob.glob("/proc/self/task/*"):
        try:
            if open(task + "/comm").read().startswith("tf_XLA"):
                total += int(open(task + "/stat").read().rsplit(")", 1)[1].split()[7])
        except OSError:
            pass
    return total


def step_64_base8():
    """(state, jitted step, four host batches) of the 64³ base-8 full train step, batch 2."""
    import numpy as np
    import train_step as ts

    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_train_state, make_train_step

    config = ts.bench_config(64, 2, 4, 8, "float32", dims=3)
    model = build_model(config.model)
    rng = np.random.default_rng(0)
    host = [{"image": rng.standard_normal((2, 64, 64, 64, 1), dtype=np.float32),
             "label": rng.integers(0, 4, (2, 64, 64, 64)).astype(np.int32)} for _ in range(4)]
    return init_train_state(model, config, ()), make_train_step(model, config, ()), host
