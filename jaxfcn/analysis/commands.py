"""CLI: ``jaxfcn analyze cka | filters | evolution`` over trained workdirs.

    jaxfcn analyze cka --runs runs/a runs/b runs/c --out out/cka          # all runs × all layers, one CKA call
    jaxfcn analyze filters --runs runs/a --out out/filters                # change per layer + randomness tests
    jaxfcn analyze evolution --run runs/a --out out/evolution             # CKA of each snapshot vs init / final
    jaxfcn analyze transfer --out out/transfer_controls                   # transfer controls + step-0 diagnostics

Heavy modules (jax, tfds, matplotlib) are imported inside the handlers so ``jaxfcn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import csv
import io
import os

from jaxfcn.errors import UserError
from jaxfcn.files import write_bytes_atomic, write_json_atomic, write_text_atomic

FIRST_LAYER = "encoder/block_0/conv_0"
ESTIMATORS = ("debiased", "biased")  # CKA estimators of every analysis
CKA_ESTIMATORS = ESTIMATORS + ("minibatch",)
RBF_BANDWIDTHS = ("kornblith", "distinct_pairs")  # jaxfcn.analysis.cka.RBF_BANDWIDTHS (not imported: no jax at --help)

ANALYZE_EPILOG = """\
examples:
  jaxfcn analyze cka --runs runs/sub_random runs/sub_transfer --out out/cka
  jaxfcn analyze cka --runs runs/a runs/b --layers enc_0 bottleneck --step 100 --out out/cka100
  jaxfcn analyze cka --runs runs/a runs/b --probes 1024 --estimator minibatch --minibatch-size 128 --out out/big
  jaxfcn analyze filters --runs runs/tissue --out out/filters
  jaxfcn analyze evolution --run runs/tissue --out out/evolution
