"""CLI: ``jaxfcn import-torch``: a PyTorch-trained :class:`~jaxfcn.interop.torch.TorchUNet` as a jaxfcn workdir.

The workdir gets what ``jaxfcn train`` would have written for the same config (``config.json`` resolved
from the dataset, ``dataset_info.json``) and a parameter snapshot at ``--step`` (default ``train.steps``),
plus step 0 when ``--initial-state-dict`` is given, so ``jaxfcn evaluate``, ``predict`` and ``analyze``
(including CKA against jaxfcn-trained runs) work on it unchanged. ``import_torch.json`` records the source.

It is written in a temporary sibling directory and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import os

from jaxfcn.errors import UserError

IMPORT_RECORD = "import_torch.json"

EPILOG = """\
example:
  jaxfcn import-torch --state-dict unet.pt --config configs/quick.py --data subcortical --workdir runs/torch_sub
  jaxfcn evaluate --workdir runs/torch_sub
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-torch", help="make a jaxfcn workdir from a PyTorch TorchUNet state_dict",
        description="Convert a state_dict of jaxfcn.interop.torch.TorchUNet (same config) into a jaxfcn workdir "
                    "that evaluate, predict and analyze accept.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dict", required=True, metavar="PATH", help="torch.save()d state_dict (.pt/.pth)")
    p.add_argument("--config", required=True, help="the experiment file the PyTorch model was built from")
    p.add_argument("--workdir", required=True, help="new workdir (must not exist or be empty)")
    p.add_argument("--data", metavar="TASK|PATH", help="built-in task or MSD / nnU-Net folder (sets data.task)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value (repeatable)")
    p.add_argument("--step", type=int, default=None,
                   help="training step to file the weights under (default: the config's train.steps)")
    p.add_argument("--initial-state-dict", metavar="PATH",
                   help="the model's weights before training, saved as step 0 (enables filter-dynamics analysis)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while preparing the dataset")
    p.set_defaults(func=_import_torch)


def load_state_dict(path: str) -> dict:
    """A state_dict from ``torch.save`` (tensors only: loaded with ``weights_only=True``)."""
    try:
        import torch
    except ImportError:
        raise UserError("import-torch needs PyTorch: pip install 'jaxfcn[torch]'") from None
    if not os.path.isfile(path):
        raise UserError(f"--state-dict {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a corrupt or non-torch file
        raise UserError(f"{path}: not a loadable PyTorch state_dict ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: contains a {type(obj).__name__}, expected a state_dict (dict of tensors)")
    return obj


def import_torch(state_dict_path: str, config, workdir: str, *, step: int | None = None,
                 initial_state_dict_path: str | None = None, dataset=None, progress: bool = True) -> dict:
    """Create ``workdir`` from a TorchUNet state_dict; returns the import record.

    ``config`` is the unresolved experiment config; sizes are resolved from its dataset exactly as
    ``jaxfcn train`` does. ``dataset`` (optional) skips opening the dataset, as in ``train_and_evaluate``.
    """
    import shutil
    import tempfile

    import torch

    from jaxfcn.interop.torch import torch_to_flax_variables
    from jaxfcn.files import write_json_atomic
    from jaxfcn.train import workdir as wd
    from jaxfcn.train.checkpoint import save_snapshot, snapshot_manager
    from jaxfcn.train.integrity import sha256_file
    from jaxfcn.config_checks import check_config, resolve_config
    from jaxfcn.train.loop import open_training_data

    check_config(config)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise UserError(f"--workdir {workdir}: exists and is not an empty directory; choose a new one")
    step = config.train.steps if step is None else step
    if step < 0 or (initial_state_dict_path and step == 0):
        raise UserError(f"--step {step}: must be positive when --initial-state-dict is given, else ≥ 0")
    if dataset is None:
        dataset = open_training_data(config, progress=progress)
    config = resolve_config(config, dataset.info)

    snapshots = {}
    for flag, path, at in (("--state-dict", state_dict_path, step),
                           ("--initial-state-dict", initial_state_dict_path, 0)):
        if path is None:
            continue
        try:
            snapshots[at] = torch_to_flax_variables(load_state_dict(path), config)
        except ValueError as e:
            raise UserError(f"{flag} {path}: {e}") from None

    record = {"state_dict": os.path.abspath(state_dict_path), "sha256": sha256_file(state_dict_path), "step": step,
              "initial_state_dict": initial_state_dict_path and os.path.abspath(initial_state_dict_path),
              "torch_version": torch.__version__}
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(workdir))}.import-")
    try:
        wd.create_workdir(tmp, config, dataset.info)
        manager = snapshot_manager(tmp)
        try:
            for at in sorted(snapshots):
                save_snapshot(manager, at, snapshots[at])
        finally:
            manager.close()
        write_json_atomic(os.path.join(tmp, IMPORT_RECORD), record)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty (checked above); rename cannot replace a directory on every OS
        os.rename(tmp, workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _import_torch(args) -> int:
    from jaxfcn.config import apply_overrides, load_config

    config = load_config(args.config, args.overrides)
    if args.data:
        apply_overrides(config, [f"data.task={args.data}"])
    record = import_torch(args.state_dict, config, args.workdir, step=args.step,
                          initial_state_dict_path=args.initial_state_dict, progress=not args.no_progress)
    print(f"imported {args.state_dict} as step {record['step']} into {args.workdir}")
    return 0
