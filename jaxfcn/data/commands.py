"""``jaxfcn data list|prepare|check|show|export|fetch``: inspect, prepare and verify datasets from the command line.

Examples::

    jaxfcn data list                                   # built-in tasks, classes, example counts
    jaxfcn data prepare subcortical --set data.spacing=1.5
    jaxfcn data check /data/Task04_Hippocampus         # exit 1 and one line per problem if any
    jaxfcn data show tissue --out tissue.png           # the real template and three of its subjects
    jaxfcn data export subcortical --subjects 8 --out /data/jaxfcn_subcortical
    jaxfcn data fetch msd Task04_Hippocampus --to /data   # download, verify, unpack, check
"""
from __future__ import annotations

import os
import sys


def _config(args):
    """The experiment config (``--config`` or the base config) with ``--set`` overrides and the task."""
    from jaxfcn.config import apply_overrides, base_config, load_config

    config = load_config(args.config, args.set) if args.config else base_config()
    if not args.config:
        apply_overrides(config, args.set)
    if getattr(args, "task", None):
        config.data.task = args.task
    return config


def _add_config_flags(parser) -> None:
    parser.add_argument("--config", help="experiment config file (default: the base config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.spacing=1.5 (repeatable)")


def _counts(dataset) -> str:
    from jaxfcn.data.subjects import is_real_case

    real = sum(is_real_case(c) for c in dataset.case_ids["test"])
    cases = ", ".join(f"{split} {dataset.num_cases(split)}" for split in ("train", "val", "test"))
    examples = ", ".join(f"{split} {dataset.num_examples(split)}" for split in ("train", "val", "test"))
    return f"subjects {cases}{f' ({real} real)' if real else ''}; examples {examples}"


def cmd_list(args) -> int:
    from jaxfcn.data import builtin, open_dataset

    config = _config(args)
    shape = config.data.slice_shape if config.data.dims == 2 else config.data.patch_shape
    print(f"built-in tasks ({config.data.dims}D, spacing {config.data.spacing} mm, examples "
          f"{'x'.join(map(str, shape))}, split '{config.data.split}'):")
    for task in builtin.TASKS:
        config.data.task = task
        dataset = open_dataset(config.data, depth=config.model.depth, progress=not args.quiet)
        names = ", ".join(dataset.info.class_names[1:])
        print(f"  {task:<20} {dataset.info.num_classes} classes (background, {names}); {_counts(dataset)}"
              f"  # {builtin.TASK_DESCRIPTION[task]}")
    return 0


def cmd_prepare(args) -> int:
    from jaxfcn.data import open_dataset, prepared, recipe_for

    config = _config(args)
    recipe = recipe_for(config.data, config.model.depth)
    directory = prepared.prepare(recipe, config.data, config.model.depth, progress=not args.quiet)
    dataset = open_dataset(config.data, depth=config.model.depth, progress=False)
    print(f"{recipe.name}: {dataset.info.num_classes} classes, {dataset.info.in_channels} channel(s), examples "
          f"{'x'.join(map(str, dataset.info.example_shape))}; {_counts(dataset)}; cached in {directory}")
    return 0