"""


# ------------------------------------------------------------------------------------------ parser
def _add_probe_args(p, estimators=ESTIMATORS) -> None:
    g = p.add_argument_group("representations")
    g.add_argument("--data", metavar="TASK|PATH", help="probe images from this dataset's validation split "
                   "(default: the first run's training data)")
    g.add_argument("--probes", type=int, default=64, help="number of probe images (default 64)")
    g.add_argument("--probe-seed", type=int, default=0, help="seed of the probe subset (default 0)")
    g.add_argument("--convention", choices=("images", "positions"), default="images",
                   help="rows = probe images × columns = H·W·C (default), or rows = sampled positions × columns = C")
    g.add_argument("--max-features", type=int, default=16384,
                   help="images convention: at most this many columns per layer (seeded positions; 0 = all)")
    g.add_argument("--positions-per-image", type=int, default=64, help="positions convention: rows per image")
    g.add_argument("--kernel", choices=("linear", "rbf"), default="linear", help="CKA kernel (default linear)")
    g.add_argument("--estimator", choices=estimators, default="debiased",
                   help="debiased: unbiased HSIC (Song et al. 2012; centred on 0 for unrelated representations, "
                        "default); biased: HSIC of Gretton et al. 2005, near 1 for unrelated representations when "
                        "probes ≪ features (compare only with its own null)"
                        + ("; minibatch: unbiased HSIC summed over probe batches (Nguyen et al. 2021), memory of "
                           "one batch" if "minibatch" in estimators else ""))
    g.add_argument("--batch-size", type=int, default=8, help="probe images per forward pass")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="CKA between runs and layers, filter change and randomness, representation evolution",
        description="Analyses of trained workdirs (claims 3 and 5 of the paper).", epilog=ANALYZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True

    c = sub.add_parser("cka", help="CKA between every (run, layer) pair, in one computation",
                       description="Linear/RBF CKA between all layers of all runs (same architecture) on a fixed "
                                   "probe set. Writes OUT/cka.npz (cka[run_a, layer_a, run_b, layer_b]), "
                                   "OUT/cka.json (labels) and heatmaps: layer×layer per run pair, run×run per layer.")
    c.add_argument("--runs", nargs="+", required=True, metavar="WORKDIR", help="trained runs (same architecture)")
    c.add_argument("--layers", nargs="+", metavar="LAYER", help="layer names (default: all; see --help of the model)")
    c.add_argument("--step", type=int, default=None, help="snapshot/checkpoint step of every run (default: final)")
    c.add_argument("--out", required=True, help="output directory")
    _add_probe_args(c, estimators=CKA_ESTIMATORS)
    c.add_argument("--minibatch-size", type=int, default=64, metavar="B",
                   help="--estimator minibatch: probe images per batch (≥ 4; default 64)")
    c.add_argument("--rbf-bandwidth", choices=RBF_BANDWIDTHS, default="kornblith",
                   help="RBF bandwidth: median squared distance over all n² pairs as in Kornblith et al.'s "
                        "reference (default), or median distance over distinct pairs")
    c.add_argument("--permutations", type=int, default=200, metavar="P",
                   help="permutation-null draws per layer (probe rows shuffled in one representation; "
                        "0 = none; not with --estimator minibatch)")
    c.set_defaults(func=_cka)

    f = sub.add_parser("filters", help="relative change of every kernel, and 'do trained filters look random?'",
                       description="Per run and kernel: ‖W_t−W_0‖/‖W_0‖ and cosine over the snapshots; KS, "
                                   "spatial-smoothness and Marchenko–Pastur spectrum tests of the final filters "
                                   "against fresh draws of the initialiser (Holm-corrected per run). Writes "
                                   "OUT/filters.csv|json, OUT/changes.csv and PNGs.")
    f.add_argument("--runs", nargs="+", required=True, metavar="WORKDIR")
    f.add_argument("--out", required=True)
    f.add_argument("--step", type=int, default=None, help="step of the tested filters (default: final snapshot)")
    f.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate per run (default 0.05)")
    f.add_argument("--null-draws", type=int, default=200, help="minimum fresh draws per layer (default 200)")
    f.add_argument("--seed", type=int, default=0, help="seed of the fresh draws")
    f.set_defaults(func=_filters)

    e = sub.add_parser("evolution", help="CKA of each layer at each snapshot vs initialisation and vs final",
                       description="Writes OUT/evolution.json, OUT/evolution.npz and OUT/evolution.png.")
    e.add_argument("--run", required=True, metavar="WORKDIR")
    e.add_argument("--layers", nargs="+", metavar="LAYER")
    e.add_argument("--out", required=True)
    _add_probe_args(e)
    e.set_defaults(func=_evolution)

    t = sub.add_parser("transfer", help="transfer controls (≥5 seeds each) and step-0 diagnostics of transferred models",
                       description="Trains the controls of jaxfcn.reproduce.controls (random init, transfer of "
                                   "encoder / encoder+decoder, same-task positive controls, lr and warm-up with "
                                   "matched random init, early source, head initialisations) as K-seed programs, "
                                   "evaluates them, and diagnoses every distinct starting point at step 0 on target "
                                   "data. Writes OUT/results.json, OUT/controls.md and OUT/figures/*.png; re-run "
                                   "to resume.")
    t.add_argument("--config", help="controls config (default: configs/transfer_controls.py)")
    t.add_argument("--out", required=True, help="output directory (created; re-run to resume)")
    t.add_argument("--controls", nargs="+", metavar="NAME", help="only these controls (and the random-init "
                   "controls they are compared with)")
    t.add_argument("--seeds", type=int, help="seeds per control (sets study.seeds)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set study.target_steps=400")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_transfer)


# ----------------------------------------------------------------------------------------- helpers
def _labels(workdirs: list[str]) -> list[str]:
    """Short unique run labels: the directory names (with their parent when names repeat)."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(set(names)) < len(names):
        names = ["/".join(os.path.normpath(os.path.abspath(w)).split(os.sep)[-2:]) for w in workdirs]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _load_configs(workdirs: list[str], same_architecture: bool):
    from jaxfcn.config import architecture_of
    from jaxfcn.train.workdir import load_run_config

    configs = [load_run_config(w) for w in workdirs]
    if same_architecture:
        ref = architecture_of(configs[0])
        for w, c in zip(workdirs[1:], configs[1:]):
            arch = architecture_of(c)
            if arch != ref:
                diff = ", ".join(f"{k} {ref[k]} vs {arch[k]}" for k in ref if ref[k] != arch.get(k))
                raise UserError(f"--runs: {w} has a different architecture than {workdirs[0]} ({diff})")
    return configs


def _layers(config, requested) -> list[str]:
    from jaxfcn.models import layer_names

    available = layer_names(config.model.depth)
    if not requested:
        return available
    for layer in requested:
        if layer not in available:
            raise UserError(f"--layers: unknown layer '{layer}' (this model has: {', '.join(available)})")
    return list(dict.fromkeys(requested))


