"""The study on MSD task folders: ``jaxfcn reproduce --config configs/reproduce_msd.py`` (and the 3D variant)
end to end on MSD-shaped fixtures, with a tiny model and a few steps.

The fixtures are NIfTI folders written here with nibabel from the real built-in volumes (5 cases each, in
three on-disk orientations): a four-contrast ``Task01_BrainTumour`` whose channel 1 is the T1 (the others are
other functions of it), a one-channel ``Task04_Hippocampus`` and a two-channel ``Task05_Prostate``, with the
MSD tasks' label names. ``$JAXFCN_MSD_DIR`` points at them, as after ``jaxfcn data fetch msd TASK``.

Checked: report.md and results.json exist; every run trained on the subjects it says (its training set has
exactly ``train_size`` distinct cases, all of the source's for a source run) and on the channel
``data.channels`` picks for its task; picking channel 1 of the four-contrast folder prepares the same examples
as a folder holding that contrast alone, for training and for prediction; a missing task folder, a malformed
one, a channel the folder lacks, a source/target channel mismatch and a training-set size larger than a
target's training cases each stop the study before anything is written, in one line naming it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.config import load_config
from jaxfcn.data import builtin, load_volume_for_prediction, open_dataset, subset_seed
from jaxfcn.data.msd_fetch import DIR_ENV
from jaxfcn.train.workdir import load_dataset_info, load_run_config

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "configs"
SOURCE, HIPPOCAMPUS, PROSTATE = "Task01_BrainTumour", "Task04_Hippocampus", "Task05_Prostate"
# Built-in 'structures' classes (1 grey matter, 2 white matter, 3 cerebellum, 4 brain stem, 5 ventricles/CSF)
# → each task's classes, named as MSD names them.
TASK_LABELS = {
    SOURCE: ({"1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}, {1: 1, 2: 2, 5: 3}),
    HIPPOCAMPUS: ({"1": "Anterior", "2": "Posterior"}, {3: 1, 4: 2}),
    PROSTATE: ({"1": "PZ", "2": "TZ"}, {1: 1, 2: 2}),
}
# Tiny everything: 2 levels of base width 4, 32² slices at 6 mm, 16³ patches, a few steps.
TINY = ["model.depth=2", "model.base_width=4", "model.norm_groups=2", "data.spacing=6.0",
        "data.slice_shape=(32, 32)", "data.patch_shape=(16, 16, 16)", "data.num_folds=2", "train.batch_size=4",
        "train.eval_every=2", "train.log_every=2", "train.checkpoint_every=100", "train.val_batches=1",
        "train.snapshot_steps=log:2", "train.learning_rate=0.003", "study.seeds=2", "study.source_steps=6",
        "study.target_steps=4", "study.probe_images=6", "study.cka_permutations=20",
        "study.regimes=('random', 'transfer')"]


# Each contrast is a function of the T1 (zero outside the head, as MRI is after skull stripping).
CONTRASTS = {"T1w": lambda t1: t1, "MRI": lambda t1: t1, "T2": lambda t1: t1,
             "FLAIR": lambda t1: np.sqrt(np.abs(t1)), "t1gd": lambda t1: t1 ** 2,
             "T2w": lambda t1: np.where(t1 != 0, t1.max() - t1, 0), "ADC": lambda t1: np.where(t1 != 0, t1.max() - t1, 0)}


def write_task(root: Path, task: str, modality: tuple[str, ...], labels_of: str | None = None) -> Path:
    """An MSD folder ``root/task``: 5 cases, one contrast per ``modality`` name (one 3D or 4D file per case),
    the labels of ``labels_of`` (default ``task``)."""
    names, mapping = TASK_LABELS[labels_of or task]
    folder = root / task
    training = []
    for case_id, template, spacing, how, crop in data_fixtures.CASES:
        t1, structures, affine = data_fixtures._case_volumes(template, spacing, crop)
        label = np.zeros_like(structures)
        for value, to in mapping.items():
            label[structures == value] = to
        image = np.stack([CONTRASTS[m](t1) for m in modality], -1) if len(modality) > 1 else t1
        disk_image, disk_affine = data_fixtures.reorient_for_disk(image, affine, how)
        disk_label, _ = data_fixtures.reorient_for_disk(label, affine, how)
        data_fixtures._save(disk_image, disk_affine, folder / "imagesTr" / f"{task}_{case_id}.nii.gz", np.float32)
        data_fixtures._save(disk_label, disk_affine, folder / "labelsTr" / f"{task}_{case_id}.nii.gz", np.uint8)
        training.append({"image": f"./imagesTr/{task}_{case_id}.nii.gz",
                         "label": f"./labelsTr/{task}_{case_id}.nii.gz"})
    meta = {"name": task.split("_", 1)[1], "modality": {str(i): m for i, m in enumerate(modality)},
            "labels": {"0": "background", **names}, "numTraining": len(training), "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    write_task(root, SOURCE, ("FLAIR", "T1w", "t1gd", "T2w"))
    write_task(root, HIPPOCAMPUS, ("MRI",))
    write_task(root, PROSTATE, ("T2", "ADC"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DIR_ENV, str(root))  # where `jaxfcn data fetch msd TASK` would have put them
        with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)):
            yield root


def _reproduce(config: str, out: Path, *args) -> int:
    return main(["reproduce", "--config", str(CONFIGS / config), "--out", str(out), *args,
                 *[a for item in TINY for a in ("--set", item)]])


def _check_runs(results: dict, expected_channels: dict) -> None:
    """Every run trained on ``train_size`` distinct subjects (a source on all its training cases) and on the
    channels its task gets."""
    for record in results["source"] + results["runs"]:
        workdir = Path(record["workdir"])
        assert record["status"] == "ok" and (workdir / "summary.json").is_file(), workdir
        config = load_run_config(str(workdir))
        task = Path(config.data.task).name
        modality = list(load_dataset_info(str(workdir)).modality)  # the channels it was trained on
        assert config.model.in_channels == 1 and modality == expected_channels[task], workdir
        dataset = open_dataset(config.data, depth=config.model.depth, progress=False,
                               subset_seed=subset_seed(config.data, config.train))
        subjects = set(dataset.example_case_ids("train"))
        assert all(s.startswith(task) for s in subjects)
        assert len(subjects) == (record["train_size"] or len(dataset.case_ids["train"])), workdir
        trained = json.loads((workdir / "train_summary.json").read_text())
        assert trained["num_train_examples"] == dataset.num_examples("train"), workdir


def test_msd_study_2d_end_to_end(msd, tmp_path, capsys):
    out = tmp_path / "msd"
    # the source comes from $JAXFCN_MSD_DIR; two of the config's three targets are given as folders
    assert _reproduce("reproduce_msd.py", out, "--targets", str(msd / HIPPOCAMPUS), str(msd / PROSTATE),
                      "--set", "study.train_sizes=(1, 2)") == 0
    assert capsys.readouterr().out.strip().splitlines()[-2] == f"report: {out / 'report.md'}"
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").is_file()
    assert results["design"]["grid"] == "msd" and results["design"]["source"] == SOURCE
    assert results["design"]["targets"] == [HIPPOCAMPUS, PROSTATE]
    assert len(results["source"]) == 2 and len(results["runs"]) == 2 * 2 * 2 * 2
    assert {r["train_size"] for r in results["runs"]} == {1, 2}
    _check_runs(results, {SOURCE: ["T1w"], HIPPOCAMPUS: ["MRI"], PROSTATE: ["T2"]})
    assert "folders " in results["about"]["data"] and str(msd / SOURCE) in results["about"]["data"]


def test_msd_study_3d_smoke(msd, tmp_path):
    out = tmp_path / "msd_3d"
    assert _reproduce("reproduce_msd_3d.py", out, "--targets", str(msd / HIPPOCAMPUS),
                      "--set", "study.train_sizes=(1,)") == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").is_file() and results["design"]["grid"] == "msd_3d"
    assert len(results["runs"]) == 2 * 2
    _check_runs(results, {SOURCE: ["T1w"], HIPPOCAMPUS: ["MRI"]})
    assert load_run_config(results["runs"][0]["workdir"]).model.spatial_dims == 3


def test_channel_one_of_four_prepares_what_a_t1_folder_prepares(msd, tmp_path):
    t1_only = write_task(tmp_path, "Task01_T1only", ("T1w",), labels_of=SOURCE)
    config = load_config(str(CONFIGS / "reproduce_msd.py"), TINY)
    picked, alone = config.data.copy_and_resolve_references(), config.data.copy_and_resolve_references()
    picked.task, alone.task = str(msd / SOURCE), str(t1_only)  # the config picks channel 1 of Task01_BrainTumour
    a, b = (open_dataset(d, depth=2, progress=False) for d in (picked, alone))
    assert a.info.in_channels == b.info.in_channels == 1 and a.info.modality == b.info.modality == ("T1w",)
    indices = np.arange(a.num_examples("train"))
    assert a.num_examples("train") == b.num_examples("train") > 0
    np.testing.assert_array_equal(a.sources["train"].take(indices)["image"], b.sources["train"].take(indices)["image"])
    # and `jaxfcn predict` feeds a model the channel it was trained on
    case = data_fixtures.CASES[2][0]  # stored with permuted axes
    (four, _), (one, _) = (load_volume_for_prediction(folder / "imagesTr" / f"{folder.name}_{case}.nii.gz", d, depth=2)
                           for folder, d in ((msd / SOURCE, picked), (t1_only, alone)))
    assert four.shape[-1] == 1
    np.testing.assert_array_equal(four, one)


def test_a_missing_task_folder_is_named_with_the_command_that_fetches_it(msd, tmp_path, capsys):
    out = tmp_path / "out"
    assert _reproduce("reproduce_msd.py", out) == 2  # the config's Task02_Heart was never fetched
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxfcn: error: study.targets: {msd / 'Task02_Heart'}: no such folder, and not a built-in task "
                   f"({', '.join(builtin.TASKS)}); fetch it with `jaxfcn data fetch msd Task02_Heart --to {msd}`")
    assert not out.exists()


@pytest.mark.parametrize("setting,message", [
    ("data.channels=", "study: source Task01_BrainTumour gives 4 input channel(s) (FLAIR, T1w, t1gd, T2w) "
                       "but target Task04_Hippocampus gives 1 (MRI); transfer needs the same channels"),
    ("data.channels=Task01_BrainTumour=7", "Task01_BrainTumour/dataset.json has 4 channel(s), indices 0..3"),
    ("data.channels=Task01_BrainTumour=T1w", "'T1w' is not channel indices such as 1 or 0,2"),
    ("data.channels=Task01_BrainTumour", "data.channels='Task01_BrainTumour': 'Task01_BrainTumour' is not channel"),
    ("study.train_sizes=(1, 3)", "study.train_sizes: 3 subjects, but Task04_Hippocampus has 2 training cases "
                                 "(fold 0 of 2); use sizes up to 2, or 0 for all"),
])
def test_bad_settings_stop_the_study_in_one_line_before_anything_is_written(msd, tmp_path, capsys, setting,
                                                                            message):
    out = tmp_path / "out"
    assert _reproduce("reproduce_msd.py", out, "--targets", str(msd / HIPPOCAMPUS), str(msd / PROSTATE),
                      "--set", "study.train_sizes=(1, 2)", "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_folder_without_dataset_json_is_named(msd, tmp_path, capsys):
    broken = tmp_path / HIPPOCAMPUS
    (broken / "imagesTr").mkdir(parents=True)
    out = tmp_path / "out"
    assert _reproduce("reproduce_msd.py", out, "--targets", str(broken)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxfcn: error: study.targets: {broken / 'dataset.json'}: missing (an MSD or nnU-Net folder "
                   f"needs a dataset.json); fetch it with `jaxfcn data fetch msd {HIPPOCAMPUS} --to {tmp_path}`")
    assert not out.exists()
