"""Transfer controls: is negative transfer on the built-in targets real, or an artefact of how we transfer?

``jaxfcn analyze transfer --config configs/transfer_controls.py --out OUT`` trains, for one source task and
one target task (``study.source``, ``study.targets[0]``), the conditions of :func:`control_list`, each as
one K-seed program (:func:`jaxfcn.train.multiseed.train_seeds`, ``study.seeds`` seeds), evaluates every
seed on the test split, and runs the step-0 diagnostics of :mod:`jaxfcn.analysis.transfer` on every
distinct starting point. Target seed s always transfers from its own source run, seed
``SOURCE_SEED_OFFSET + s``.

The controls (names are the run folders):

- ``random``: random initialisation, the baseline; ``transfer``: source encoder + decoder, fresh head (the
  study's ``transfer`` regime); ``transfer_encoder``: source encoder only, fresh decoder and head;
- positive controls, from the target's own ``random`` run of the same seed: ``same_task`` (encoder +
  decoder + head) and ``same_task_fresh_head`` (encoder + decoder);
- optimiser changes, each with its matched random-init control: learning rate ×:data:`LOW_LR_SCALE`
  (``random_low_lr`` / ``transfer_low_lr``) and a linear warm-up over :data:`WARMUP_FRACTION` of the
  steps (``random_warmup`` / ``transfer_warmup``);
- source checkpoint: ``transfer_early`` starts from the source's step ``EARLY_SOURCE_FRACTION · steps``;
- head initialisation (:data:`jaxfcn.partition.HEAD_INITS`): ``transfer_zero_head`` and
  ``transfer_probe_head`` (the linear probe of the transferred features, fitted on target training
  pixels), matched by ``random_probe_head`` (the same probe fitted on a fresh init's features). These
  start from a materialised initialisation, ``OUT/inits/<control>/seed_<s>``: an ordinary workdir with
  one parameter snapshot (step 0) holding exactly the composed parameters, from which the run
  transfers all three parts.

Layout::

    OUT/source/<source task>/seed_<1000+s>/     # source pretraining (snapshot at the early step)
    OUT/inits/<control>/seed_<s>/               # materialised starting points (head choices)
    OUT/runs/<target>/<control>/seed_<s>/       # the controls
    OUT/results.json  OUT/controls.md  OUT/figures/{curves,diagnostics}.png

Statistics: per control, mean with a 95 % Student-t interval over seeds
(:func:`jaxfcn.reproduce.stats.mean_interval`); a control against its matched random-init control, the
difference of means with Welch's 95 % interval (:func:`welch_interval`). Re-running resumes: trained and
evaluated seeds are skipped, diagnostics are recomputed (they take seconds).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time

import numpy as np

from jaxfcn.errors import UserError

LOW_LR_SCALE = 0.1
WARMUP_FRACTION = 0.1
EARLY_SOURCE_FRACTION = 0.1
CURVE_FRACTIONS = (0.1, 0.3, 0.5, 1.0)  # val Dice columns of the table (the issue's steps 100/300/500/1000)
DIAGNOSTIC_IMAGES = 32  # target training images for activations and probe fitting
DIAGNOSTIC_BATCHES = 4  # target training batches for the step-0 loss and gradients
PROBE_PIXELS = 512  # training pixels per image for the probe fit
COLLAPSED_DICE = 0.01  # a seed whose final val Dice is below this predicts (almost) only background
PROBE_LAYERS = ("input", "head_input", "bottleneck")
# Source seeds are offset from the target seeds, as in the study's grid: source seed s and random-init
# target seed s would otherwise start from bitwise-equal encoder and decoder weights.
SOURCE_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class Control:
    name: str
    description: str
    init: str = "random"  # random | source (the source task's model) | same_task (the target's random run)
    parts: tuple[str, ...] = ("encoder", "decoder")  # transferred parts
    head: str = "fresh"  # fresh | zero | probe | source (kept from a same-task model)
    source_step: str = "final"  # final | early
    lr_scale: float = 1.0
    warmup: bool = False
    matched_random: str | None = None  # the random-init control with the same optimiser and head settings

    @property
    def start(self) -> tuple:
        """What decides the step-0 parameters (controls with equal starts share their diagnostics)."""
        if self.init == "random":
            return ("random", self.head)
        return (self.init, self.parts, self.head, self.source_step)


def control_list() -> list[Control]:
    """All controls, in table order (``random`` first: every other control's fresh reference)."""
    C = Control
    return [
        C("random", "random init"),
        C("transfer", "transfer encoder + decoder, fresh head (the study's `transfer`)", "source",
          matched_random="random"),
        C("transfer_encoder", "transfer encoder only (fresh decoder and head)", "source", ("encoder",),
          matched_random="random"),
        C("same_task", "positive control: same-task transfer, encoder + decoder + head", "same_task",
          ("encoder", "decoder", "head"), head="source", matched_random="random"),
        C("same_task_fresh_head", "positive control: same-task transfer, encoder + decoder, fresh head",
          "same_task", matched_random="random"),
        C("random_low_lr", f"random init, lr × {LOW_LR_SCALE:g}", lr_scale=LOW_LR_SCALE),
        C("transfer_low_lr", f"transfer, lr × {LOW_LR_SCALE:g}", "source", lr_scale=LOW_LR_SCALE,
          matched_random="random_low_lr"),
        C("random_warmup", f"random init, warm-up {WARMUP_FRACTION:.0%} of steps", warmup=True),
        C("transfer_warmup", f"transfer, warm-up {WARMUP_FRACTION:.0%} of steps", "source", warmup=True,
          matched_random="random_warmup"),
        C("transfer_early", f"transfer from the early source checkpoint ({EARLY_SOURCE_FRACTION:.0%} of its steps)",
          "source", source_step="early", matched_random="random"),
        C("transfer_zero_head", "transfer, zero head", "source", head="zero", matched_random="random"),
        C("random_probe_head", "random init, linear-probe head (then fine-tune all)", head="probe",
          matched_random="random"),
        C("transfer_probe_head", "transfer, linear-probe head (then fine-tune all)", "source", head="probe",
          matched_random="random_probe_head"),
    ]


def select_controls(names) -> list[Control]:
    """The named controls (all when ``names`` is empty), plus the ones they start from or compare with."""
    controls = {c.name: c for c in control_list()}
    if not names:
        return list(controls.values())
    unknown = [n for n in names if n not in controls]
    if unknown:
        raise UserError(f"--controls: unknown control(s) {unknown}; choose from {list(controls)}")
    wanted = set(names) | {"random"}
    for n in names:
        c = controls[n]
        if c.matched_random:
            wanted.add(c.matched_random)
    return [c for c in controls.values() if c.name in wanted]


# --- statistics ------------------------------------------------------------------------------------------

def welch_interval(a, b, level: float = 0.95) -> dict:
    """Difference of means ``mean(a) − mean(b)`` with Welch's interval.

    ``se = sqrt(s_a²/n_a + s_b²/n_b)`` (sample variances, ddof 1), Welch–Satterthwaite degrees of freedom
    ``ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))``, interval ``diff ± t_{(1+level)/2, ν} · se``.
    NaNs are dropped; with fewer than 2 values on a side the interval is NaN.
    """
    from scipy import stats

    a = np.asarray([v for v in a if v is not None and math.isfinite(v)], np.float64)
    b = np.asarray([v for v in b if v is not None and math.isfinite(v)], np.float64)
    nan = float("nan")
    if a.size == 0 or b.size == 0:
        return {"diff": nan, "low": nan, "high": nan, "df": nan}
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {"diff": diff, "low": nan, "high": nan, "df": nan}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff, "df": float("inf")}
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df) * se)
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": float(df)}


