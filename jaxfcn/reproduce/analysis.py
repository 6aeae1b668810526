"""The study's measurements beyond Dice: filter change and randomness, CKA within/between regimes, reuse.

All CKA here is linear CKA on rows = probe images, columns = flattened H·W·C features of one layer
(:mod:`jaxfcn.analysis.features`), probes = an evenly spaced fixed set of the target's validation slices.
For each target, at its largest training size:

- ``within[regime][layer]``: CKA between every pair of seeds of that regime;
- ``between[layer]``: CKA between every (transfer seed, random seed) pair;
- ``reuse[layer]``: CKA between each transfer model and the source model it started from;
- ``evolution[regime]``: CKA of each layer's representation at every parameter snapshot of the
  lowest seed vs its initialisation and vs its final state (:mod:`jaxfcn.analysis.evolution`).
"""
from __future__ import annotations

import itertools
import os
from collections import defaultdict

import numpy as np

from jaxfcn.analysis import plots
from jaxfcn.reproduce import figures as figs
from jaxfcn.reproduce.grid import Run, task_label

FILTER_REGIMES = ("random",)  # target regimes whose filters are tested (plus the source runs)
EVOLUTION_REGIMES = ("random", "transfer", "frozen_random")


def largest_size_runs(targets: list[Run]) -> dict[str, list[Run]]:
    """Per target task, the runs at its largest training size (0 = all is the largest)."""
    out = defaultdict(list)
    for task in dict.fromkeys(r.task for r in targets):
        sizes = [r.train_size for r in targets if r.task == task]
        largest = 0 if 0 in sizes else max(sizes)
        out[task] = [r for r in targets if r.task == task and r.train_size == largest]
    return out


def filter_rows(sources: list[Run], targets: list[Run], progress: bool) -> list[dict]:
    from jaxfcn.analysis.filters import kernel_leaves, parameter_changes, randomness_tests
    from jaxfcn.train.checkpoint import load_params, snapshot_steps
    from jaxfcn.train.workdir import load_run_config

    runs = list(sources) + [r for rs in largest_size_runs(targets).values() for r in rs if r.regime in FILTER_REGIMES]
    rows = []
    for run in runs:
        config = load_run_config(run.workdir)
        steps = snapshot_steps(run.workdir)
        first, last = load_params(run.workdir, steps[0]), load_params(run.workdir, steps[-1])
        change = {r["layer"]: r["relative_change"] for r in parameter_changes({steps[0]: first, steps[-1]: last})
                  if r["step"] == steps[-1]}
        tests = randomness_tests(kernel_leaves(last), config.model.kernel_init,
                                 spatial_dims=config.model.spatial_dims, null_draws=100, seed=run.seed)
        for t in tests:
            rows.append({"regime": "source" if run.kind == "source" else run.regime, "task": run.task,
                         "seed": run.seed, "layer": t["layer"], "relative_change": change.get(t["layer"]),
                         "verdict": t["verdict"], "rejected": t.get("rejected", [])})
    return rows


def _probe_images(task: str, config, count: int) -> np.ndarray:
    from jaxfcn.data import open_dataset

    c = config.copy_and_resolve_references()
    c.data.task = task
    dataset = open_dataset(c.data, depth=c.model.depth, progress=False)
    images = [b["image"][b["weight"] > 0] for b in dataset.eval_batches("val", count, 1)]
    return np.concatenate(images)[:count]