def _report_check(path) -> int:
    """Print ``jaxfcn data check``'s lines for ``path``; 1 if there are problems."""
    from jaxfcn.data.check import check_folder

    problems, summary = check_folder(path)
    for line in problems:
        print(line)
    if problems:
        print(f"{path}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_check(args) -> int:
    return _report_check(args.path)


def cmd_fetch_msd(args) -> int:
    from jaxfcn.data.msd_fetch import fetch_msd, resolve_task, task_folder

    already = os.path.isfile(os.path.join(task_folder(args.task, args.to), "dataset.json"))
    folder = fetch_msd(args.task, args.to, mirror=args.mirror, md5=args.md5, keep_archive=args.keep_archive,
                       progress=not args.quiet)
    print(f"{resolve_task(args.task)}: {'already in' if already else 'fetched, MD5 verified, unpacked into'} "
          f"{folder}")
    return _report_check(folder)


def cmd_show(args) -> int:
    from jaxfcn.data import builtin
    from jaxfcn.plots.montage import write_montage

    import os

    from jaxfcn.errors import UserError

    if os.path.dirname(os.path.abspath(args.out)) and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"--out {args.out}: folder {os.path.dirname(args.out)} does not exist")
    config = _config(args)
    data = config.data
    multiple = 2 ** config.model.depth
    if args.cases < 1:
        raise UserError(f"--cases {args.cases}: must be at least 1")
    if builtin.is_builtin(data.task):
        from jaxfcn.data.dataset import Case
        from jaxfcn.data.preprocess import zscore_nonzero

        # The real training template, then its first subjects, all on one grid: rows differ only by subject.
        (template,) = builtin.TEMPLATE_SPLIT["train"]
        indices = [None] + builtin.subject_indices(data.task, max(1, args.cases - 1))
        maker = builtin.generator(data.task, template, float(data.spacing), builtin.subject_settings(data))
        cases = []
        for subject in maker.render(indices):
            case = builtin.subject_case(subject, float(data.spacing))
            cases.append(Case(case.case_id, zscore_nonzero(case.image), case.label, case.affine, case.spacing))
        class_names = builtin.TASKS[data.task]
    else:
        from jaxfcn.data.folders import load_case, read_folder_spec
        from jaxfcn.data.predict import modality_for
        from jaxfcn.data.preprocess import preprocess_case

        spec = read_folder_spec(data.task)
        cases = []
        for files in spec.cases[:args.cases]:
            image, affine, label = load_case(spec, files)
            cases.append(preprocess_case(files.case_id, image, affine, label, float(data.spacing),
                                         modality_for(data), data.ct_window, multiple)[0])
        class_names = spec.class_names
    write_montage(cases, class_names, args.out, title=f"{data.task} (spacing {data.spacing} mm)")
    print(f"wrote {args.out}: {len(cases)} case(s) x 3 orientations")
    return 0


def cmd_export(args) -> int:
    from jaxfcn.data.export import export_subjects

    config = _config(args)
    meta = export_subjects(args.task, args.subjects, args.out, config.data, progress=not args.quiet)
    print(f"wrote {args.out}: {meta['numTraining']} training subjects (imagesTr, labelsTr) and "
          f"{meta['numTest']} test cases (imagesTs, labelsTs; the real held-out template first) at "
          f"{config.data.spacing} mm; check it with `jaxfcn data check {args.out}`")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="list, prepare, check, show, export and fetch datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="built-in tasks with class names and example counts (prepares if needed)")
    _add_config_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("prepare", help="materialise the prepared cache of a built-in task or a folder")
    p.add_argument("task", metavar="NAME|PATH", help="built-in task (see `jaxfcn data list`) or folder")
    _add_config_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("check", help="integrity check of an MSD or nnU-Net folder (exit 1 on any problem)")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_check)

    fetch = sub.add_parser("fetch", help="download a public dataset (verified, resumable) and check it")
    sources = fetch.add_subparsers(dest="fetch_source", metavar="SOURCE")
    sources.required = True
    p = sources.add_parser("msd", help="a Medical Segmentation Decathlon task (the archives MONAI uses)",
                           description="Download TASK's archive (resuming a cut download), verify its pinned "
                                       "MD5, unpack it into DIR/TASK atomically and run `jaxfcn data check`.")
    p.add_argument("task", metavar="TASK", help="Task01_BrainTumour … Task10_Colon, or its number (4, Task04)")
    p.add_argument("--to", metavar="DIR", help="parent folder (default: $JAXFCN_MSD_DIR, else $JAXFCN_CACHE/msd)")
    p.add_argument("--mirror", metavar="URL|DIR", help="base URL or folder holding TASK.tar (default: "
                                                      "$JAXFCN_MSD_MIRROR, else the AWS open-data mirror)")
    p.add_argument("--md5", metavar="HEX", help="expected MD5 of the archive instead of the pinned one "
                                                "(a mirror serving its own archive)")
    p.add_argument("--keep-archive", action="store_true", help="keep DIR/TASK.tar after unpacking")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch_msd)

    p = sub.add_parser("export", help="write built-in subjects as an MSD / nnU-Net folder (NIfTI)")
    p.add_argument("task", metavar="NAME", help="built-in task")
    p.add_argument("--subjects", type=int, required=True, metavar="N", help="training subjects to write")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder")
    _add_config_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("show", help="PNG montage of slices with label overlays")
    p.add_argument("task", metavar="NAME|PATH")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--cases", type=int, default=4,
                   help="rows: built-in tasks show the real training template and its first subjects; "
                        "folders their first cases (default 4)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_show)