def curve_band(curves: list[tuple[list[int], list[float]]], level: float = 0.95) -> dict:
    """Mean val-Dice curve over seeds with its pointwise Student-t interval (steps common to all seeds)."""
    from jaxfcn.reproduce.stats import mean_interval

    steps = sorted(set.intersection(*(set(s) for s, _ in curves))) if curves else []
    lookup = [dict(zip(s, v)) for s, v in curves]
    rows = [mean_interval([d[step] for d in lookup], level) for step in steps]
    return {"steps": steps, "mean": [r["mean"] for r in rows], "low": [r["low"] for r in rows],
            "high": [r["high"] for r in rows]}


# --- configs of the runs ---------------------------------------------------------------------------------

def early_step(config) -> int:
    return max(1, round(config.study.source_steps * EARLY_SOURCE_FRACTION))


def source_config(config):
    c = config.copy_and_resolve_references()
    c.data.task = config.study.source
    c.train.steps = config.study.source_steps
    c.train.snapshot_steps = str(early_step(config))
    c.train.init, c.train.freeze = "random", ()
    c.train.seed, c.train.num_seeds = SOURCE_SEED_OFFSET, config.study.seeds
    return c


def target_task(config) -> str:
    if not config.study.targets:
        raise UserError("study.targets: name one target task")
    return config.study.targets[0]


