"""CLI: ``jaxfcn train``, ``jaxfcn evaluate``, ``jaxfcn predict``.

Heavy modules (jax, orbax, tfds) are imported inside the handlers so ``jaxfcn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from jaxfcn.errors import UserError

TRAIN_EPILOG = """\
regimes (the paper's three):
  jaxfcn train --config configs/tissue_2d.py --workdir runs/tissue
  jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_random
  jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_transfer --init runs/tissue
  jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_frozen --freeze encoder

many seeds in one program (runs/sub_seeds/seed_0 … seed_7, each an ordinary workdir):
  jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_seeds --seeds 8 --seed 0

Re-running the same command resumes the run from its latest checkpoint that verifies; a workdir that
belongs to another config, or that another jaxfcn process is writing, is refused.
"""


def _step_arg(text: str):
    if text in ("best", "latest"):
        return None if text == "latest" else "best"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number, 'best' or 'latest', got '{text}'") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a U-Net (random init, transfer with --init, frozen parts with --freeze)",
        description="Train one model in WORKDIR: validation, checkpoints, snapshots, resume on re-run.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment file, e.g. configs/quick.py")
    p.add_argument("--workdir", required=True, help="output directory (created; re-run to resume)")
    p.add_argument("--data", metavar="TASK|PATH",
                   help="built-in task (tissue, subcortical, structures) or MSD / nnU-Net folder (sets data.task)")
    p.add_argument("--init", metavar="random|WORKDIR",
                   help="'random' or a trained source run whose encoder/decoder are transferred (sets train.init)")
    p.add_argument("--freeze", metavar="PART[,PART]",
                   help="parts kept at their initial values: encoder, decoder, head, or 'none' (sets train.freeze)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_program_arguments(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "evaluate", help="per-case Dice and HD95 of a trained run → WORKDIR/summary.json",
        description="Segment every whole case of a split with a trained run and write nnU-Net-style metrics "
                    "(per case, per class, means; Dice and HD95 in mm, background excluded).")
    p.add_argument("--workdir", required=True, help="a trained run")
    p.add_argument("--data", metavar="TASK|PATH", help="evaluate on another dataset with the same classes")
    p.add_argument("--split", default="test", choices=("val", "test"), help="default: test")
    p.add_argument("--step", type=_step_arg, default=None,
                   help="params to use: a step, 'best' (best validation checkpoint) or 'latest' (default)")
    p.add_argument("--overlap", type=float, default=None, help="3D sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--output", help="summary path (default: WORKDIR/summary.json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "predict", help="segment a NIfTI file with a trained run",
        description="Write a label volume with the input's exact shape, voxel order and affine. 2D models go "
                    "slice by slice; 3D models use a Gaussian-weighted sliding window.")
    p.add_argument("--workdir", required=True, help="a trained run")
    p.add_argument("--input", required=True, help="image .nii / .nii.gz (3D, or 4D with channels last)")
    p.add_argument("--output", required=True, help="label volume to write (.nii / .nii.gz)")
    p.add_argument("--step", type=_step_arg, default=None, help="a step, 'best' or 'latest' (default)")
    p.add_argument("--overlap", type=float, default=0.5, help="3D sliding-window overlap in [0, 1)")
    p.set_defaults(func=_predict)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def add_program_arguments(p) -> None:
    """Seeds, devices and processes of ``jaxfcn train`` (see jaxfcn.train.multiseed / parallel)."""
    g = p.add_argument_group("seeds and devices")
    g.add_argument("--seed", type=int, metavar="S", help="the (first) seed (sets train.seed)")
    g.add_argument("--seeds", type=_positive_int, metavar="K",
                   help="train seeds S..S+K-1 together in one program, in WORKDIR/seed_<n>/ (sets train.num_seeds)")
    g.add_argument("--seed-strategy", metavar="NAME",
                   help="how K seeds share a step: auto (CPU: unrolled; else vmap), vmap, per_seed, im2col, unrolled, map "
                        "(sets train.seed_strategy)")
    from jaxfcn.train.parallel import PARALLEL_MODES

    g.add_argument("--parallel", choices=PARALLEL_MODES,
                   help="data parallelism over devices; auto = sharding when >1 device (sets train.parallel)")
    g.add_argument("--devices", type=_positive_int, metavar="N", help="use the first N devices (default: all)")
    g = p.add_argument_group("multi-host (one process per host; see docs/multihost.md)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=_positive_int, metavar="N", help="number of processes (or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (or JAX_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="let JAX detect the cluster (Cloud TPU pod slice, SLURM, Open MPI)")


def train_config_from_args(args):
    """The config of ``jaxfcn train``: file, then ``--set``, then the explicit flags (which win)."""
    from jaxfcn.config import apply_overrides, load_config

    config = load_config(args.config, args.overrides)
    flags = []
    if args.data:
        flags.append(f"data.task={args.data}")
    if args.init:
        flags.append(f"train.init={args.init}")
    if args.freeze is not None:
        parts = "" if args.freeze.strip().lower() in ("", "none") else args.freeze
        for part in filter(None, parts.split(",")):
            from jaxfcn.partition import PARTS

            if part.strip() not in PARTS:
                raise UserError(f"--freeze {args.freeze}: unknown part '{part}' ({', '.join(PARTS)})")
        flags.append(f"train.freeze={parts}")
    for flag, key in (("seed", "seed"), ("seeds", "num_seeds"), ("seed_strategy", "seed_strategy"),
                      ("parallel", "parallel")):
        if getattr(args, flag, None) is not None:
            flags.append(f"train.{key}={getattr(args, flag)}")
    apply_overrides(config, flags)
    return config


def _train(args) -> int:
    from jaxfcn.train.parallel import initialize_distributed

    # Before anything else touches JAX (the multi-controller runtime must come first).
    distributed = initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    config = train_config_from_args(args)
    if config.train.num_seeds > 1:
        return _train_seeds(config, args, distributed)
    from jaxfcn.train.loop import train_and_evaluate

    summary = train_and_evaluate(config, args.workdir, progress=not args.no_progress, devices=args.devices)
    best = summary.get("best_val_dice")
    print(f"trained {summary['final_step']} steps: best val Dice "
          f"{'n/a' if best is None else f'{best:.4f}'} (step {summary.get('best_step')}), final "
          f"{'n/a' if summary.get('final_val_dice') is None else format(summary['final_val_dice'], '.4f')}; "
          f"workdir {args.workdir}")
    return 0


def _train_seeds(config, args, distributed: bool) -> int:
    from jaxfcn.train.lock import maybe_hold
    from jaxfcn.train.multiseed import train_seeds

    primary = True
    if distributed:
        import jax

        primary = jax.process_index() == 0
    # The program's directory is locked, the one the command was given (its seed_<n> runs are inside).
    with maybe_hold(args.workdir, primary):
        summaries = train_seeds(config, args.workdir, progress=not args.no_progress, devices=args.devices)
    for s in summaries:
        best = s.get("best_val_dice")
        print(f"{s['workdir']}: {s['final_step']} steps, best val Dice {'n/a' if best is None else f'{best:.4f}'}")
    return 0


def _evaluate(args) -> int:
    from jaxfcn.train.evaluate import evaluate_run

    summary = evaluate_run(args.workdir, split=args.split, data=args.data, step=args.step, overlap=args.overlap,
                           output=args.output, progress=not args.no_progress)
    fg = summary["foreground_mean"]
    dice = "n/a" if fg["Dice"] is None else f"{fg['Dice']:.4f}"
    hd = "n/a" if fg["HD95"] is None else f"{fg['HD95']:.2f} mm"
    print(f"{summary['split']} ({summary['num_cases']} cases, step {summary['step']}): mean Dice {dice}, "
          f"mean HD95 {hd}; per class: " + ", ".join(
              f"{name} {'n/a' if v['Dice'] is None else format(v['Dice'], '.3f')}" for name, v in summary["mean"].items()))
    return 0


def _predict(args) -> int:
    from jaxfcn.train.inference import predict_file

    report = predict_file(args.workdir, args.input, args.output, step=args.step, overlap=args.overlap)
    print(f"wrote {report['output']} {tuple(report['shape'])} (step {report['step']}, classes "
          f"{report['classes_present']})", file=sys.stdout)
    return 0
