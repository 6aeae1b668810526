"""Generated subjects (jaxfcn.data.subjects), checked from the plain NIfTI files of `jaxfcn data export`.

Distinct but plausible (8 subjects of one template, `subcortical`, 4 mm): pairwise mean foreground Dice in
[0.5, 0.92], each structure's volume within 0.7–1.4× the real template's, every deformation's minimum
Jacobian determinant > 0. Deterministic: a second process exporting the same subjects writes bitwise
identical voxels. Bad input: unknown task, --subjects 0 and a non-empty --out fail in one line, writing
nothing.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.data import builtin, subjects

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402

FLAGS = ["--set", "data.spacing=4.0", "--set", "data.test_subjects=8", "--quiet"]
NUM_CLASSES = len(builtin.TASKS["subcortical"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "subcortical"
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)) as cache:
        assert main(["data", "export", "subcortical", "--subjects", "2", "--out", str(out)] + FLAGS) == 0
        yield out, cache


def volumes(root: Path, folder: str) -> dict[str, np.ndarray]:
    return {p.name.split(".nii")[0]: np.asarray(nib.load(str(p)).dataobj) for p in sorted((root / folder).iterdir())}


def foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the foreground classes of 2|A∩B| / (|A| + |B|)."""
    return float(np.mean([2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c))
                          for c in range(1, NUM_CLASSES)]))


def test_export_is_a_valid_folder(exported, capsys):
    out, _ = exported
    assert main(["data", "check", str(out)]) == 0
    assert "OK: MSD dataset 'jaxfcn_subcortical', 2 labelled cases + 9 unlabelled" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {str(i): n for i, n in enumerate(builtin.TASKS["subcortical"])}
    assert [Path(e["image"]).name for e in meta["training"]] == ["sym09a_s10000.nii.gz", "sym09a_s10001.nii.gz"]
    assert Path(meta["test"][0]).name == "asym09c_real.nii.gz"


def test_subjects_are_distinct_but_plausible(exported):
    out, _ = exported
    labels = volumes(out, "labelsTs")
    real = labels.pop("asym09c_real")
    assert len(labels) == 8 and all(not subjects.is_real_case(c) for c in labels)
    assert len({v.shape for v in labels.values()} | {real.shape}) == 1  # one grid per template
    pairwise = [foreground_dice(a, b) for a, b in itertools.combinations(labels.values(), 2)]
    assert 0.5 <= np.mean(pairwise) <= 0.92, np.mean(pairwise)
    for label in labels.values():
        ratios = [np.sum(label == c) / np.sum(real == c) for c in range(1, NUM_CLASSES)]
        assert 0.7 <= min(ratios) and max(ratios) <= 1.4, ratios
    records = json.loads((out / "subjects.json").read_text())
    for case_id in labels:
        assert records[case_id]["min_jacobian"] > 0
        assert 1.5 < records[case_id]["warp_rms_mm"] < 3.5
    # Images: background exactly 0 where the label is background outside the brain; subjects differ.
    images = volumes(out, "imagesTs")
    assert images["asym09c_real"].dtype == np.float32 and (images["asym09c_real"] >= 0).all()
    assert not np.array_equal(images["asym09c_s10000"], images["asym09c_s10001"])


def test_determinism_across_processes(exported, tmp_path):
    out, cache = exported
    again = tmp_path / "again"
    env = dict(os.environ, JAXFCN_CACHE=str(cache))
    subprocess.run([sys.executable, "-m", "jaxfcn", "data", "export", "subcortical", "--subjects", "2",
                    "--out", str(again)] + FLAGS, check=True, env=env, capture_output=True)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        first, second = volumes(out, folder), volumes(again, folder)
        assert first.keys() == second.keys()
        for case_id in first:
            assert first[case_id].tobytes() == second[case_id].tobytes(), (folder, case_id)


def test_bad_input_writes_nothing(exported, tmp_path, capsys):
    out, _ = exported
    target = tmp_path / "new"
    for argv, text in ((["no_such_task", "--subjects", "2", "--out", str(target)], "not a built-in task"),
                       (["subcortical", "--subjects", "0", "--out", str(target)], "--subjects 0"),
                       (["subcortical", "--subjects", "2", "--out", str(out)], "not an empty folder")):
        assert main(["data", "export"] + argv + FLAGS) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0]
        assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]


def test_real_case_is_the_template_itself():
    assert subjects.case_id("asym09c", None) == "asym09c_real" and subjects.is_real_case("asym09c_real")
    assert subjects.case_id("asym09c", 3) == "asym09c_s0003" and not subjects.is_real_case("asym09c_s0003")
    assert subjects.case_template("fsl_s10002") == "fsl"


def test_real_case_matches_an_independent_resampling(exported):
    """The unwarped case equals the template resampled by scipy (jaxfcn.data.volume) onto the same grid:
    trilinear, anti-aliased T1 and nearest-neighbour labels inside the brain."""
    from jaxfcn.data.volume import resample, resample_image

    case = builtin.template_case("subcortical", "asym09c", 4.0)
    t1, t1_affine = builtin._template_t1("asym09c")
    reference = resample_image(t1[..., None], t1_affine, case.affine, case.label.shape)[..., 0]
    both = (reference != 0) & (case.image[..., 0] != 0)
    assert both.sum() > 0.98 * max((reference != 0).sum(), (case.image[..., 0] != 0).sum())
    np.testing.assert_allclose(case.image[..., 0][both], reference[both], rtol=1e-3, atol=1e-3 * reference.max())
    atlas, atlas_affine = builtin._label_map("subcortical")
    expected = resample(np.asarray(atlas), atlas_affine, case.affine, case.label.shape, order=0)
    assert np.mean(case.label[both] == expected[both]) > 0.999
