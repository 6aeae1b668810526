"""Diagnostics behind docs/study/cka_baseline.md: is trained-vs-trained CKA above the untrained null?

For the random-init seeds of a study folder's largest training size, per target and layer, with the
study's own probes and feature convention (``results.json`` ``cka_settings``):

- mean debiased linear CKA over the pairs of trained (final) models and over the pairs of untrained
  (step-0) models: raw features, and each channel standardised over the probe rows (linear CKA is not
  invariant to rescaling one channel, which a ReLU network can do without changing its function);
- the spectrum of each model's features: the top principal component's share of the variance and the
  participation ratio (Σλ)² / Σλ² (how many directions carry the variance), means over models.

    python docs/study/cka_null_diagnostics.py runs/pilot structures lobes deep_nuclei
"""
from __future__ import annotations

import itertools
import json
import sys

import numpy as np

LAYERS = ("enc_0", "enc_1", "bottleneck", "dec_1", "head_input")


def features_of_seeds(study: str, task: str, size: int, seeds: int, step) -> dict[str, list[np.ndarray]]:
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.reproduce.analysis import feature_options, probe_set
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.workdir import load_run_config

    settings = json.load(open(f"{study}/results.json"))["cka_settings"]
    folder = f"{study}/runs/{task}/n{size}/random"
    config = load_run_config(f"{folder}/seed_0")
    images = probe_set(task, config, settings["probes"][task])
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in LAYERS}
    for seed in range(seeds):
        variables, _ = load_variables(f"{folder}/seed_{seed}", step)
        feats = extract_features(build_model(config.model), variables, images, LAYERS, **feature_options(settings))
        for layer in LAYERS:
            out[layer].append(np.asarray(feats[layer], np.float64))
    return out


def standardised(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def mean_pair_cka(xs: list[np.ndarray]) -> float:
    from jaxfcn.analysis.cka import cka_matrix

    m = np.asarray(cka_matrix([x.astype(np.float32) for x in xs], debiased=True))
    return float(np.mean([m[i, j] for i, j in itertools.combinations(range(len(xs)), 2)]))


def spectrum(x: np.ndarray) -> tuple[float, float]:
    """(top principal component's share of the variance, participation ratio) of rows x."""
    x = x - x.mean(0)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x), 0, None)
    return float(eig.max() / eig.sum()), float(eig.sum() ** 2 / (eig ** 2).sum())


def main(argv: list[str]) -> None:
    study, tasks = argv[0], argv[1:]
    design = json.load(open(f"{study}/results.json"))["design"]
    size, seeds = max(design["train_sizes"]), len(design["seeds"])
    print("| target | layer | trained | untrained | trained, standardised | untrained, standardised "
          "| top-PC share trained / untrained | participation ratio trained / untrained (of channels) |")
    print("|---|---|---|---|---|---|---|---|")
    for task in tasks:
        trained = features_of_seeds(study, task, size, seeds, None)
        untrained = features_of_seeds(study, task, size, seeds, 0)
        for layer in LAYERS:
            t, u = trained[layer], untrained[layer]
            st, su = np.mean([spectrum(x) for x in t], 0), np.mean([spectrum(x) for x in u], 0)
            print(f"| {task} | {layer} | {mean_pair_cka(t):.2f} | {mean_pair_cka(u):.2f} "
                  f"| {mean_pair_cka([standardised(x) for x in t]):.2f} "
                  f"| {mean_pair_cka([standardised(x) for x in u]):.2f} | {st[0]:.2f} / {su[0]:.2f} "
                  f"| {st[1]:.1f} / {su[1]:.1f} (of {t[0].shape[1]}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