def control_config(config, control: Control, init_dir: str | None):
    """The K-seed program config of ``control`` (``init_dir``: seed 0's ``train.init``)."""
    c = config.copy_and_resolve_references()
    c.data.task = target_task(config)
    c.train.steps = config.study.target_steps
    c.train.learning_rate = config.train.learning_rate * control.lr_scale
    c.train.warmup_steps = round(WARMUP_FRACTION * c.train.steps) if control.warmup else 0
    c.train.freeze, c.train.seed, c.train.num_seeds = (), 0, config.study.seeds
    c.train.init = init_dir or "random"
    c.train.init_step = -1
    c.train.transfer_parts = control.parts
    c.train.reinit_head = control.head == "fresh"
    if control.head in ("zero", "probe"):  # the materialised start holds every part
        c.train.transfer_parts, c.train.init_step = ("encoder", "decoder", "head"), 0
    elif control.source_step == "early":
        c.train.init_step = early_step(config)
    return c


# --- the run ---------------------------------------------------------------------------------------------

class Layout:
    def __init__(self, out_dir: str, config):
        from jaxfcn.reproduce.grid import task_label

        self.out = out_dir
        self.source = os.path.join(out_dir, "source", task_label(config.study.source))
        self.target = task_label(target_task(config))

    def run(self, control: str) -> str:
        return os.path.join(self.out, "runs", self.target, control)

    def init(self, control: str) -> str:
        return os.path.join(self.out, "inits", control)

    def source_run(self, seed: int) -> str:
        """The source run that target seed ``seed`` transfers from."""
        return _seed_dir(self.source, SOURCE_SEED_OFFSET + seed)


def _seed_dir(program: str, seed: int) -> str:
    from jaxfcn.train.multiseed import seed_workdir

    return seed_workdir(program, seed)


def train_program(c, program: str, dataset, seed_inits: dict[int, str] | None, programs=None) -> None:
    from jaxfcn.train.multiseed import program_seeds, train_seeds
    from jaxfcn.train.workdir import trained_to

    if all(trained_to(_seed_dir(program, s), c.train.steps) for s in program_seeds(c.train)):
        return
    train_seeds(c, program, dataset=dataset, programs=programs, progress=False, seed_inits=seed_inits)


def open_data(config):
    from jaxfcn.train.loop import open_training_data

    return open_training_data(config, progress=False)