def _probe_images(config, args):
    import numpy as np

    from jaxfcn.analysis.features import probe_images
    from jaxfcn.data import open_dataset

    if args.probes < 4 and args.estimator != "biased":
        raise UserError(f"--probes {args.probes}: debiased CKA needs at least 4 probe images")
    if args.probes < 2:
        raise UserError(f"--probes {args.probes}: need at least 2 probe images")
    c = config.copy_and_resolve_references()
    if args.data:
        c.data.task = args.data
    dataset = open_dataset(c.data, depth=c.model.depth, progress=False)
    if "val" not in dataset.sources or not len(dataset.sources["val"]):
        raise UserError(f"{c.data.task}: no validation examples to use as probes")
    images = probe_images(dataset, args.probes, args.probe_seed)
    if images.shape[-1] != config.model.in_channels:
        raise UserError(f"--data {c.data.task}: images have {images.shape[-1]} channels, the model expects "
                        f"{config.model.in_channels}")
    return np.asarray(images), c.data.task


def _features(workdir: str, config, step, images, layers, args) -> tuple[dict, int]:
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables

    variables, actual = load_variables(workdir, step)
    feats = extract_features(build_model(config.model), variables, images, layers, **_feature_options(args))
    return feats, actual


def _feature_options(args) -> dict:
    """The ``extract_features`` settings given on the command line."""
    return {"convention": args.convention, "max_features": args.max_features or None,
            "positions_per_image": args.positions_per_image, "batch_size": args.batch_size, "seed": args.probe_seed}


def _cka_all(features: list, labels: list[str], args):
    """All-pairs CKA of ``features`` from their centred Grams; representations constant over the probes
    get CKA 0 (reported, not fatal). Returns (matrix, constant labels, grams)."""
    from jaxfcn.analysis.cka import centred_grams, cka_from_grams

    grams, constant = centred_grams(features, kernel=args.kernel, debiased=args.estimator == "debiased",
                                    rbf_bandwidth=args.rbf_bandwidth, labels=labels)
    return cka_from_grams(grams, constant), _note_constant(constant, labels), grams


def _note_constant(constant, labels: list[str]) -> list[str]:
    import numpy as np

    names = [labels[i] for i in np.flatnonzero(constant)]
    for label in names:
        print(f"note: {label} is constant over the probe set; its CKA is reported as 0")
    return names


def _cka_minibatch(workdirs: list[str], configs, images, layers: list[str], labels: list[str], args):
    """Minibatch CKA (unbiased HSIC summed over probe batches): only one batch's features in memory."""
    import numpy as np

    from jaxfcn.analysis.cka import MinibatchCKA
    from jaxfcn.analysis.features import extract_features
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables

    models = []
    for workdir, config in zip(workdirs, configs):
        variables, step = load_variables(workdir, args.step)
        models.append((build_model(config.model), variables, step))
    acc = MinibatchCKA(kernel=args.kernel, debiased=True, rbf_bandwidth=args.rbf_bandwidth, on_constant="zero")
    for batch in _probe_batches(len(images), args.minibatch_size):
        reps = []
        for model, variables, _ in models:
            feats = extract_features(model, variables, images[batch], layers, **_feature_options(args))
            reps += [feats[layer] for layer in layers]
        acc.update(reps)
    matrix = np.asarray(acc.result(), np.float64)
    return matrix, _note_constant(np.diag(matrix) == 0, labels), [step for _, _, step in models]


def _probe_batches(n: int, size: int) -> list[slice]:
    """Consecutive batches of ``size`` probes; a last batch under 4 (too few for unbiased HSIC) joins the one before."""
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 4:
        del bounds[-2]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _permutation_null(grams, runs: int, layers: int, draws: int, seed: int) -> dict:
    """Per layer: CKA(run a, probe-shuffled run b) over ``draws`` permutations spread over the distinct
    run pairs (a run with itself when there is one run). ``{layer index: {mean, sd, q95, q99, draws}}``."""
    import itertools

    import numpy as np

    from jaxfcn.analysis.cka import permuted_cka, random_permutations

    n = grams.shape[-1]
    g = grams.reshape(runs, layers, n, n)
    pairs = list(itertools.combinations(range(runs), 2)) or [(0, 0)]
    out = {}
    for k in range(layers):
        perms = random_permutations(n, draws, seed=seed + k)
        values = np.concatenate([permuted_cka(g[a, k], g[b, k], perms[i::len(pairs)])
                                 for i, (a, b) in enumerate(pairs)])
        out[k] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                  "q95": float(np.quantile(values, 0.95)), "q99": float(np.quantile(values, 0.99)),
                  "draws": int(values.size)}
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _write_json(path: str, obj) -> None:
    write_json_atomic(path, obj, default=float, sort_keys=False)  # keys in the order the analysis lists them


