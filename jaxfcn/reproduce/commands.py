"""CLI: ``jaxfcn reproduce`` — run the paper's grid and write the report."""
from __future__ import annotations

import os

from jaxfcn.configs import BUILTIN_CONFIG_DIR as CONFIG_DIR  # shipped inside the package
from jaxfcn.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="run the paper's experiment grid and write report.md with the claims table",
        description="Source pretraining, target grid (sizes × regimes × seeds), evaluation, CKA and filter "
                    "analysis, then OUT/report.md, OUT/results.json and PNG figures. Re-running resumes.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="pipeline smoke test for 2 CPU cores (≤ 10 min); its verdicts are not a finding")
    mode.add_argument("--standard", action="store_true",
                      help="the default grid: the study of record, ≤ 90 min on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help="the full grid (meant for a GPU)")
    p.add_argument("--out", required=True, help="study folder (created; re-run to resume)")
    p.add_argument("--config", help="grid config file (default: configs/reproduce_standard.py, or _quick.py / "
                                     "_full.py with --quick / --full)")
    p.add_argument("--source", metavar="TASK|PATH", help="source task: built-in name or MSD/nnU-Net folder")
    p.add_argument("--targets", metavar="TASK|PATH", nargs="+", help="target tasks (built-in names or folders)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set study.seeds=5")
    p.set_defaults(func=run)


def run(args) -> int:
    from jaxfcn.config import load_config

    grid = "full" if args.full else "quick" if args.quick else "standard"
    path = args.config or os.path.join(CONFIG_DIR, f"reproduce_{grid}.py")
    config = load_config(path, args.overrides)
    if args.source:
        config.study.source = args.source
    if args.targets:
        config.study.targets = tuple(args.targets)
    if len(config.study.targets) < 1:
        raise UserError("--targets: at least one target task is needed")
    from jaxfcn.reproduce.study import run_study, verdict_line

    results = run_study(config, args.out)
    print(f"report: {os.path.join(args.out, 'report.md')}")
    print(verdict_line(results["claims"]))
    return 0
