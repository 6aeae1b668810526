"""What the SHA-256 manifests cost: per save and per load, for the default 128² model.

jaxfcn writes a manifest (:mod:`jaxfcn.train.integrity`) after every orbax save and verifies it before every
load. Measured on the default model of ``base_config()`` (U-Net depth 4, base width 16, 1 input channel,
4 classes, 128² slices), with the real managers of :mod:`jaxfcn.train.checkpoint`:

* ``checkpoint``: the full train state (params, Adam moments made dense as in a run, step, rng), as a
  run saves and resumes it;
* ``snapshot``: ``{"params", "batch_stats"}``, as a run saves it and evaluate/predict/analyze read it.

Per round and kind, interleaved: one save (``save_state`` / ``save_snapshot``: orbax + manifest) with
the manifest write timed on its own on the same step, then one load (``restore_state`` /
``load_variables``: verify + orbax) with the verification timed on its own. Files were just written, so
they come from the page cache, as in a run. Medians over rounds.

    python benchmarks/integrity.py            # 7 rounds
    python benchmarks/integrity.py --quick    # 3 rounds
    python benchmarks/integrity.py --json out.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_common_args, machine_info, write_json  # noqa: E402


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 7, quick 3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)

    import jax
    import numpy as np

    from jaxfcn.config import base_config
    from jaxfcn.models import build_model
    from jaxfcn.train import checkpoint, integrity
    from jaxfcn.train.step import init_train_state

    config = base_config()
    config.model.in_channels, config.model.num_classes = 1, 4
    state = init_train_state(build_model(config.model), config)
    # Adam's moments start at zero, which orbax's compression shrinks to nothing; a run's are dense.
    rng = np.random.default_rng(0)

    def dense(x):
        return rng.standard_normal(x.shape).astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else x

    state = state.replace(opt_state=jax.tree.map(dense, state.opt_state))
    workdir = tempfile.mkdtemp(prefix="jaxfcn-integrity-")
    states = checkpoint.state_manager(workdir, keep=rounds + 1)
    snapshots = checkpoint.snapshot_manager(workdir)
    kinds = {
        "checkpoint": (checkpoint.CHECKPOINT_DIR,
                       lambda step: checkpoint.save_state(states, state.replace(step=step)),
                       lambda step: checkpoint.restore_state(states, state, step)),
        "snapshot": (checkpoint.SNAPSHOT_DIR,
                     lambda step: checkpoint.save_snapshot(snapshots, step, state.variables()),
                     lambda step: checkpoint.load_variables(workdir, step)),
    }
    times = {kind: {"save": [], "manifest": [], "load": [], "verify": []} for kind in kinds}
    sizes = {}
    try:
        for step in range(rounds + 1):  # step 0 warms up orbax and the restore programs; not counted
            for kind, (sub, save, load) in kinds.items():
                directory = os.path.join(workdir, sub, str(step))
                t = {"save": timed(lambda: save(step)),
                     "manifest": timed(lambda: integrity.write_manifest(directory)),
                     "load": timed(lambda: load(step)),
                     "verify": timed(lambda: integrity.verify(directory, kind))}
                sizes[kind] = directory_bytes(directory)
                if step > 0:
                    for name, seconds in t.items():
                        times[kind][name].append(seconds)
    finally:
        states.close()
        snapshots.close()
        shutil.rmtree(workdir, ignore_errors=True)

    result = {"machine": machine_info(), "rounds": rounds,
              "model": "base_config(): depth 4, base width 16, 128², 1 channel, 4 classes", "kinds": {}}
    print(f"{'kind':<11} {'MB':>6} {'save ms':>8} {'manifest ms':>12} {'share':>6} "
          f"{'load ms':>8} {'verify ms':>10} {'share':>6} {'hash MB/s':>10}")
    for kind, t in times.items():
        m = {name: 1e3 * statistics.median(v) for name, v in t.items()}
        megabytes = sizes[kind] / 1e6
        row = {"megabytes": megabytes, **{f"{k}_ms": v for k, v in m.items()},
               "manifest_share_of_save": m["manifest"] / m["save"], "verify_share_of_load": m["verify"] / m["load"],
               "hash_megabytes_per_s": megabytes / (m["verify"] / 1e3)}
        result["kinds"][kind] = row
        print(f"{kind:<11} {megabytes:6.2f} {m['save']:8.1f} {m['manifest']:12.1f} "
              f"{row['manifest_share_of_save']:6.0%} {m['load']:8.1f} {m['verify']:10.1f} "
              f"{row['verify_share_of_load']:6.0%} {row['hash_megabytes_per_s']:10.0f}")
    result["headline"] = {f"{kind}_{name}_ms": round(row[f"{name}_ms"], 2)
                          for kind, row in result["kinds"].items() for name in ("manifest", "verify")}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