def _features(run_workdir: str, images: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.workdir import load_run_config

    config = load_run_config(run_workdir)
    variables, _ = load_variables(run_workdir)
    return extract_features(build_model(config.model), variables, images, layers)


def cka_results(config, sources: list[Run], targets: list[Run], probes: dict[str, np.ndarray]) -> dict:
    from jaxfcn.analysis.cka import cka_matrix
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    out = {}
    for task, runs in largest_size_runs(targets).items():
        images = probes[task]
        models = {}  # label → run
        for r in runs:
            if r.regime in ("random", "transfer"):
                models[f"{r.regime}/{r.seed}"] = r.workdir
        used_sources = {r.source_workdir for r in runs if r.regime == "transfer"}
        for s in sources:
            if s.workdir in used_sources:
                models[f"source/{s.seed}"] = s.workdir
        if len(models) < 2:
            continue
        feats = {label: _features(wd, images, layers) for label, wd in models.items()}
        labels = list(models)
        index = {label: i for i, label in enumerate(labels)}
        within = defaultdict(dict)
        between, reuse, matrices = {}, {}, {}
        for layer in layers:
            m = np.asarray(cka_matrix([feats[l][layer] for l in labels], on_constant="zero"))
            matrices[layer] = m.round(5).tolist()
            for regime in ("random", "transfer"):
                members = [l for l in labels if l.startswith(regime + "/")]
                within[regime][layer] = [float(m[index[a], index[b]]) for a, b in itertools.combinations(members, 2)]
            between[layer] = [float(m[index[a], index[b]]) for a in labels if a.startswith("transfer/")
                              for b in labels if b.startswith("random/")]
            reuse[layer] = [float(m[index[f"transfer/{r.seed}"], index[_source_label(r, sources)]])
                            for r in runs if r.regime == "transfer" and _source_label(r, sources) in index]
        out[task_label(task)] = {"within": dict(within), "between": between, "reuse": reuse, "models": labels,
                     "matrices": matrices}
    return out


def _source_label(run: Run, sources: list[Run]) -> str:
    return next(f"source/{s.seed}" for s in sources if s.workdir == run.source_workdir)


def evolution_results(config, targets: list[Run], probes: dict[str, np.ndarray]) -> dict:
    """Per target (largest size) and regime of ``EVOLUTION_REGIMES``: the lowest seed's representation
    evolution ``{"seed", "steps", "vs_init", "vs_final"}``."""
    from jaxfcn.analysis.evolution import representation_evolution
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    out = {}
    for task, runs in largest_size_runs(targets).items():
        for regime in EVOLUTION_REGIMES:
            run = min((r for r in runs if r.regime == regime), key=lambda r: r.seed, default=None)
            if run is None:
                continue
            evo = representation_evolution(run.workdir, probes[task], layers)
            out.setdefault(task_label(task), {})[regime] = {
                "seed": run.seed, "steps": evo["steps"], "vs_init": evo["vs_init"], "vs_final": evo["vs_final"]}
    return out


def analyse(config, sources: list[Run], targets: list[Run], out_dir: str, progress: bool = True) -> dict:
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    encoder_layers = [l for l in layers if l.startswith("enc_")] + ["bottleneck"]
    probes = {task: _probe_images(task, config, config.study.probe_images) for task in largest_size_runs(targets)}
    return {"layers": layers, "encoder_layers": encoder_layers,
            "filters": filter_rows(sources, targets, progress), "cka": cka_results(config, sources, targets, probes),
            "evolution": evolution_results(config, targets, probes)}


def prediction_examples(results, config) -> list:
    """(title, image, reference, prediction) middle axial slices of each target's test case, seed 0 models."""
    from jaxfcn.data import open_dataset
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.predict import predict_volume
    from jaxfcn.train.workdir import load_run_config

    examples = []
    for task in dict.fromkeys(r["target"] for r in results["runs"]):
        sizes = [r["train_size"] for r in results["runs"] if r["target"] == task]
        largest = 0 if 0 in sizes else max(sizes)
        for regime in ("random", "transfer", "frozen_random"):
            r = next((x for x in results["runs"] if x["target"] == task and x["regime"] == regime
                      and x["train_size"] == largest and x["seed"] == 0), None)
            if r is None:
                continue
            c = load_run_config(r["workdir"])
            case = open_dataset(c.data, depth=c.model.depth, progress=False).cases("test")[0]
            variables, _ = load_variables(r["workdir"])
            pred = predict_volume(build_model(c.model), variables, case.image, c)
            z = int(np.argmax((case.label > 0).sum(axis=(0, 1))))  # the axial slice with most foreground
            examples.append((f"{task} {regime}", case.image[:, :, z, 0], case.label[:, :, z], pred[:, :, z]))
    return examples


def figures(results, out_dir: str, config=None) -> dict[str, str]:
    """Write every study figure; returns caption → path."""
    d = os.path.join(out_dir, "figures")
    os.makedirs(d, exist_ok=True)
    out = {"Test Dice against target training-set size": figs.dice_vs_size(results, os.path.join(d, "dice_vs_size.png")),
           "Steps to 95% of final validation Dice": figs.time_to_95(results, os.path.join(d, "time_to_95.png")),
           "Relative filter change per layer": figs.filter_change(results, os.path.join(d, "filter_change.png")),
           "CKA per layer: reuse, between and within regimes": figs.reuse_per_layer(
               results, os.path.join(d, "cka_per_layer.png"))}
    for task, c in results.get("cka", {}).items():
        out[f"CKA between models per layer ({task})"] = figs.model_heatmaps(
            c["matrices"], c["models"], os.path.join(d, f"cka_models_{task}.png"), title=task)
    for task, by_regime in results.get("evolution", {}).items():
        for regime, evo in by_regime.items():
            steps = evo["steps"]
            out[f"Representation evolution ({task}, {regime}, seed {evo['seed']})"] = plots.evolution(
                {k: (steps, v) for k, v in evo["vs_init"].items()}, {k: (steps, v) for k, v in evo["vs_final"].items()},
                f"{task} {regime} seed {evo['seed']}: CKA per layer over training",
                os.path.join(d, f"evolution_{task}_{regime}.png"))
    if config is not None:
        examples = prediction_examples(results, config)
        if examples:
            out["Example test predictions (middle axial slice with most foreground)"] = figs.prediction_examples(
                examples, os.path.join(d, "predictions.png"))
    return out