def materialise_start(config, control: Control, layout: Layout, dataset, seeds: list[int]) -> str:
    """Write ``OUT/inits/<control>/seed_<s>``: the fresh target init of seed s (with the source parts at the
    chosen step, for a transfer control) and the control's head. Returns the folder of the seeds."""
    from jaxfcn.models import build_model
    from jaxfcn.partition import transfer_params, zero_head
    from jaxfcn.train import checkpoint
    from jaxfcn.train import workdir as wd
    from jaxfcn.config_checks import resolve_config
    from jaxfcn.train.step import init_train_state

    base = control_config(config, control, None)
    base.train.transfer_parts, base.train.init_step = control.parts, -1
    root = layout.init(control.name)
    step = early_step(config) if control.source_step == "early" else None
    for s in seeds:
        directory = _seed_dir(root, s)
        if checkpoint.snapshot_steps(directory) == [0]:
            continue
        c = resolve_config(base, dataset.info)
        c.train.seed = s
        model = build_model(c.model)
        params = init_train_state(model, c).params
        if control.init == "source":
            params = transfer_params(params, checkpoint.load_params(layout.source_run(s), step), control.parts)
        if control.head == "zero":
            params = zero_head(params)
        else:
            from jaxfcn.analysis.transfer import fit_probe_head

            params = fit_probe_head(model, params, *diagnostic_examples(dataset, "train", s), c.model.num_classes,
                                    pixels_per_image=PROBE_PIXELS, seed=s)
        tmp = directory + ".tmp"
        if os.path.isdir(tmp):
            import shutil

            shutil.rmtree(tmp)
        wd.create_workdir(tmp, c, dataset.info)
        manager = checkpoint.snapshot_manager(tmp)
        try:
            checkpoint.save_snapshot(manager, 0, {"params": params})
        finally:
            manager.close()
        os.replace(tmp, directory)
    return root


def start_runs(config, control: Control, layout: Layout, dataset, seeds: list[int]) -> dict[int, str] | None:
    """``{seed: the run it starts from}`` (None: a plain random initialisation)."""
    if control.head in ("zero", "probe"):  # a materialised start, random init or transfer
        root = materialise_start(config, control, layout, dataset, seeds)
        return {s: _seed_dir(root, s) for s in seeds}
    if control.init == "source":
        return {s: layout.source_run(s) for s in seeds}
    if control.init == "same_task":
        return {s: _seed_dir(layout.run("random"), s) for s in seeds}
    return None