def _write_npz(path: str, **arrays) -> None:
    import numpy as np

    data = io.BytesIO()
    np.savez(data, **arrays)
    write_bytes_atomic(path, data.getvalue())


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("+".join(v) if isinstance(v, list) and k == "rejected" else v) for k, v in row.items()})
    write_text_atomic(path, text.getvalue())


def _representation_settings(args, task: str, n: int) -> dict:
    return {"probes": n, "probe_seed": args.probe_seed, "probe_data": task, "probe_split": "val",
            "convention": args.convention, "max_features": args.max_features or None,
            "positions_per_image": args.positions_per_image if args.convention == "positions" else None,
            "kernel": args.kernel, "estimator": args.estimator,
            "rbf_bandwidth": getattr(args, "rbf_bandwidth", "kornblith") if args.kernel == "rbf" else None}


# ------------------------------------------------------------------------------------------ cka
def _cka(args) -> int:
    import numpy as np

    from jaxfcn.plots import analysis as plots

    if args.estimator == "minibatch" and args.minibatch_size < 4:
        raise UserError(f"--minibatch-size {args.minibatch_size}: unbiased HSIC needs at least 4 probes per batch")
    if args.permutations < 0:
        raise UserError(f"--permutations {args.permutations}: must be ≥ 0")
    configs = _load_configs(args.runs, same_architecture=True)
    layers = _layers(configs[0], args.layers)
    labels = _labels(args.runs)
    images, task = _probe_images(configs[0], args)
    rep_labels = [f"{run}:{layer}" for run in labels for layer in layers]
    r, l = len(labels), len(layers)
    null = None
    if args.estimator == "minibatch":
        matrix, constant, steps = _cka_minibatch(args.runs, configs, images, layers, rep_labels, args)
    else:
        features, steps = [], []
        for workdir, config in zip(args.runs, configs):
            feats, step = _features(workdir, config, args.step, images, layers, args)
            features += [feats[layer] for layer in layers]
            steps.append(step)
        matrix, constant, grams = _cka_all(features, rep_labels, args)
        del features
        if args.permutations:
            null = {layers[k]: v for k, v in _permutation_null(grams, r, l, args.permutations, args.probe_seed).items()}
    os.makedirs(args.out, exist_ok=True)
    cka = matrix.reshape(r, l, r, l)
    _write_npz(os.path.join(args.out, "cka.npz"), cka=cka, runs=np.array(labels), layers=np.array(layers),
               steps=np.array(steps))
    files = {"npz": "cka.npz", "layer_x_layer": [], "run_x_run": []}
    for a in range(r):
        for b in range(a, r):
            name = f"layers_{_safe(labels[a])}__{_safe(labels[b])}.png"
            plots.heatmap(cka[a, :, b, :], layers, layers, f"CKA {labels[a]} (rows) vs {labels[b]} (columns)",
                          os.path.join(args.out, name), xlabel=labels[b], ylabel=labels[a])
            files["layer_x_layer"].append(name)
    if r > 1:
        for k, layer in enumerate(layers):
            name = f"runs_{_safe(layer)}.png"
            title = f"CKA between runs at layer {layer}"
            if null:
                title += f" (permutation null 95%: {null[layer]['q95']:.3f})"
            plots.heatmap(cka[:, k, :, k], labels, labels, title, os.path.join(args.out, name))
            files["run_x_run"].append(name)
    _write_json(os.path.join(args.out, "cka.json"), {
        "runs": [os.path.abspath(w) for w in args.runs], "labels": labels, "layers": layers, "steps": steps,
        "axes": ["run_a", "layer_a", "run_b", "layer_b"], **_representation_settings(args, task, len(images)),
        "minibatch_size": args.minibatch_size if args.estimator == "minibatch" else None,
        "permutation_null": null, "constant_representations": constant, "files": files})
    print(f"wrote {os.path.join(args.out, 'cka.npz')}: {r} runs × {l} layers ({len(images)} probes, "
          f"{args.estimator} {args.kernel} CKA), {len(files['layer_x_layer']) + len(files['run_x_run'])} heatmaps")
    for k, layer in enumerate(layers):
        line = f"  {layer:12s}"
        if r > 1:
            off = cka[:, k, :, k][~np.eye(r, dtype=bool)]
            line += f" mean CKA between runs {off.mean():.3f} (min {off.min():.3f}, max {off.max():.3f})"
        if null:
            line += f"; permutation null {null[layer]['mean']:+.3f} (95% {null[layer]['q95']:.3f})"
        print(line)
    return 0


