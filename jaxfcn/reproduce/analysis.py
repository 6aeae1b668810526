"""The study's measurements beyond Dice: filter change and randomness, CKA between models with its null
baselines, and representation evolution.

CKA (claims 5a–5c), per target at its largest training size:

- Estimator: ``study.cka_estimator`` (default ``"debiased"``: linear CKA from the unbiased HSIC of Song
  et al. 2012; ``"biased"`` only to compare with the artefact it has when probes ≪ features).
- Features (:mod:`jaxfcn.analysis.features`), by ``study.cka_convention``:

  - ``"positions"`` (default): rows = ``study.cka_positions_per_image`` seeded spatial positions of every
    probe image (the same input-grid positions for every model and layer, mapped onto each layer's grid),
    columns = the layer's channels. Two untrained networks are far apart under it, so training has room to
    show (the reason it is the default: see the Deviations of ``jaxfcn.reproduce.claims``). With
    ``study.cka_positions_within = "nonzero"`` (default) the positions are drawn only where the probe image
    is nonzero (the imaged anatomy; about two thirds of a built-in probe slice is background, exactly 0,
    and identical background rows are a block of agreement that every network shares).
  - ``"images"``: rows = the probe images, columns = one layer's flattened H·W·C activations, at most
    ``study.cka_max_features`` columns per layer (seeded spatial positions with all channels). Random
    convolutional features preserve the input's image-to-image similarity, so two untrained networks
    already score ≈ 0.9 under it.
- Probes: ``study.probe_images`` validation images of the target, a seeded subset
  (:func:`jaxfcn.analysis.features.probe_images`), the same for every model.
- Models: every regime's seeds (final parameters), the transfer seeds' own source models, and the
  **untrained** networks of the random-init seeds (their step-0 snapshots: independent initialisations
  of the same architecture). Diverged runs are left out.
- Each (model, layer) is reduced at once to its centred Gram matrix (n × n,
  :func:`jaxfcn.analysis.cka.centred_grams`), so memory does not grow with the layer's width, and CKA
  between any two models is one inner product of Grams.
- Permutation null per layer: CKA(model a, model b with its probe rows shuffled) for
  ``study.cka_permutations`` draws spread over the pairs of trained models
  (:func:`jaxfcn.analysis.cka.permuted_cka`); its mean and 95th percentile go beside every value.

``results["cka"][target]`` = ``{"layers", "models", "seeds", "members": {group: [model index or None per
seed]}, "matrices": {layer: M×M}, "permutation_null": {layer: {mean, sd, q95, q99, draws}}}`` (the schema
of :mod:`jaxfcn.reproduce.claims`); ``results["cka_settings"]`` records the estimator and conventions.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from collections import defaultdict

import numpy as np

from jaxfcn.analysis.features import POSITION_REGIONS
from jaxfcn.plots import study as figs
from jaxfcn.reproduce.grid import Run, task_label

FILTER_REGIMES = ("random",)  # target regimes whose filters are tested (plus the source runs)
EVOLUTION_REGIMES = ("random", "transfer", "frozen_random")
CKA_ESTIMATORS = ("debiased", "biased")
# Defaults of the study's CKA settings when a config does not set them (see the module docstring).
CKA_DEFAULTS = {"cka_estimator": "debiased", "cka_convention": "positions", "cka_positions_per_image": 16,
                "cka_positions_within": "nonzero", "cka_max_features": 16384, "cka_permutations": 200,
                "cka_null_widths": ()}
FEATURE_CONVENTIONS = {
    "positions": ("positions: rows = {positions_per_image} seeded spatial positions of each probe image (the "
                  "same input-grid positions for every model and layer; drawn from {positions_within} "
                  "positions), columns = the layer's channels"),
    "images": ("images: rows = probe images, columns = one layer's flattened H·W·C activations (at most "
               "{max_features} columns: seeded spatial positions, all channels, the same for every model)")}


def study_setting(config, key: str):
    """``config.study.<key>``, or the study's default for a config that does not set it."""
    return config.study.get(key, CKA_DEFAULTS.get(key))


