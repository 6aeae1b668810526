"""The untrained baseline against width: the values are the mean pairwise CKA of independently initialised
networks, recomputed here longhand (float64 NumPy debiased CKA of test_cka), and they rise with width."""
from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from jaxfcn.analysis.features import extract_features
from jaxfcn.analysis.width_null import SEED_OFFSET, untrained_cka_by_width
from jaxfcn.config import base_config
from jaxfcn.models import build_model, layer_names
from jaxfcn.models.unet import init_variables
from test_cka import np_cka

OPTIONS = {"convention": "positions", "positions_per_image": 8, "positions_within": "nonzero"}


@pytest.fixture(scope="module")
def setting():
    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups, c.model.num_classes = 2, 4, 2, 3
    images = np.random.default_rng(3).normal(size=(6, 32, 32, 1)).astype(np.float32)
    images[:, :8] = 0.0  # background rows, as in a preprocessed slice
    return c.model, images


def test_values_are_mean_pairwise_cka_of_independent_untrained_networks(setting):
    model_config, images = setting
    out = untrained_cka_by_width(model_config, images, widths=(2, 4), seeds=3, feature_options=OPTIONS)
    assert out["widths"] == [2, 4] and out["layers"] == layer_names(2) and out["pairs"] == 3
    for i, width in enumerate((2, 4)):
        config = model_config.copy_and_resolve_references()
        config.base_width, config.norm_groups = width, min(2, width)
        model = build_model(config)
        feats = [extract_features(model, init_variables(model, jax.random.key(SEED_OFFSET + s), (1, 32, 32, 1)),
                                  images, **OPTIONS) for s in range(3)]
        for layer in out["layers"]:
            pairs = [np_cka(feats[a][layer].astype(np.float64), feats[b][layer].astype(np.float64), debiased=True)
                     for a, b in itertools.combinations(range(3), 2)]
            assert out["mean"][layer][i] == pytest.approx(np.mean(pairs), abs=2e-4)
            assert out["sd"][layer][i] == pytest.approx(np.std(pairs, ddof=1), abs=2e-4)


def test_random_features_agree_more_as_width_grows(setting):
    model_config, images = setting
    out = untrained_cka_by_width(model_config, images, widths=(2, 32), seeds=3, feature_options=OPTIONS)
    for layer in out["layers"]:
        narrow, wide = out["mean"][layer]
        assert wide > narrow + 0.1, (layer, narrow, wide)


def test_needs_two_networks(setting):
    with pytest.raises(ValueError, match="at least 2"):
        untrained_cka_by_width(setting[0], setting[1], widths=(4,), seeds=1)


def test_targets_with_the_same_probes_share_one_baseline_computed_once(setting, monkeypatch, tmp_path):
    from jaxfcn.analysis import width_null
    from jaxfcn.plots.study import untrained_by_width
    from jaxfcn.reproduce.analysis import width_null_results
    from jaxfcn.reproduce.report import width_null_section

    model_config, images = setting
    calls = []

    def counted(*args, **kwargs):  # the real computation, counted
        calls.append(args[1])
        return untrained_cka_by_width(*args, **kwargs)

    monkeypatch.setattr(width_null, "untrained_cka_by_width", counted)
    config = base_config()
    config.model = model_config
    settings = {"null_widths": [2, 4], "estimator": "debiased", **OPTIONS}
    other = np.random.default_rng(4).normal(size=images.shape).astype(np.float32)
    probes = {"lobes": images, "deep_nuclei": images.copy(), "structures": other}
    out = width_null_results(config, probes, settings)
    assert len(calls) == 2  # the two distinct probe sets
    assert out["lobes"] == out["deep_nuclei"] != out["structures"]
    assert out["lobes"]["study_width"] == model_config.base_width

    lines = width_null_section({"cka_untrained_by_width": out})
    headings = [line for line in lines if line.startswith("*") and not line.startswith("**")]
    assert headings == ["*lobes, deep_nuclei* (4 networks, 6 pairs per width; one table for 2 targets: they share "
                        "their probe images, and an untrained network never sees labels)",
                        "*structures* (4 networks, 6 pairs per width)"]
    assert sum(line.startswith("| base width") for line in lines) == 2
    figure = untrained_by_width({"cka_untrained_by_width": out}, str(tmp_path / "by_width.png"))
    assert open(figure, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