# -------------------------------------------------------------------------------------- filters
CHANGE_COLUMNS = ["run", "layer", "step", "relative_change", "cosine"]
FILTER_COLUMNS = ["run", "layer", "shape", "step", "relative_change", "cosine", "weight_std", "init_std",
                  "ks_statistic", "ks_p", "smoothness_statistic", "smoothness_null_mean", "smoothness_z",
                  "smoothness_p", "smoothness_p_method", "spectrum_statistic", "spectrum_mp_expectation",
                  "spectrum_z", "spectrum_p", "spectrum_p_method", "fraction_above_mp_edge", "mp_ks_distance",
                  "null_draws", "alpha", "tests_in_family", "rejected", "verdict"]


def _filters(args) -> int:
    import numpy as np

    from jaxfcn.plots import analysis as plots
    from jaxfcn.analysis.filters import (as_filter_bank, kernel_leaves, numpy_draws, parameter_changes,
                                         randomness_tests)
    from jaxfcn.train.checkpoint import load_params, snapshot_steps

    configs = _load_configs(args.runs, same_architecture=False)
    labels = _labels(args.runs)
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: must be in (0, 1)")
    all_steps = {}
    for workdir in args.runs:  # every refusal before anything is written
        steps = all_steps[workdir] = snapshot_steps(workdir)
        if not steps:
            raise UserError(f"{workdir}: no parameter snapshots (train the run first)")
        if args.step is not None and args.step not in steps:
            raise UserError(f"--step {args.step}: {workdir} has no snapshot at that step (snapshots: {steps})")
    os.makedirs(args.out, exist_ok=True)
    changes, table, summary = [], [], {}
    for workdir, config, label in zip(args.runs, configs, labels):
        steps = all_steps[workdir]
        final_step = args.step if args.step is not None else steps[-1]
        used = [s for s in steps if s <= final_step]
        snapshots = {s: load_params(workdir, s) for s in used}
        rows = parameter_changes(snapshots)
        changes += [{"run": label, **row} for row in rows]
        last = {row["layer"]: row for row in rows if row["step"] == final_step}
        spatial = config.model.spatial_dims
        tests = randomness_tests(kernel_leaves(snapshots[final_step]), config.model.kernel_init,
                                 spatial_dims=spatial, alpha=args.alpha, null_draws=args.null_draws, seed=args.seed)
        for t in tests:
            table.append({"run": label, "step": final_step, "relative_change": last[t["layer"]]["relative_change"],
                          "cosine": last[t["layer"]]["cosine"], **t, "shape": "x".join(map(str, t["shape"]))})
        random_like = sum(t["verdict"] == "random-like" for t in tests)
        summary[label] = {"workdir": os.path.abspath(workdir), "step": final_step, "layers": len(tests),
                          "random_like": random_like,
                          "median_relative_change": float(np.median([r["relative_change"] for r in last.values()])),
                          "tests_in_family": tests[0]["tests_in_family"] if tests else 0}
        # figures: change curves, first-layer filters (initial / trained / fresh random)
        series = {layer: ([r["step"] for r in rows if r["layer"] == layer],
                          [r["relative_change"] for r in rows if r["layer"] == layer]) for layer in last}
        plots.curves_vs_step(series, f"{label}: relative change ‖W_t − W_0‖/‖W_0‖ per layer", "relative change",
                             os.path.join(args.out, f"change_{_safe(label)}.png"))
        first = {k: v for k, v in kernel_leaves(snapshots[used[0]]).items()}
        if FIRST_LAYER in first:
            raw0 = first[FIRST_LAYER]
            fresh = numpy_draws(config.model.kernel_init, raw0.shape, 1, np.random.default_rng(args.seed))[0]
            banks = {"initial (step 0)" if used[0] == 0 else f"step {used[0]}": raw0,
                     f"trained (step {final_step})": kernel_leaves(snapshots[final_step])[FIRST_LAYER],
                     "fresh random": fresh}
            plots.filter_grid({k: as_filter_bank(FIRST_LAYER, v, spatial) for k, v in banks.items()},
                              f"{label}: first-layer filters ({FIRST_LAYER}, input channel 0)",
                              os.path.join(args.out, f"first_layer_{_safe(label)}.png"))
    _write_csv(os.path.join(args.out, "changes.csv"), changes, CHANGE_COLUMNS)
    _write_csv(os.path.join(args.out, "filters.csv"), table, FILTER_COLUMNS)
    _write_json(os.path.join(args.out, "filters.json"), {
        "settings": {"alpha": args.alpha, "null_draws": args.null_draws, "seed": args.seed,
                     "multiple_testing": "Holm over all tests (layers × 3) of a run"},
        "summary": summary, "layers": table, "changes": changes})
    print(f"wrote {os.path.join(args.out, 'filters.csv')} and figures")
    for label, s in summary.items():
        print(f"  {label} (step {s['step']}): {s['random_like']}/{s['layers']} kernels random-like "
              f"(alpha {args.alpha}, Holm over {s['tests_in_family']} tests); median relative change "
              f"{s['median_relative_change']:.3f}")
    return 0


