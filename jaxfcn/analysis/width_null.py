"""How the untrained-network CKA baseline depends on network width.

The study's "untrained" null is CKA between independently initialised, untrained networks of the study's
architecture. It is not an estimator bias (debiased CKA of independent data is centred on 0, and the
permutation null sits at ≈ 0): two random convolutional networks of the same architecture compute random
features of the *same* input patches, and as the width grows those features converge to a common kernel of
the input, so their CKA rises towards 1. This module measures that dependence so a report can show where
the study's own width sits on the curve.

Definition: for each width w in ``widths`` (the model's ``base_width``; deeper levels scale with it as in
the study's architecture), ``seeds`` networks are initialised with ``jax.random.key(SEED_OFFSET + i)``,
i = 0…seeds−1, their features on ``images`` are taken with :func:`jaxfcn.analysis.features.extract_features`
(``feature_options``: the study's convention), and the value per layer is the mean of CKA (``debiased``)
over all seeds·(seeds−1)/2 pairs. Narrow widths stay valid models: group norm takes the largest group count
that divides the channels (:func:`jaxfcn.models.layers.group_count`).

Example::

    calibration = untrained_cka_by_width(config.model, probe, widths=(4, 8, 16, 32), seeds=4,
                                         feature_options={"convention": "positions", "positions_per_image": 16})
    calibration["mean"]["bottleneck"]   # one value per width
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

SEED_OFFSET = 77_000  # keeps these networks apart from every seed a study trains


def untrained_cka_by_width(model_config, images: np.ndarray, widths: Sequence[int], seeds: int = 4, *,
                           debiased: bool = True, feature_options: dict | None = None) -> dict:
    """``{"widths", "layers", "seeds", "pairs", "mean": {layer: [value per width]},
    "sd": {layer: [sd over pairs per width]}}`` (see the module docstring)."""
    import jax

    from jaxfcn.analysis.cka import centred_grams, cka_from_grams
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model, layer_names
    from jaxfcn.models.unet import init_variables

    if seeds < 2:
        raise ValueError(f"seeds={seeds}: a pairwise baseline needs at least 2 networks")
    layers = layer_names(model_config.depth)
    images = np.asarray(images, np.float32)
    pairs = list(itertools.combinations(range(seeds), 2))
    mean = {layer: [] for layer in layers}
    sd = {layer: [] for layer in layers}
    for width in widths:
        config = model_config.copy_and_resolve_references()
        config.base_width = int(width)
        model = build_model(config)
        grams = []
        for i in range(seeds):
            variables = init_variables(model, jax.random.key(SEED_OFFSET + i), (1, *images.shape[1:]))
            feats = extract_features(model, variables, images, layers, **(feature_options or {}))
            grams.append(centred_grams([feats[layer] for layer in layers], debiased=debiased)[0])
        for k, layer in enumerate(layers):
            matrix = cka_from_grams(np.stack([g[k] for g in grams]))
            values = np.array([matrix[a, b] for a, b in pairs])
            mean[layer].append(float(values.mean()))
            sd[layer].append(float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return {"widths": [int(w) for w in widths], "layers": layers, "seeds": int(seeds), "pairs": len(pairs),
            "mean": mean, "sd": sd}


def targets_sharing_a_baseline(by_width: dict) -> list[tuple[list[str], dict]]:
    """``by_width`` (target → :func:`untrained_cka_by_width` result) grouped by equal results, in first-seen
    order: ``[(targets, result), …]``. Targets whose probe images are the same share one baseline, since an
    untrained network never sees labels; a report shows it once for all of them."""
    groups: list[tuple[list[str], dict]] = []
    for target, result in by_width.items():
        for targets, shared in groups:
            if shared == result:
                targets.append(target)
                break
        else:
            groups.append(([target], result))
    return groups
