"""The built-in tasks: pinned files, preparation of generated subjects, cache reuse, splits by template, subsets
that count subjects, no leakage of test templates, augmentation."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfcn.config import base_config
from jaxfcn.data import builtin, fetch, open_dataset, prepared
from jaxfcn.data.subjects import case_template, is_real_case

sys.path.insert(0, str(Path(__file__).parent))
import data_fixtures  # noqa: E402


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A cache for this test session holding only the pinned wheels: everything is prepared from scratch."""
    with data_fixtures.cache_env(data_fixtures.session_cache(tmp_path_factory)) as root:
        yield root


def tiny(task: str = "tissue", **changes):
    c = base_config().data
    c.task = task
    c.spacing = 6.0
    c.slice_shape = (32, 32)
    c.patch_shape = (16, 16, 16)
    c.train_subjects, c.val_subjects, c.test_subjects = 6, 2, 2
    for key, value in changes.items():
        c[key] = value
    return c


def test_pinned_files_are_verified(fresh_cache):
    paths = fetch.builtin_files()
    for pinned in fetch.PINNED_FILES:
        assert fetch.sha256_of(paths[pinned.key]) == pinned.sha256
        assert str(paths[pinned.key]).startswith(str(fresh_cache))


def test_tissue_prepares_once_then_opens_instantly(fresh_cache):
    config = tiny()
    dataset = open_dataset(config, depth=2, progress=False)
    directory = prepared.prepared_dir(builtin.builtin_recipe(config, 2), prepared.example_settings(config, 2))
    stamp = (directory / "meta.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = open_dataset(config, depth=2, progress=False)
    elapsed = time.perf_counter() - start
    assert (directory / "meta.json").stat().st_mtime_ns == stamp  # not rewritten
    assert elapsed < 1.0, f"second open took {elapsed:.2f}s"
    assert again.num_examples("train") == dataset.num_examples("train")
    assert "tensorflow" not in sys.modules

    info = dataset.info
    assert info.class_names == ("background", "grey_matter", "white_matter", "other_intracranial")
    assert info.in_channels == 1 and info.spatial_dims == 2 and info.example_shape == (32, 32)
    batch = next(dataset.batches(4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
    labels = np.stack([dataset.sources["train"][i]["label"] for i in range(dataset.num_examples("train"))])
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # Split by template: warped sym09a / fsl subjects; the test split is the real asym09c plus warped ones.
    assert dataset.case_ids == {"train": [f"sym09a_s{i:04d}" for i in range(6)],
                                "val": ["fsl_s0000", "fsl_s0001"],
                                "test": ["asym09c_real", "asym09c_s0000", "asym09c_s0001"]}
    assert [c.case_id for c in dataset.cases("test")] == dataset.case_ids["test"]
    assert [is_real_case(c) for c in dataset.case_ids["test"]] == [True, False, False]
    for case in dataset.cases("test"):
        assert all(n % 4 == 0 for n in case.image.shape[:3]) and case.image.shape[:3] == case.label.shape
        # z-scored inside the brain: mean 0, std 1 over nonzero voxels
        inside = case.image[..., 0][case.image[..., 0] != 0]
        assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1) < 1e-2
    # Subjects differ from one another and from the real template.
    real, warped = dataset.cases("test")[0], dataset.cases("test")[1]
    assert real.image.shape != warped.image.shape or not np.array_equal(real.label, warped.label)
    # Every slice in all three orientations that holds brain: count them from the cases themselves.
    expected = 0
    for case in dataset.cases("test"):
        content = case.image[..., 0] != 0
        expected += sum(int(content.any(axis=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3))
    assert dataset.num_examples("test") == expected


def test_training_size_counts_subjects_seeded_and_nested(fresh_cache):
    everything = open_dataset(tiny(), depth=2, progress=False)
    small = open_dataset(tiny(train_size=2, subset_seed=3), depth=2, progress=False)
    large = open_dataset(tiny(train_size=4, subset_seed=3), depth=2, progress=False)
    other = open_dataset(tiny(train_size=2, subset_seed=4), depth=2, progress=False)
    assert everything.num_cases("train") == 6 and small.num_cases("train") == 2 and large.num_cases("train") == 4
    assert set(small.example_case_ids("train")) < set(large.example_case_ids("train"))
    assert set(small.example_case_ids("train")) != set(other.example_case_ids("train"))
    # A chosen subject brings every one of its slices.
    per_case = {cid: everything.example_case_ids("train").count(cid) for cid in everything.case_ids["train"]}
    assert small.num_examples("train") == sum(per_case[c] for c in set(small.example_case_ids("train")))
    # The same subset, drawn from an opened dataset (what a K-seed program does per seed).
    again = everything.with_training_subset(2, 3)
    np.testing.assert_array_equal(again.train_indices, small.train_indices)
    batch = next(small.batches(4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 1)


def test_no_voxel_of_a_held_out_template_reaches_training(fresh_cache):
    source = open_dataset(tiny(), depth=2, progress=False)
    target = open_dataset(tiny("subcortical"), depth=2, progress=False)
    for dataset in (source, target):
        # Every training example names its case, and its case is a subject of the training template.
        train_ids = dataset.example_case_ids("train")
        assert len(train_ids) == dataset.num_examples("train")
        assert {case_template(c) for c in train_ids} == {"sym09a"}
        assert {case_template(c) for c in dataset.case_ids["val"]} == {"fsl"}
        assert {case_template(c) for c in dataset.case_ids["test"]} == {"asym09c"}
        # The case index stored in each record agrees with the dataset's table.
        records = dataset.sources["train"]._source
        for i in range(0, dataset.num_examples("train"), 37):
            assert int(records[i]["case"]) == dataset.example_cases["train"][i]
    # Source and target tasks train on different subjects (index offset by role).
    assert not set(source.case_ids["train"]) & set(target.case_ids["train"])
    assert target.case_ids["train"][0] == f"sym09a_s{builtin.ROLE_OFFSET['target']:04d}"
    # All seven structures appear in the target's training examples.
    labels = target.sources["train"].take(np.arange(target.num_examples("train")))["label"]
    assert set(np.unique(labels)) == set(range(8))


def test_bad_subject_settings_are_user_errors(fresh_cache):
    from jaxfcn.errors import UserError

    for changes, text in (({"train_subjects": 0}, "data.train_subjects=0"),
                          ({"val_subjects": 10_001}, "data.val_subjects=10001"),
                          ({"subject_labels": "cubic"}, "data.subject_labels=cubic"),
                          ({"split": "slabs"}, "data.split=slabs")):
        with pytest.raises(UserError, match=text):
            builtin.builtin_recipe(tiny(**changes), 2)


def test_structures_3d_patches(fresh_cache):
    dataset = open_dataset(tiny("structures", dims=3), depth=2, progress=False)
    assert dataset.info.spatial_dims == 3 and dataset.info.example_shape == (16, 16, 16)
    batch = next(dataset.batches(2, seed=1))
    assert batch["image"].shape == (2, 16, 16, 16, 1) and batch["label"].shape == (2, 16, 16, 16)
    eval_batch = next(dataset.eval_batches("val", 3))
    assert eval_batch["weight"].shape == (3,)
    # A third of the training patches are centred on foreground, so most patches hold some.
    fg = np.mean([(dataset.sources["train"][i]["label"] > 0).any() for i in range(dataset.num_examples("train"))])
    assert fg > 0.33

    from jaxfcn.data import augment
    import jax

    out = augment(jax.random.key(0), batch, tiny("structures", dims=3, flip_axes=(0,)))
    assert out["image"].shape == batch["image"].shape and out["label"].shape == batch["label"].shape
    assert set(np.unique(np.asarray(out["label"]))) <= set(range(6))
    assert 0.5 < (np.asarray(out["label"]) > 0).mean() / max((batch["label"] > 0).mean(), 1e-6) < 2.0


def test_augment_is_jittable_and_label_preserving(fresh_cache):
    import jax

    import jaxfcn.data
    import jaxfcn.data.augmentation  # noqa: F401  (importing the module must leave the function in place)
    from jaxfcn.data import augment

    assert callable(jaxfcn.data.augment) and augment is jaxfcn.data.augment
    config = tiny(flip_axes=(0,))
    dataset = open_dataset(config, depth=2, progress=False)
    batch = next(dataset.batches(8, seed=0))
    fn = jax.jit(lambda key, b: augment(key, b, config))
    out = jax.device_get(fn(jax.random.key(0), batch))
    assert out["image"].shape == batch["image"].shape and out["label"].dtype == batch["label"].dtype
    assert set(np.unique(out["label"])) <= set(range(4))
    assert not np.allclose(out["image"], batch["image"])
    np.testing.assert_array_equal(out["label"], jax.device_get(fn(jax.random.key(0), batch))["label"])

    flip_only = tiny(flip_axes=(1,), rotate_degrees=0.0, scale_range=0.0, intensity_jitter=0.0)
    flipped = jax.device_get(augment(jax.random.key(1), batch, flip_only))
    for i in range(8):
        same = np.array_equal(flipped["label"][i], batch["label"][i])
        mirrored = np.array_equal(flipped["label"][i], batch["label"][i][:, ::-1])
        assert same or mirrored
        np.testing.assert_array_equal(flipped["image"][i], batch["image"][i] if same else batch["image"][i][:, ::-1])

    assert augment(jax.random.key(0), batch, tiny(augment=False)) is batch


def test_cli_list_and_prepare(fresh_cache, capsys):
    from jaxfcn.cli import main

    tiny_flags = ["--set", "data.spacing=6.0", "--set", "data.slice_shape=32,32", "--set", "model.depth=2",
                  "--set", "data.train_subjects=6", "--set", "data.val_subjects=2", "--set", "data.test_subjects=2"]
    assert main(["data", "list", "--quiet"] + tiny_flags) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(builtin.TASKS)  # header + one line per task
    assert lines[1].split()[0] == "tissue" and "grey_matter" in lines[1]
    assert "subjects train 6, val 2, test 3 (1 real)" in lines[1]
    assert main(["data", "prepare", "structures", "--quiet"] + tiny_flags) == 0
    assert "cached in" in capsys.readouterr().out
    assert main(["data", "prepare", "no_such_task", "--quiet"]) == 2
    assert "no_such_task" in capsys.readouterr().err


def test_cli_show_montage_of_subjects(fresh_cache, tmp_path, capsys):
    from jaxfcn.cli import main

    out = tmp_path / "subjects.png"
    assert main(["data", "show", "subcortical", "--out", str(out), "--cases", "3", "--set", "data.spacing=6.0"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 case(s)" in capsys.readouterr().out
    assert main(["data", "show", "subcortical", "--out", str(tmp_path / "x.png"), "--cases", "0"]) == 2
    assert "--cases 0" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