def diagnostic_examples(dataset, split: str, seed: int, count: int = DIAGNOSTIC_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of ``count`` seeded examples of ``split`` (the training subset for ``train``)."""
    from jaxfcn.analysis.features import probe_indices

    available = dataset.num_examples(split)
    idx = probe_indices(available, count, seed)
    if split == "train":
        idx = dataset.train_indices[idx]
    source = dataset.sources[split]
    examples = [source[int(i)] for i in idx]
    return (np.stack([np.asarray(e["image"], np.float32) for e in examples]),
            np.stack([np.asarray(e["label"], np.int32) for e in examples]))


def run_controls(config, out_dir: str, *, names=(), progress: bool = True, datasets: dict | None = None) -> dict:
    """Train, evaluate and diagnose the controls; write ``results.json``, ``controls.md`` and the figures."""
    from tqdm import tqdm

    from jaxfcn.train.evaluate import evaluate_run
    from jaxfcn.files import write_json_atomic
    from jaxfcn.train.workdir import EVAL_SUMMARY_FILE

    started = time.time()
    controls = select_controls(names)
    if config.study.seeds < 2:
        raise UserError(f"study.seeds={config.study.seeds}: intervals need at least 2 seeds (5 or more advised)")
    layout = Layout(out_dir, config)
    datasets = dict(datasets or {})
    needs_source = any(c.init == "source" for c in controls)
    src = source_config(config)
    tgt = control_config(config, controls[0], None)
    for task, c in ((src.data.task, src), (tgt.data.task, tgt)):
        if task not in datasets and (task == tgt.data.task or needs_source):
            datasets[task] = open_data(c)
    target_data = datasets[tgt.data.task]
    seeds = list(range(config.study.seeds))
    bar = tqdm(total=len(controls) + needs_source, desc="transfer controls", unit="program", disable=not progress,
               dynamic_ncols=True)
    timings = {}
    from jaxfcn.train.programs import ProgramSet

    programs = ProgramSet()  # controls of one architecture and training setting share their programs
    if needs_source:
        t0 = time.time()
        train_program(src, layout.source, datasets[src.data.task], None, programs)
        timings["source"] = time.time() - t0
        bar.update(1)
    for control in controls:
        t0 = time.time()
        bar.set_postfix_str(control.name)
        inits = start_runs(config, control, layout, target_data, seeds)
        c = control_config(config, control, inits[0] if inits else None)
        train_program(c, layout.run(control.name), target_data, inits, programs)
        for s in seeds:
            workdir = _seed_dir(layout.run(control.name), s)
            if not os.path.isfile(os.path.join(workdir, EVAL_SUMMARY_FILE)):
                evaluate_run(workdir, split="test", dataset=target_data, progress=False)
        timings[control.name] = time.time() - t0
        bar.update(1)
    bar.close()
    t0 = time.time()
    diagnostics = run_diagnostics(config, controls, layout, target_data, seeds, progress)
    timings["diagnostics"] = time.time() - t0
    # timings_s are this invocation's (a resumed run skips trained programs); program_train_time_s per control
    # is the training time each program recorded when it ran
    results = {"controls": [collect(config, control, layout, seeds) for control in controls],
               "diagnostics": diagnostics, "settings": settings(config, target_data), "timings_s": timings,
               "about": about(started)}
    add_comparisons(results)
    from jaxfcn.plots.controls import write_figures

    figures = write_figures(results, os.path.join(out_dir, "figures"))
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    from jaxfcn.files import write_text_atomic

    write_text_atomic(os.path.join(out_dir, "controls.md"), markdown(results, figures, out_dir))
    return results


def collect(config, control: Control, layout: Layout, seeds: list[int]) -> dict:
    """Per-seed test Dice and val-Dice curves of one control, with their summaries."""
    from jaxfcn.reproduce.stats import mean_interval
    from jaxfcn.train.workdir import EVAL_SUMMARY_FILE, METRICS_FILE, TRAIN_SUMMARY_FILE

    per_seed = []
    for s in seeds:
        workdir = _seed_dir(layout.run(control.name), s)
        with open(os.path.join(workdir, EVAL_SUMMARY_FILE)) as f:
            test = json.load(f)["foreground_mean"]["Dice"]
        with open(os.path.join(workdir, METRICS_FILE)) as f:
            records = [json.loads(line) for line in f if line.strip()]
        evals = [r for r in records if r.get("val_dice") is not None]
        per_seed.append({"seed": s, "workdir": workdir, "test_dice": test,
                         "val_steps": [r["step"] for r in evals], "val_dice": [r["val_dice"] for r in evals]})
    steps = config.study.target_steps
    at = {}
    for fraction in CURVE_FRACTIONS:
        step = round(fraction * steps)
        at[str(step)] = mean_interval([_value_at(p["val_steps"], p["val_dice"], step) for p in per_seed])
    final = [p["val_dice"][-1] if p["val_dice"] else None for p in per_seed]
    with open(os.path.join(per_seed[0]["workdir"], TRAIN_SUMMARY_FILE)) as f:
        program_seconds = json.load(f).get("train_time_s")  # the K-seed program's training time (one value)
    return {**dataclasses.asdict(control), "per_seed": per_seed, "program_train_time_s": program_seconds,
            "collapsed_seeds": sum(v is not None and v < COLLAPSED_DICE for v in final),
            "test_dice": mean_interval([p["test_dice"] for p in per_seed]),
            "final_val_dice": mean_interval(final),
            "val_dice_at": at, "curve": curve_band([(p["val_steps"], p["val_dice"]) for p in per_seed])}


def _value_at(steps: list[int], values: list[float], step: int):
    """The value at the last validation at or before ``step`` (None before the first one)."""
    known = [v for s, v in zip(steps, values) if s <= step]
    return known[-1] if known else None


def add_comparisons(results: dict) -> None:
    """Each control's test and final-val Dice minus its matched random-init control's (``vs_random``) and minus
    plain ``random``'s (``vs_plain_random``), with Welch intervals."""
    by_name = {c["name"]: c for c in results["controls"]}

    def versus(c, ref):
        if ref is None or ref is c:
            return None
        tests = [[p["test_dice"] for p in x["per_seed"]] for x in (c, ref)]
        finals = [[p["val_dice"][-1] if p["val_dice"] else None for p in x["per_seed"]] for x in (c, ref)]
        return {"control": ref["name"], "test_dice": welch_interval(*tests), "final_val_dice": welch_interval(*finals)}

    for c in results["controls"]:
        c["vs_random"] = versus(c, by_name.get(c["matched_random"]) if c["matched_random"] else None)
        c["vs_plain_random"] = versus(c, by_name.get("random"))


# --- diagnostics -----------------------------------------------------------------------------------------

def run_diagnostics(config, controls: list[Control], layout: Layout, dataset, seeds: list[int],
                    progress: bool) -> list[dict]:
    """:func:`jaxfcn.analysis.transfer.diagnose` of every distinct step-0 start, per seed, on the runs'
    own step-0 snapshots; the reference is the ``random`` control's step 0 of the same seed."""
    from tqdm import tqdm

    from jaxfcn.analysis.transfer import diagnose
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_params
    from jaxfcn.train.workdir import load_run_config

    starts: dict[tuple, Control] = {}
    for control in controls:
        starts.setdefault(control.start, control)
    by_start: dict[str, list[dict]] = {c.name: [] for c in starts.values()}
    bar = tqdm(total=len(starts) * len(seeds), desc="step-0 diagnostics", disable=not progress, dynamic_ncols=True)
    for s in seeds:
        train = diagnostic_examples(dataset, "train", s)
        val = diagnostic_examples(dataset, "val", s)
        for control in starts.values():
            workdir = _seed_dir(layout.run(control.name), s)
            run_config = load_run_config(workdir)
            batches = [b for _, b in zip(range(DIAGNOSTIC_BATCHES), dataset.batches(run_config.train.batch_size, 0))]
            by_start[control.name].append(diagnose(
                build_model(run_config.model), load_params(workdir, 0), images=train[0], batches=batches,
                train_config=run_config.train, probe_train=train, probe_test=val,
                num_classes=run_config.model.num_classes, probe_layers=PROBE_LAYERS, pixels_per_image=PROBE_PIXELS))
            bar.update(1)
    bar.close()
    fresh = by_start["random"]  # seed s's fresh initialisation: the random control's step 0 (first control)
    out = []
    for control in starts.values():
        paired = [pair_with_fresh(m, f) for m, f in zip(by_start[control.name], fresh)]
        out.append({"start": control.name, "controls": [c.name for c in controls if c.start == control.start],
                    **summarise_diagnostics(paired)})
    return out


def pair_with_fresh(model: dict, fresh: dict) -> dict:
    """``diagnose`` outputs of a model and of the fresh init, nested as {section: {item: {"model", "fresh"}}}."""
    out = {"gradients": {"model": model["gradients"], "fresh": fresh["gradients"]}}
    for section in ("activations", "probe"):
        out[section] = {k: {"model": model[section][k], "fresh": fresh[section][k]} for k in model[section]}
    return out


def summarise_diagnostics(per_seed: list[dict]) -> dict:
    """Mean [95 % interval] over seeds of every diagnostic number, same nesting as ``diagnose``."""
    from jaxfcn.reproduce.stats import mean_interval

    def walk(items):
        first = items[0]
        if isinstance(first, dict):
            return {k: walk([item[k] for item in items]) for k in first}
        if isinstance(first, (int, float)):
            return mean_interval([float(v) for v in items])
        return first

    return walk(per_seed)


# --- outputs ---------------------------------------------------------------------------------------------

def settings(config, dataset) -> dict:
    return {"source": config.study.source, "target": target_task(config), "seeds": config.study.seeds,
            "source_steps": config.study.source_steps, "target_steps": config.study.target_steps,
            "early_source_step": early_step(config), "learning_rate": config.train.learning_rate,
            "lr_schedule": config.train.lr_schedule, "batch_size": config.train.batch_size,
            "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.to_dict().items()},
            "data": {"spacing": config.data.spacing, "slice_shape": list(config.data.slice_shape),
                     "train_examples": dataset.num_examples("train"), "train_cases": dataset.num_cases("train"),
                     "val_examples": dataset.num_examples("val"), "test_cases": len(dataset.cases("test"))}}


def about(started: float) -> dict:
    import jax

    return {"machine": f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores"
                       f" · backend {jax.default_backend()}",
            "versions": f"python {platform.python_version()}, jax {jax.__version__}",
            "wall_time_s": round(time.time() - started, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(s: dict | None, digits: int = 3) -> str:
    from jaxfcn.reproduce.stats import format_interval

    return "–" if s is None else format_interval(s, digits)


def _fmt_diff(d: dict | None) -> str:
    if d is None:
        return "–"
    if not math.isfinite(d["low"]):
        return f"{d['diff']:+.3f}"
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(results: dict, figures: dict, out_dir: str) -> str:
    s = results["settings"]
    steps = list(results["controls"][0]["val_dice_at"])
    lines = [f"# Transfer controls: {s['source']} → {s['target']}", "",
             f"{s['seeds']} seeds per control (target seed s transfers from its own source run, seed "
             f"{SOURCE_SEED_OFFSET} + s); source {s['source_steps']} "
             f"steps, target {s['target_steps']} steps, lr {s['learning_rate']:g} ({s['lr_schedule']}), batch "
             f"{s['batch_size']}. Mean [95 % t-interval over seeds]; Δ = control − its matched random-init control "
             f"(Welch 95 % interval); collapsed: final val Dice < {COLLAPSED_DICE} (background only).", "",
             f"| control | val Dice by step {' / '.join(steps)} | final val Dice | collapsed seeds | test mean Dice "
             "| Δ test vs matched random init |", "|---|---|---|---|---|---|"]
    for c in results["controls"]:
        at = " / ".join(f"{c['val_dice_at'][k]['mean']:.2f}" for k in steps)
        vs = c["vs_random"]
        lines.append(f"| `{c['name']}`: {c['description']} | {at} | {_fmt(c['final_val_dice'])} | "
                     f"{c['collapsed_seeds']}/{len(c['per_seed'])} | {_fmt(c['test_dice'])} | "
                     f"{_fmt_diff(vs['test_dice']) + ' vs `' + vs['control'] + '`' if vs else '–'} |")
    lines += ["", "## Step-0 diagnostics on target data (transferred model / fresh init)", "",
              "| start | initial loss | ‖∇‖ encoder | ‖∇‖ decoder | ‖∇‖ head | head-input RMS | logit RMS | "
              "dead ReLUs (max layer) | probe bal. acc. head_input | bottleneck | input |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in results["diagnostics"]:
        g, a, p = d["gradients"], d["activations"], d["probe"]
        head_input = [k for k in a if k.startswith("decoder/")][-1]  # network order: the head's input
        dead = max(a[k]["model"]["dead_fraction"]["mean"] for k in a if k != "head")
        dead_fresh = max(a[k]["fresh"]["dead_fraction"]["mean"] for k in a if k != "head")

        lines.append(
            f"| `{d['start']}` | {g['model']['loss']['mean']:.2f} / {g['fresh']['loss']['mean']:.2f} | "
            + " | ".join(f"{g['model']['grad_norm'][part]['mean']:.2f} / {g['fresh']['grad_norm'][part]['mean']:.2f}"
                         for part in ("encoder", "decoder", "head"))
            + f" | {a[head_input]['model']['rms']['mean']:.2f} / {a[head_input]['fresh']['rms']['mean']:.2f}"
            f" | {a['head']['model']['rms']['mean']:.2f} / {a['head']['fresh']['rms']['mean']:.2f}"
            f" | {dead:.2f} / {dead_fresh:.2f} | "
            + " | ".join(f"{p[layer]['model']['balanced_accuracy']['mean']:.3f} / "
                         f"{p[layer]['fresh']['balanced_accuracy']['mean']:.3f}" for layer in ("head_input", "bottleneck", "input"))
            + " |")
    lines += ["", *[f"![{name}]({os.path.relpath(path, out_dir)})" for name, path in figures.items()], "",
              f"Machine: {results['about']['machine']}; {results['about']['versions']}; "
              f"wall time {results['about']['wall_time_s'] / 60:.1f} min ({results['about']['date']}).", ""]
    return "\n".join(lines)
