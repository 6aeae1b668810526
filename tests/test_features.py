"""Feature extraction from the sown intermediates: both matrix conventions, seeded subsampling, probes."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxfcn.analysis.features import (column_positions, extract_features, probe_images, probe_indices,
                                      sample_positions)
from jaxfcn.data.dataset import ArraySource, DatasetInfo, SegmentationDataset
from jaxfcn.models import build_model, layer_names
from jaxfcn.models.unet import init_variables, input_shape


@pytest.fixture(scope="module")
def tiny_model():
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.model.in_channels, c.model.num_classes = 1, 3
    c.data.slice_shape = (32, 32)
    model = build_model(c.model)
    variables = init_variables(model, jax.random.key(0), input_shape(c.model, c.data))
    images = np.random.default_rng(0).normal(size=(7, 32, 32, 1)).astype(np.float32)
    return model, variables, images


def direct(model, variables, images):
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    return {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}


def test_images_convention_equals_intermediates_and_is_batch_invariant(tiny_model):
    model, variables, images = tiny_model
    feats = extract_features(model, variables, images, batch_size=3)  # 7 = 3 + 3 + 1 (padded)
    ref = direct(model, variables, images)
    assert list(feats) == layer_names(2) == ["enc_0", "bottleneck", "head_input"]
    for name, f in feats.items():
        assert f.dtype == np.float32 and f.shape == (7, int(np.prod(ref[name].shape[1:])))
        np.testing.assert_allclose(f, ref[name].reshape(7, -1), rtol=1e-5, atol=1e-5)


def test_seeded_column_subsampling_bounds_memory(tiny_model):
    model, variables, images = tiny_model
    full = extract_features(model, variables, images, ["enc_0"], batch_size=4)["enc_0"]
    sub = extract_features(model, variables, images, ["enc_0"], max_features=256, batch_size=4)["enc_0"]
    again = extract_features(model, variables, images, ["enc_0"], max_features=256, batch_size=4)["enc_0"]
    other = extract_features(model, variables, images, ["enc_0"], max_features=256, batch_size=4, seed=1)["enc_0"]
    assert sub.shape == (7, 256)  # 64 positions × 4 channels
    np.testing.assert_array_equal(sub, again)
    assert not np.array_equal(sub, other)
    pos = column_positions("enc_0", (32, 32), 4, 256)
    expected = full.reshape(7, 32 * 32, 4)[:, pos, :].reshape(7, -1)
    np.testing.assert_allclose(sub, expected, rtol=1e-6)


def test_positions_convention_rows_are_the_same_input_locations(tiny_model):
    model, variables, images = tiny_model
    feats = extract_features(model, variables, images, convention="positions", positions_per_image=5, batch_size=4)
    ref = direct(model, variables, images)
    coords, valid = sample_positions(7, (32, 32), 5)
    assert valid.all()
    assert feats["enc_0"].shape == (35, 4) and feats["bottleneck"].shape == (35, 8)
    for i in range(7):
        for j in range(5):
            y, x = coords[i, j]
            np.testing.assert_allclose(feats["enc_0"][i * 5 + j], ref["enc_0"][i, y, x], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(feats["bottleneck"][i * 5 + j], ref["bottleneck"][i, y // 2, x // 2],
                                       rtol=1e-5, atol=1e-6)
    assert len({tuple(c) for c in coords[0]}) == 5  # distinct within an image


def test_nonzero_positions_fall_on_the_anatomy_only(tiny_model):
    """positions_within="nonzero": every row is an input location whose image is nonzero; an image with
    fewer such locations than asked gives all it has, an empty (all-background) image gives none."""
    model, variables, images = tiny_model
    images = images.copy()
    images[:, :, :16] = 0.0  # left half is background
    images[1] = 0.0  # no anatomy at all
    images[2] = 0.0
    images[2, 3, 20] = images[2, 9, 30] = 1.5  # two nonzero positions only
    feats = extract_features(model, variables, images, ["enc_0"], convention="positions", positions_per_image=5,
                             positions_within="nonzero", batch_size=4)["enc_0"]
    ref = direct(model, variables, images)["enc_0"]
    expected = []
    for i in range(7):
        allowed = np.flatnonzero(images[i, ..., 0].reshape(-1) != 0)  # the draw written out longhand
        take = min(5, len(allowed))
        flat = np.sort(np.random.default_rng([0, 8191, i]).choice(allowed, size=take, replace=False))
        expected += [ref[i, f // 32, f % 32] for f in flat]
        assert all(f % 32 >= 16 for f in flat)
    assert feats.shape == (5 * 5 + 0 + 2, 4)
    np.testing.assert_allclose(feats, np.stack(expected), rtol=1e-5, atol=1e-6)
    everywhere = extract_features(model, variables, images, ["enc_0"], convention="positions",
                                  positions_per_image=5, batch_size=4)["enc_0"]
    assert everywhere.shape == (35, 4)
    with pytest.raises(ValueError, match="positions_within"):
        extract_features(model, variables, images, convention="positions", positions_within="brain")


def test_3d_features_stay_bounded():
    model = build_model(_model_config(spatial_dims=3))
    variables = init_variables(model, jax.random.key(1), (1, 8, 8, 8, 1))
    images = np.random.default_rng(1).normal(size=(3, 8, 8, 8, 1)).astype(np.float32)
    feats = extract_features(model, variables, images, max_features=64, batch_size=2)
    assert all(f.shape[1] <= 64 for f in feats.values())
    pos = extract_features(model, variables, images, ["bottleneck"], convention="positions", positions_per_image=4)
    assert pos["bottleneck"].shape == (12, 8)


def _model_config(spatial_dims):
    from jaxfcn.config import base_config

    m = base_config().model
    m.spatial_dims, m.depth, m.base_width, m.norm_groups, m.in_channels, m.num_classes = spatial_dims, 2, 4, 2, 1, 2
    return m


def test_errors(tiny_model):
    model, variables, images = tiny_model
    with pytest.raises(ValueError, match="unknown layer 'dec_5'.*enc_0, bottleneck, head_input"):
        extract_features(model, variables, images, ["dec_5"])
    with pytest.raises(ValueError, match="unknown convention"):
        extract_features(model, variables, images, convention="pixels")


def test_probe_images_are_fixed_and_seeded():
    rng = np.random.default_rng(2)
    val = ArraySource(rng.normal(size=(20, 8, 8, 1)).astype(np.float32), np.zeros((20, 8, 8), np.int32))
    info = DatasetInfo("toy", ("background", "x"), 1, 2, (8, 8))
    ds = SegmentationDataset(info, {"train": val, "val": val})
    a, b = probe_images(ds, 6, seed=0), probe_images(ds, 6, seed=0)
    np.testing.assert_array_equal(a, b)
    idx = probe_indices(20, 6, 0)
    np.testing.assert_array_equal(a, val.images[idx])
    assert len(set(idx)) == 6 and not np.array_equal(idx, probe_indices(20, 6, 1))
    assert len(probe_images(ds, 50)) == 20  # more than available: all of them