def check_settings(config) -> None:
    """The study's CKA settings, checked before anything trains (UserError naming the key)."""
    from jaxfcn.errors import UserError

    estimator = study_setting(config, "cka_estimator")
    if estimator not in CKA_ESTIMATORS:
        raise UserError(f"study.cka_estimator={estimator!r}: choose from {', '.join(CKA_ESTIMATORS)}")
    minimum = 4 if estimator == "debiased" else 2  # the unbiased HSIC divides by n(n−3)
    if int(config.study.probe_images) < minimum:
        raise UserError(f"study.probe_images={config.study.probe_images}: {estimator} CKA needs at least {minimum}")
    convention = study_setting(config, "cka_convention")
    if convention not in FEATURE_CONVENTIONS:
        raise UserError(f"study.cka_convention={convention!r}: choose from {', '.join(FEATURE_CONVENTIONS)}")
    within = study_setting(config, "cka_positions_within")
    if within not in POSITION_REGIONS:
        raise UserError(f"study.cka_positions_within={within!r}: choose from {', '.join(POSITION_REGIONS)}")
    if int(study_setting(config, "cka_positions_per_image")) < 1:
        raise UserError(f"study.cka_positions_per_image={study_setting(config, 'cka_positions_per_image')}: "
                        "must be ≥ 1")
    if int(study_setting(config, "cka_max_features")) < 1:
        raise UserError(f"study.cka_max_features={study_setting(config, 'cka_max_features')}: must be ≥ 1")
    widths = study_setting(config, "cka_null_widths")
    if any(int(w) < 1 for w in widths):
        raise UserError(f"study.cka_null_widths={tuple(widths)}: widths must be ≥ 1")
    if int(study_setting(config, "cka_permutations")) < 0:
        raise UserError(f"study.cka_permutations={study_setting(config, 'cka_permutations')}: must be ≥ 0")


def cka_settings(config, probes: dict[str, int]) -> dict:
    check_settings(config)
    estimator = study_setting(config, "cka_estimator")
    convention = study_setting(config, "cka_convention")
    max_features = int(study_setting(config, "cka_max_features"))
    per_image = int(study_setting(config, "cka_positions_per_image"))
    within = study_setting(config, "cka_positions_within")
    return {"estimator": estimator, "kernel": "linear", "probes": probes, "probe_split": "val",
            "convention": convention, "max_features": max_features, "positions_per_image": per_image,
            "positions_within": within,
            "feature_convention": FEATURE_CONVENTIONS[convention].format(
                max_features=max_features, positions_per_image=per_image,
                positions_within="all" if within == "all" else "the probe image's nonzero (anatomy)"),
            "permutations": int(study_setting(config, "cka_permutations")),
            "null_widths": [int(w) for w in study_setting(config, "cka_null_widths")],
            "untrained_baseline": "independently initialised, untrained networks: the step-0 parameters of "
                                  "the random-init seeds, on the same probe images",
            "permutation_baseline": "CKA(model a, model b with its probe rows shuffled), over pairs of "
                                    "trained models"}


def feature_options(settings: dict) -> dict:
    """Keyword arguments of :func:`jaxfcn.analysis.features.extract_features` for the study's convention."""
    if settings.get("convention", "images") == "positions":
        return {"convention": "positions", "positions_per_image": settings["positions_per_image"],
                "positions_within": settings.get("positions_within", "all")}
    return {"convention": "images", "max_features": settings["max_features"]}


def is_ok(run: Run, status: dict) -> bool:
    return status.get(run.workdir, "ok") == "ok"


def largest_size_runs(targets: list[Run]) -> dict[str, list[Run]]:
    """Per target task, the runs at its largest training size (0 = all is the largest)."""
    out = defaultdict(list)
    for task in dict.fromkeys(r.task for r in targets):
        sizes = [r.train_size for r in targets if r.task == task]
        largest = 0 if 0 in sizes else max(sizes)
        out[task] = [r for r in targets if r.task == task and r.train_size == largest]
    return out


