"""Whole-volume inference: slice-by-slice and sliding-window assembly, and `jaxfcn predict` round trips."""
import os

import nibabel as nib
import numpy as np
import pytest

from jaxfcn.cli import main
from jaxfcn.config import load_config
from jaxfcn.data import fetch
from jaxfcn.train.evaluate import evaluate_run
from jaxfcn.train.loop import train_and_evaluate
from jaxfcn.train.inference import gaussian_importance, predict_sliding_window, predict_slices, window_starts
from data_fixtures import reorient_for_disk
from train_helpers import shapes_dataset, write_tiny_config


def pointwise_model(variables, x):
    """A stand-in 'network' with no spatial context: class 1 where the first channel is positive."""
    positive = (np.asarray(x)[..., :1] > 0).astype(np.float32)
    return np.concatenate([1 - positive, positive], axis=-1)


@pytest.mark.parametrize("length, patch, overlap", [(40, 16, 0.5), (16, 16, 0.5), (17, 16, 0.25), (100, 32, 0.0)])
def test_window_starts_cover_the_axis(length, patch, overlap):
    starts = window_starts(length, patch, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == length - patch
    assert all(b - a <= patch * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))


def test_gaussian_importance_peaks_in_the_centre():
    w = gaussian_importance((8, 9, 10))
    assert w.max() == 1.0 and w.min() > 0 and np.unravel_index(w.argmax(), w.shape) == (3, 4, 4)


@pytest.mark.parametrize("shape", [(37, 20, 23), (10, 12, 7)])  # larger than and smaller than the patch
def test_sliding_window_reassembles_a_pointwise_model_exactly(shape):
    image = np.random.default_rng(0).normal(size=shape + (1,)).astype(np.float32)
    probs = predict_sliding_window(pointwise_model, None, image, (16, 16, 8), overlap=0.5, batch_size=3)
    np.testing.assert_allclose(probs, pointwise_model(None, image), atol=1e-6)


def ramp_model(variables, x):
    """A stand-in whose output depends on the position inside the window, so the Gaussian weights matter."""
    x = np.asarray(x)
    ramp = np.linspace(-1.0, 1.0, x.shape[1])[None, :, None, None]
    logits = np.stack([x[..., 0] * ramp, -x[..., 0] + ramp], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def longhand_sliding_window(model, image, patch, overlap):
    """The module docstring's definition, written out with numpy loops, one window at a time."""
    shape = [max(n, p) for n, p in zip(image.shape[:3], patch)]
    padded = np.zeros(shape + [image.shape[3]], np.float32)
    padded[: image.shape[0], : image.shape[1], : image.shape[2]] = image
    sigma = [p / 8 for p in patch]
    grid = np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij")
    weight = np.exp(-0.5 * sum((g / s) ** 2 for g, s in zip(grid, sigma)))
    weight = np.maximum(weight / weight.max(), (weight / weight.max()).min())
    total, summed = None, np.zeros(shape)
    for a in window_starts(shape[0], patch[0], overlap):
        for b in window_starts(shape[1], patch[1], overlap):
            for c in window_starts(shape[2], patch[2], overlap):
                box = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                p = model(None, padded[box][None])[0]
                total = np.zeros(shape + [p.shape[-1]]) if total is None else total
                total[box] += p * weight[..., None]
                summed[box] += weight
    return (total / summed[..., None])[: image.shape[0], : image.shape[1], : image.shape[2]]


@pytest.mark.parametrize("batch_size", [1, 4])  # 4: the last batch is padded with weight-0 windows
def test_sliding_window_weights_overlaps_as_defined(batch_size):
    image = np.random.default_rng(2).normal(size=(30, 21, 19, 1)).astype(np.float32)
    probs = predict_sliding_window(ramp_model, None, image, (12, 10, 8), overlap=0.5, batch_size=batch_size)
    expected = longhand_sliding_window(ramp_model, image, (12, 10, 8), 0.5)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(probs - pointwise_model(None, image)).max() > 0.1  # the ramp matters: not a trivial case


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_are_reassembled_along_the_axis(axis):
    image = np.random.default_rng(1).normal(size=(9, 11, 13, 1)).astype(np.float32)
    probs = predict_slices(pointwise_model, None, image, axis=axis, multiple=8, batch_size=4)
    np.testing.assert_array_equal(probs, pointwise_model(None, image))


def test_3d_run_trains_and_evaluates_with_sliding_window(tiny_config, tmp_path):
    c = tiny_config
    c.model.spatial_dims = c.data.dims = 3
    c.model.num_classes = 0
    c.data.patch_shape = (16, 16, 8)
    c.data.augment = False
    c.train.steps, c.train.batch_size, c.train.eval_every, c.train.snapshot_steps = 2, 2, 2, "1"
    data = shapes_dataset(size=24, depth=10, spatial_dims=3)
    data.sources = {s: type(src)(src.images[:, :16, :16, :8], src.labels[:, :16, :16, :8])
                    for s, src in data.sources.items()}  # training patches of patch_shape
    workdir = str(tmp_path / "run3d")
    train_and_evaluate(c, workdir, dataset=data, progress=False)
    summary = evaluate_run(workdir, split="val", dataset=data, progress=False)
    assert summary["spatial_dims"] == 3 and summary["num_cases"] == 2
    assert set(summary["mean"]) == {"ball", "box", "rod"}


def test_predict_keeps_shape_and_affine_in_any_orientation(tmp_path, capsys):
    tissue_run = str(tmp_path / "run")
    config = write_tiny_config(tmp_path / "tiny.py", train__steps=120, train__eval_every=120, train__checkpoint_every=120)
    train_and_evaluate(load_config(config), tissue_run, progress=False)
    t1 = nib.load(fetch.builtin_files()["t1_asym09c"])
    # a 3 mm version of the real test template, stored on disk in three voxel orders
    data = np.asarray(t1.dataobj, np.float32)[::3, ::3, ::3]
    affine = t1.affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    outputs = {}
    for how in ("ras", "x_reversed", "permuted"):
        disk, disk_affine = reorient_for_disk(data, affine, how)
        src = str(tmp_path / f"t1_{how}.nii.gz")
        nib.save(nib.Nifti1Image(disk, disk_affine), src)
        out = str(tmp_path / f"seg_{how}.nii.gz")
        assert main(["predict", "--workdir", tissue_run, "--input", src, "--output", out]) == 0
        written, original = nib.load(out), nib.load(src)
        assert written.shape == original.shape
        np.testing.assert_array_equal(written.affine, original.affine)
        labels = np.asarray(written.dataobj)
        assert labels.dtype.kind in "iu" and labels.min() >= 0 and labels.max() <= 3
        outputs[how] = np.asarray(nib.as_closest_canonical(written).dataobj)
    assert (outputs["ras"] > 0).any()
    np.testing.assert_array_equal(outputs["x_reversed"], outputs["ras"])
    np.testing.assert_array_equal(outputs["permuted"], outputs["ras"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic write left no temporary file
    assert "wrote" in capsys.readouterr().out
