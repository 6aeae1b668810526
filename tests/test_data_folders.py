"""MSD and nnU-Net folders written from the real built-in volumes: reading, splits, orientation round trip,
prediction restore, and ``jaxfcn data check`` (one test per defect)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
from nibabel import orientations as ornts
import numpy as np
import pytest

from jaxfcn.config import base_config
from jaxfcn.data import load_volume_for_prediction, open_dataset
from jaxfcn.data.check import check_folder
from jaxfcn.data.folders import read_folder_spec, split_cases
from jaxfcn.data.volume import canonical_of
from jaxfcn.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return {"msd": data_fixtures.write_msd(root / "msd"), "nnunet": data_fixtures.write_nnunet(root / "nnunet")}


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory):
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)) as root:
        yield root


def tiny(task, **changes):
    c = base_config().data
    c.task = str(task)
    c.spacing = 6.0
    c.slice_shape = (32, 32)
    c.patch_shape = (16, 16, 16)
    c.num_folds = 2
    for key, value in changes.items():
        c[key] = value
    return c


def test_msd_multichannel_opens(folders, prepared_cache):
    dataset = open_dataset(tiny(folders["msd"]), depth=2, progress=False)
    assert dataset.info.in_channels == 2 and dataset.info.modality == ("T1", "T1_other_template")
    assert dataset.info.class_names == data_fixtures.LABEL_NAMES
    batch = next(dataset.batches(4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 2)
    for case in dataset.cases("val") + dataset.cases("test"):
        assert case.image.shape[-1] == 2 and case.image.shape[:3] == case.label.shape


def test_nnunet_noncontiguous_labels_and_folds(folders, prepared_cache):
    spec = read_folder_spec(folders["nnunet"])
    assert spec.format == "nnunet" and spec.label_values == (0, 1, 2, 4, 5, 7)
    assert spec.class_names[-1] == "cerebellum"
    splits = [split_cases(spec, fold, 2) for fold in range(2)]
    for split in splits:
        ids = {k: {c.case_id for c in v} for k, v in split.items()}
        assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
        assert len(ids["test"]) == 1
    assert {c.case_id for c in splits[0]["test"]} == {c.case_id for c in splits[1]["test"]}
    assert {c.case_id for c in splits[0]["val"]} | {c.case_id for c in splits[1]["val"]} == \
        {c.case_id for c in spec.cases} - {c.case_id for c in splits[0]["test"]}

    dataset = open_dataset(tiny(folders["nnunet"]), depth=2, progress=False)
    labels = np.stack([dataset.sources["train"][i]["label"] for i in range(dataset.num_examples("train"))])
    assert labels.max() == 5  # value 7 became class 5
    with pytest.raises(UserError, match="data.fold"):
        open_dataset(tiny(folders["nnunet"], fold=2), depth=2, progress=False)

    # data.train_size counts cases (subjects), as for the built-in tasks: one case brings all its slices.
    assert dataset.num_cases("train") == 2 and set(dataset.case_ids["train"]) == ids_train(splits[0])
    one = open_dataset(tiny(folders["nnunet"], train_size=1), depth=2, progress=False)
    (kept,) = set(one.example_case_ids("train"))
    assert one.num_examples("train") == dataset.example_case_ids("train").count(kept)


def ids_train(split) -> set:
    return {c.case_id for c in split["train"]}


@pytest.mark.parametrize("case_index", [1, 2])  # first axis reversed; axes permuted (L-I-A)
def test_orientation_round_trip_is_exact(folders, case_index):
    path = folders["msd"] / "labelsTr" / f"case_00{case_index}.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    assert nib.aff2axcodes(image.affine) != ("R", "A", "S")
    canonical = canonical_of(image.affine, data.shape)
    on_grid = canonical.to_canonical(data)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    # Same world position for every voxel: canonical voxel ↔ disk voxel through the two affines.
    ijk = np.argwhere(on_grid > 0)[:50]
    world = nib.affines.apply_affine(canonical.affine, ijk)
    disk = np.round(nib.affines.apply_affine(np.linalg.inv(image.affine), world)).astype(int)
    np.testing.assert_array_equal(data[tuple(disk.T)], on_grid[tuple(ijk.T)])
    back = canonical.from_canonical(on_grid)
    np.testing.assert_array_equal(back, data)
    # And the affine: undoing the reorientation on the canonical affine gives the file's affine back exactly.
    undo = ornts.ornt_transform(ornts.axcodes2ornt("RAS"), ornts.io_orientation(image.affine))
    np.testing.assert_array_equal(canonical.affine @ ornts.inv_ornt_aff(undo, on_grid.shape), image.affine)


def test_prediction_restore_gives_input_grid(folders):
    config = tiny(folders["nnunet"], spacing=0.0)
    for case_id in ("case_001", "case_002"):
        image_path = folders["nnunet"] / "imagesTr" / f"{case_id}_0000.nii.gz"
        label_path = folders["nnunet"] / "labelsTr" / f"{case_id}.nii.gz"
        source, truth = nib.load(str(image_path)), np.asarray(nib.load(str(label_path)).dataobj)
        image, restore = load_volume_for_prediction(image_path, config, depth=2)
        # A "prediction" that is the true label carried to the prepared grid the same way as the image.
        from jaxfcn.data.preprocess import preprocess_case

        classes = np.searchsorted([0, 1, 2, 4, 5, 7], truth)  # dataset.json values → class indices
        case, _ = preprocess_case("x", np.asarray(source.dataobj, np.float32)[..., None], source.affine, classes, 0.0,
                                  "MRI", (0, 1), 4)
        assert case.image.shape == image.shape
        np.testing.assert_array_equal(case.image, image)
        out = restore(case.label)
        assert out.shape == source.shape
        np.testing.assert_array_equal(out.affine, source.affine)
        np.testing.assert_array_equal(np.asarray(out.dataobj), truth)  # values, 7 included
        assert (truth == 7).any()


# ---------------------------------------------------------------- integrity check: one test per defect

def _copy(folders, kind, tmp_path) -> Path:
    return Path(shutil.copytree(folders[kind], tmp_path / kind))


def _rewrite(path: Path, data=None, affine=None, dtype=None):
    image = nib.load(str(path))
    data = np.asarray(image.dataobj) if data is None else data
    out = nib.Nifti1Image(data.astype(dtype or data.dtype), image.affine if affine is None else affine)
    nib.save(out, str(path))


def _problems_naming(folder: Path, filename: str, words: str) -> list[str]:
    problems, _ = check_folder(folder)
    hits = [p for p in problems if filename in p and words in p]
    assert hits, f"no problem naming {filename} with '{words}' in {problems}"
    return problems


def test_check_passes_clean_folders(folders):
    for folder in folders.values():
        problems, summary = check_folder(folder)
        assert problems == [] and "OK" in summary


def test_check_truncated_nifti(folders, tmp_path):
    folder = _copy(folders, "msd", tmp_path)
    path = folder / "imagesTr" / "case_002.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _problems_naming(folder, "case_002.nii.gz", "truncated or unreadable")


def test_check_unreadable_nifti(folders, tmp_path):
    folder = _copy(folders, "nnunet", tmp_path)
    (folder / "labelsTr" / "case_003.nii.gz").write_bytes(b"this is not a nifti file")
    _problems_naming(folder, "case_003.nii.gz", "not a readable NIfTI")


def test_check_shape_mismatch(folders, tmp_path):
    folder = _copy(folders, "nnunet", tmp_path)
    path = folder / "labelsTr" / "case_001.nii.gz"
    _rewrite(path, np.asarray(nib.load(str(path)).dataobj)[:-2])
    _problems_naming(folder, "labelsTr/case_001.nii.gz", "shape")


def test_check_affine_mismatch(folders, tmp_path):
    folder = _copy(folders, "msd", tmp_path)
    path = folder / "labelsTr" / "case_000.nii.gz"
    shifted = nib.load(str(path)).affine.copy()
    shifted[0, 3] += 3.0
    _rewrite(path, affine=shifted)
    _problems_naming(folder, "labelsTr/case_000.nii.gz", "affine differs")


def test_check_nan_and_inf(folders, tmp_path):
    folder = _copy(folders, "nnunet", tmp_path)
    path = folder / "imagesTr" / "case_004_0000.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[3, 4, 5], data[6, 7, 8] = np.nan, np.inf
    _rewrite(path, data)
    _problems_naming(folder, "case_004_0000.nii.gz", "2 NaN or infinite")


def test_check_undeclared_label_value(folders, tmp_path):
    folder = _copy(folders, "msd", tmp_path)
    path = folder / "labelsTr" / "case_001.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[10, 10, 10] = 9
    _rewrite(path, data)
    _problems_naming(folder, "case_001.nii.gz", "label values [9] not declared")


def test_check_listed_file_missing(folders, tmp_path):
    folder = _copy(folders, "msd", tmp_path)
    (folder / "imagesTr" / "case_003.nii.gz").unlink()
    _problems_naming(folder, "imagesTr/case_003.nii.gz", "missing")


def test_check_malformed_dataset_json(folders, tmp_path):
    folder = _copy(folders, "msd", tmp_path)
    (folder / "dataset.json").write_text('{"modality": {"0": "MRI"}, "labels": ')
    _problems_naming(folder, "dataset.json", "not valid JSON")
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}, "training": "imagesTr"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    _problems_naming(folder, "dataset.json", "'training' must be")


def test_check_4d_where_3d_expected(folders, tmp_path):
    folder = _copy(folders, "nnunet", tmp_path)
    path = folder / "labelsTr" / "case_000.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj)
    _rewrite(path, np.stack([data, data], axis=-1))
    _problems_naming(folder, "labelsTr/case_000.nii.gz", "where a 3D volume is expected")


def test_check_cli_exit_codes_and_show(folders, tmp_path, capsys):
    from jaxfcn.cli import main

    assert main(["data", "check", str(folders["nnunet"])]) == 0
    assert "OK" in capsys.readouterr().out
    broken = _copy(folders, "nnunet", tmp_path)
    (broken / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (broken / "labelsTr" / "case_002.nii.gz").write_bytes(b"garbage")
    assert main(["data", "check", str(broken)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and any("case_001_0000.nii.gz" in l for l in lines)
    # A defect met while preparing is one clear error line naming the file (exit code 2, no traceback).
    code = main(["data", "prepare", str(broken), "--quiet", "--set", "data.num_folds=2"])
    assert code == 2 and "case_00" in capsys.readouterr().err

    out = tmp_path / "montage.png"
    assert main(["data", "show", str(folders["msd"]), "--out", str(out), "--cases", "2",
                 "--set", "data.spacing=0"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ct_modality_uses_window(folders, prepared_cache, tmp_path):
    folder = _copy(folders, "nnunet", tmp_path)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    dataset = open_dataset(tiny(folder, ct_window=(0.0, 100.0)), depth=2, progress=False)
    image = dataset.cases("test")[0].image
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert (image == 1.0).mean() > 0.05  # bright tissue above the window saturates at +1