def filter_rows(sources: list[Run], targets: list[Run], status: dict) -> list[dict]:
    from jaxfcn.analysis.filters import kernel_leaves, parameter_changes, randomness_tests
    from jaxfcn.train.checkpoint import load_params, snapshot_steps
    from jaxfcn.train.workdir import load_run_config

    runs = list(sources) + [r for rs in largest_size_runs(targets).values() for r in rs if r.regime in FILTER_REGIMES]
    rows = []
    for run in (r for r in runs if is_ok(r, status)):
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


def probe_set(task: str, config, count: int) -> np.ndarray:
    """The target's probe images: a seeded subset of its validation split (the same for every model)."""
    from jaxfcn.analysis.features import probe_images
    from jaxfcn.data import open_dataset

    c = config.copy_and_resolve_references()
    c.data.task = task
    return probe_images(open_dataset(c.data, depth=c.model.depth, progress=False), count, seed=0)


def _model_grams(workdir: str, step, images: np.ndarray, layers: list[str], settings: dict) -> dict:
    """{layer: centred Gram (n, n)} of one model's parameters at ``step`` (None = final)."""
    from jaxfcn.analysis.cka import centred_grams
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.workdir import load_run_config

    variables, _ = load_variables(workdir, step)
    feats = extract_features(build_model(load_run_config(workdir).model), variables, images, layers,
                             **feature_options(settings))
    grams, _ = centred_grams([feats[layer] for layer in layers], debiased=settings["estimator"] == "debiased",
                             labels=[f"{workdir}:{layer}" for layer in layers])
    return dict(zip(layers, grams))


def _cka_models(runs: list[Run], sources: list[Run], status: dict, seeds: list[int]) -> tuple[dict, dict]:
    """(label → (workdir, step), group → [label or None per seed]) of one target's CKA models."""
    models, members = {}, {}
    for regime in dict.fromkeys(r.regime for r in runs):
        by_seed = {r.seed: r for r in runs if r.regime == regime and is_ok(r, status)}
        members[regime] = [f"{regime}/{s}" if s in by_seed else None for s in seeds]
        models.update({f"{regime}/{s}": (r.workdir, None) for s, r in by_seed.items()})
    by_source = {s.workdir: s for s in sources if is_ok(s, status)}
    transfer = {r.seed: r for r in runs if r.regime == "transfer" and r.source_workdir in by_source}
    members["source"] = [f"source/{s}" if s in transfer else None for s in seeds]
    models.update({f"source/{s}": (r.source_workdir, None) for s, r in transfer.items()})
    random = {r.seed: r for r in runs if r.regime == "random"}  # step 0 exists even if training diverged later
    members["untrained"] = [f"untrained/{s}" if s in random else None for s in seeds]
    models.update({f"untrained/{s}": (r.workdir, 0) for s, r in random.items()})
    return models, members


def cka_results(config, sources: list[Run], targets: list[Run], probes: dict[str, np.ndarray], status: dict,
                settings: dict, progress: bool = True) -> dict:
    from tqdm import tqdm

    from jaxfcn.analysis.cka import cka_from_grams, permuted_cka, random_permutations
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    seeds = sorted({r.seed for r in targets})
    out = {}
    for task, runs in largest_size_runs(targets).items():
        models, members = _cka_models(runs, sources, status, seeds)
        if len(models) < 2:
            continue
        labels = list(models)
        grams = {}
        for label in tqdm(labels, desc=f"CKA {task_label(task)}", unit="model", disable=not progress,
                          dynamic_ncols=True, leave=False):
            grams[label] = _model_grams(*models[label], probes[task], layers, settings)
        index = {label: i for i, label in enumerate(labels)}
        trained = [l for l in labels if not l.startswith("untrained/")] or labels
        pairs = list(itertools.combinations(trained, 2)) or [(trained[0], trained[0])]  # one model: itself, shuffled
        rows = len(grams[labels[0]][layers[0]])  # probes × positions per image under "positions"
        matrices, null = {}, {}
        for k, layer in enumerate(layers):
            stack = np.stack([grams[l][layer] for l in labels])
            matrices[layer] = np.round(cka_from_grams(stack), 6).tolist()
            null[layer] = _permutation_summary(
                [permuted_cka(grams[a][layer], grams[b][layer], perms) for (a, b), perms in
                 zip(pairs, _spread(random_permutations(rows, settings["permutations"], seed=k),
                                    len(pairs)))])
        out[task_label(task)] = {
            "layers": layers, "models": labels, "seeds": seeds, "probes": int(len(probes[task])),
            "rows": int(rows),
            "members": {g: [index[m] if m is not None else None for m in ms] for g, ms in members.items()},
            "matrices": matrices, "permutation_null": null}
    return out


