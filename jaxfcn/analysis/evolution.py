"""Representation evolution: how far each layer's representation moves over training, measured by CKA.

For a run with parameter snapshots at steps s_0 < … < s_{S−1} (s_0 = 0, the initialisation), every layer's
features on a fixed probe set are extracted at every snapshot and one CKA matrix is computed over all
(step, layer) representations. Reported per layer:

- ``vs_init[layer][t]  = CKA(features at s_0, features at s_t)``: 1 at t = 0, falling as training moves
  the layer away from its initial representation;
- ``vs_final[layer][t] = CKA(features at s_t, features at s_{S−1})``: rising to 1 at the final step.

The paper's observation is that representations (like filters) stay close to their initialisation; a
layer whose ``vs_init`` at the final step is near 1 kept its initial representation.

Example::

    evo = representation_evolution("runs/tissue", images, ["enc_0", "bottleneck"])
    evo["vs_init"]["enc_0"][-1]      # CKA(initial, final) of the first encoder level
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def representation_evolution(workdir: str, images: np.ndarray, layers: Sequence[str], *, kernel: str = "linear",
                             debiased: bool = False, feature_options: dict | None = None) -> dict:
    """CKA of each layer across the snapshots of run ``workdir`` (see the module docstring).

    ``images``: probe images (N, *S, C); ``feature_options``: keyword arguments of
    :func:`jaxfcn.analysis.features.extract_features` (convention, max_features, …). Returns ``{"steps",
    "layers", "vs_init", "vs_final", "cka" (S, L, S, L) array, "constant"}``; ``constant`` lists the
    ``"step s:layer"`` representations that are constant over the probes (their CKA is reported as 0).
    Raises ValueError when the run has fewer than two snapshots.
    """
    from jaxfcn.analysis.cka import cka_matrix
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables, snapshot_steps
    from jaxfcn.train.workdir import load_run_config

    steps = snapshot_steps(workdir)
    if len(steps) < 2:
        raise ValueError(f"{workdir}: needs at least two parameter snapshots (has {steps})")
    layers = list(layers)
    model = build_model(load_run_config(workdir).model)
    representations = []
    for step in steps:
        variables, _ = load_variables(workdir, step)
        features = extract_features(model, variables, images, layers, **(feature_options or {}))
        representations += [features[layer] for layer in layers]
    matrix = np.asarray(cka_matrix(representations, kernel=kernel, debiased=debiased, on_constant="zero"))
    labels = [f"step {s}:{layer}" for s in steps for layer in layers]
    s, n = len(steps), len(layers)
    cka = matrix.reshape(s, n, s, n)
    return {"steps": list(steps), "layers": layers,
            "vs_init": {layer: [float(cka[0, k, t, k]) for t in range(s)] for k, layer in enumerate(layers)},
            "vs_final": {layer: [float(cka[t, k, s - 1, k]) for t in range(s)] for k, layer in enumerate(layers)},
            "cka": cka, "constant": [labels[i] for i in np.flatnonzero(np.diag(matrix) == 0)]}