# ------------------------------------------------------------------------------------ evolution
def _evolution(args) -> int:
    import numpy as np

    from jaxfcn.plots import analysis as plots
    from jaxfcn.analysis.evolution import representation_evolution

    (config,) = _load_configs([args.run], same_architecture=False)
    layers = _layers(config, args.layers)
    images, task = _probe_images(config, args)
    try:
        evo = representation_evolution(args.run, images, layers, kernel=args.kernel,
                                       debiased=args.estimator == "debiased",
                                       feature_options=_feature_options(args))
    except ValueError as e:
        raise UserError(str(e)) from None
    for label in evo["constant"]:
        print(f"note: {label} is constant over the probe set; its CKA is reported as 0")
    steps, vs_init, vs_final = evo["steps"], evo["vs_init"], evo["vs_final"]
    os.makedirs(args.out, exist_ok=True)
    _write_npz(os.path.join(args.out, "evolution.npz"), cka=evo["cka"], steps=np.array(steps), layers=np.array(layers))
    _write_json(os.path.join(args.out, "evolution.json"), {
        "run": os.path.abspath(args.run), "steps": steps, "layers": layers, "vs_init": vs_init,
        "vs_final": vs_final, "axes": ["step_a", "layer_a", "step_b", "layer_b"],
        **_representation_settings(args, task, len(images)), "constant_representations": evo["constant"]})
    plots.evolution({k: (steps, v) for k, v in vs_init.items()}, {k: (steps, v) for k, v in vs_final.items()},
                    f"{_labels([args.run])[0]}: representation evolution ({len(images)} probes)",
                    os.path.join(args.out, "evolution.png"))
    print(f"wrote {os.path.join(args.out, 'evolution.json')} and evolution.png: {len(steps)} snapshots × "
          f"{len(layers)} layers")
    for layer in layers:
        print(f"  {layer:12s} CKA(init, final) {vs_init[layer][-1]:.3f}")
    return 0


# ------------------------------------------------------------------------------------- transfer
def _transfer(args) -> int:
    from jaxfcn.config import load_config
    from jaxfcn.configs import BUILTIN_CONFIG_DIR
    from jaxfcn.reproduce.controls import run_controls
    from jaxfcn.train.lock import hold

    config = load_config(args.config or os.path.join(BUILTIN_CONFIG_DIR, "transfer_controls.py"), args.overrides)
    if args.seeds is not None:
        config.study.seeds = args.seeds
    with hold(args.out, flag="--out"):  # one writer of OUT at a time, as for runs and studies
        results = run_controls(config, args.out, names=args.controls or (), progress=not args.no_progress)
    print(f"wrote {os.path.join(args.out, 'controls.md')}, results.json and figures/")
    for c in results["controls"]:
        t = c["test_dice"]
        vs = c["vs_random"]
        delta = f"  Δ vs {vs['control']} {vs['test_dice']['diff']:+.3f}" if vs else ""
        print(f"  {c['name']:22s} test Dice {t['mean']:.3f} [{t['low']:.3f}, {t['high']:.3f}]{delta}")
    return 0