def _spread(perms: np.ndarray, parts: int) -> list[np.ndarray]:
    """The permutations dealt round-robin over ``parts`` model pairs."""
    return [perms[i::parts] for i in range(parts)] if parts else []


def _permutation_summary(values: list[np.ndarray]) -> dict:
    v = np.concatenate(values) if values else np.zeros(0)
    if not v.size:
        return {"mean": None, "sd": None, "q95": None, "q99": None, "draws": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "q95": float(np.quantile(v, 0.95)), "q99": float(np.quantile(v, 0.99)), "draws": int(v.size)}


def evolution_results(config, targets: list[Run], probes: dict[str, np.ndarray], status: dict,
                      settings: dict) -> dict:
    """Per target (largest size) and regime of ``EVOLUTION_REGIMES``: the lowest trained seed's
    representation evolution ``{"seed", "steps", "vs_init", "vs_final"}``, with the study's estimator."""
    from jaxfcn.analysis.evolution import representation_evolution
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    out = {}
    for task, runs in largest_size_runs(targets).items():
        for regime in EVOLUTION_REGIMES:
            run = min((r for r in runs if r.regime == regime and is_ok(r, status)), key=lambda r: r.seed,
                      default=None)
            if run is None:
                continue
            evo = representation_evolution(run.workdir, probes[task], layers,
                                           debiased=settings["estimator"] == "debiased",
                                           feature_options=feature_options(settings))
            out.setdefault(task_label(task), {})[regime] = {
                "seed": run.seed, "steps": evo["steps"], "vs_init": evo["vs_init"], "vs_final": evo["vs_final"]}
    return out


def analyse(config, sources: list[Run], targets: list[Run], status: dict, progress: bool = True) -> dict:
    """Filters, CKA and evolution of the study's trained runs (``status``: workdir → run status)."""
    from jaxfcn.models import layer_names

    layers = layer_names(config.model.depth)
    encoder_layers = [l for l in layers if l.startswith("enc_")] + ["bottleneck"]
    probes = {task: probe_set(task, config, config.study.probe_images) for task in largest_size_runs(targets)}
    settings = cka_settings(config, {task_label(t): int(len(p)) for t, p in probes.items()})
    return {"layers": layers, "encoder_layers": encoder_layers, "cka_settings": settings,
            "filters": filter_rows(sources, targets, status),
            "cka": cka_results(config, sources, targets, probes, status, settings, progress),
            "cka_untrained_by_width": width_null_results(config, probes, settings),
            "evolution": evolution_results(config, targets, probes, status, settings)}


def width_null_results(config, probes: dict[str, np.ndarray], settings: dict) -> dict:
    """Per target: the untrained-network CKA baseline at each of ``study.cka_null_widths`` (empty: none),
    on the target's probe images with the study's estimator and convention
    (:func:`jaxfcn.analysis.width_null.untrained_cka_by_width`; the study's own width is marked).

    Targets with the same probe images get the same result, computed once: an untrained network never
    sees labels (the built-in targets share their val images, so their three baselines are one)."""
    from jaxfcn.analysis.width_null import untrained_cka_by_width

    if not settings["null_widths"]:
        return {}
    model_config = config.model.copy_and_resolve_references()
    # The head is not a compared layer, and flax draws each module's parameters from its own path, so the
    # class count changes no compared feature; any resolved value builds the model.
    model_config.num_classes = max(1, int(model_config.num_classes))
    out, by_images = {}, {}
    for task, images in probes.items():
        key = (images.shape, images.dtype.str, hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest())
        if key not in by_images:
            by_images[key] = dict(untrained_cka_by_width(
                model_config, images, settings["null_widths"], debiased=settings["estimator"] == "debiased",
                feature_options=feature_options(settings)), study_width=int(config.model.base_width))
        out[task_label(task)] = by_images[key]
    return out


