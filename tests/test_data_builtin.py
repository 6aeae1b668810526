"""The built-in real MRI tasks: pinned files, preparation, cache reuse, splits, subsets, augmentation."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfcn.config import base_config
from jaxfcn.data import builtin, fetch, open_dataset, prepared

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
    # Templates split: one template per split, whole volumes as cases for val/test.
    assert [c.case_id for c in dataset.cases("val")] == ["fsl"]
    assert [c.case_id for c in dataset.cases("test")] == ["asym09c"]
    case = dataset.cases("test")[0]
    assert all(n % 4 == 0 for n in case.image.shape[:3]) and case.image.shape[:3] == case.label.shape
    # z-scored inside the brain: mean 0, std 1 over nonzero voxels
    inside = case.image[..., 0][case.image[..., 0] != 0]
    assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1) < 1e-2
    # Every slice in all three orientations that holds brain: count them from the case itself.
    content = case.image[..., 0] != 0
    expected = sum(int(content.any(axis=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3))
    assert dataset.num_examples("test") == expected


def test_training_subset_is_seeded_and_nested(fresh_cache):
    small = open_dataset(tiny(train_size=10, subset_seed=3), depth=2, progress=False)
    large = open_dataset(tiny(train_size=25, subset_seed=3), depth=2, progress=False)
    other = open_dataset(tiny(train_size=10, subset_seed=4), depth=2, progress=False)
    assert small.num_examples("train") == 10 and large.num_examples("train") == 25
    assert set(small.train_indices) <= set(large.train_indices)
    assert not np.array_equal(small.train_indices, other.train_indices)
    batch = next(small.batches(4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 1)


def test_subcortical_slabs_split_does_not_leak(fresh_cache):
    config = tiny("subcortical", split="slabs", orientations=("axial", "coronal"))
    dataset = open_dataset(config, depth=2, progress=False)
    assert dataset.info.num_classes == 8
    ids = {split: [c.case_id for c in dataset.cases(split)] for split in ("val", "test")}
    assert ids["val"] and ids["test"] and not set(ids["val"]) & set(ids["test"])
    # The slabs of one template are disjoint and separated by a gap.
    boxes = builtin.slab_boxes((30, 36, 30), (2, 28))
    for a, b in zip(boxes, boxes[1:]):
        assert b[2].start - a[2].stop >= builtin.SLAB_GAP
    assert sorted(sum((list(builtin.slab_roles(i)) for i in range(3)), [])).count("test") == 3
    # All seven structures appear in the training examples.
    labels = np.stack([dataset.sources["train"][i]["label"] for i in range(dataset.num_examples("train"))])
    assert set(np.unique(labels)) == set(range(8))


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
    import jaxfcn.data.augment  # noqa: F401  (importing the submodule must not shadow the function)
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

    tiny_flags = ["--set", "data.spacing=6.0", "--set", "data.slice_shape=32,32", "--set", "model.depth=2"]
    assert main(["data", "list", "--quiet"] + tiny_flags) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # header + one line per task
    assert lines[1].split()[0] == "tissue" and "grey_matter" in lines[1] and "train 80" in lines[1]
    assert main(["data", "prepare", "structures", "--quiet"] + tiny_flags) == 0
    assert "cached in" in capsys.readouterr().out
    assert main(["data", "prepare", "no_such_task", "--quiet"]) == 2
    assert "no_such_task" in capsys.readouterr().err