def prediction_examples(results, config, is_real) -> list:
    """(title, image, reference, prediction) axial slices of each target's real test case (else its first),
    from the lowest trained seed of random, transfer and frozen_random at the largest size."""
    from jaxfcn.data import open_dataset
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.inference import predict_volume
    from jaxfcn.train.workdir import load_run_config

    examples = []
    ok = [r for r in results["runs"] if r.get("status") == "ok"]
    for task in dict.fromkeys(r["target"] for r in ok):
        sizes = [r["train_size"] for r in ok if r["target"] == task]
        largest = 0 if 0 in sizes else max(sizes)
        for regime in ("random", "transfer", "frozen_random"):
            r = min((x for x in ok if x["target"] == task and x["regime"] == regime and x["train_size"] == largest),
                    key=lambda x: x["seed"], default=None)
            if r is None:
                continue
            c = load_run_config(r["workdir"])
            cases = open_dataset(c.data, depth=c.model.depth, progress=False).cases("test")
            case = next((x for x in cases if is_real(x.case_id)), cases[0])
            variables, _ = load_variables(r["workdir"])
            pred = predict_volume(build_model(c.model), variables, case.image, c)
            z = int(np.argmax((case.label > 0).sum(axis=(0, 1))))  # the axial slice with most foreground
            examples.append((f"{task} {regime} ({case.case_id})", case.image[:, :, z, 0], case.label[:, :, z],
                             pred[:, :, z]))
    return examples


def figures(results, out_dir: str, config=None, is_real=None) -> dict[str, str]:
    """Write every study figure; returns caption → path."""
    d = os.path.join(out_dir, "figures")
    os.makedirs(d, exist_ok=True)
    out = {"Test Dice against target training-set size (mean and 95% interval over seeds × test subjects)":
               figs.dice_vs_size(results, os.path.join(d, "dice_vs_size.png")),
           "Claim 1: steps to the common target and area under the val-Dice curve":
               figs.time_to_target(results, os.path.join(d, "time_to_target.png")),
           "Relative filter change per layer": figs.filter_change(results, os.path.join(d, "filter_change.png"))}
    if results.get("cka_summary"):
        out["CKA per layer with the untrained-network and permutation nulls"] = figs.cka_per_layer(
            results, os.path.join(d, "cka_per_layer.png"))
    if results.get("cka_untrained_by_width"):
        out["The untrained-network CKA baseline against base width (the study's width marked)"] = \
            figs.untrained_by_width(results, os.path.join(d, "cka_untrained_by_width.png"))
    for task, c in results.get("cka", {}).items():
        out[f"CKA between models per layer ({task}; untrained networks included)"] = figs.model_heatmaps(
            c, os.path.join(d, f"cka_models_{task}.png"), title=task)
    for task, by_regime in results.get("evolution", {}).items():
        for regime, evo in by_regime.items():
            out[f"Representation evolution ({task}, {regime}, seed {evo['seed']})"] = figs.evolution(
                evo, results.get("cka_summary", {}).get(task, {}), f"{task} {regime} seed {evo['seed']}",
                os.path.join(d, f"evolution_{task}_{regime}.png"))
    if config is not None:
        examples = prediction_examples(results, config, is_real or (lambda case_id: False))
        if examples:
            out["Example test predictions (real test image where there is one; axial slice with most foreground)"] = \
                figs.prediction_examples(examples, os.path.join(d, "predictions.png"))
    return out
