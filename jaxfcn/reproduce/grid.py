"""The study's experiment grid: which runs exist, where they live, and the training config of each.

Layout under the study's output folder::

    OUT/source/seed_<1000+s>/                            # source pretraining runs (see SOURCE_SEED_OFFSET)
    OUT/runs/<target>/n<size>/<regime>/seed_<s>/          # target runs (size "all" when 0)

Every run folder is an ordinary jaxfcn workdir. Transfer regimes of seed ``s`` start from source run ``s``:
one source model per target seed, so the seeds of a transfer condition are independent replicates of the
whole pipeline (source pretraining included), not fine-tunings of a shared model. The seeds of one condition (the source, or one target × size × regime) are trained
together as one K-seed program (:mod:`jaxfcn.train.multiseed`) whose folder is the ``seed_<s>`` folders'
parent.
"""
from __future__ import annotations

import dataclasses
import os

from jaxfcn.errors import UserError


@dataclasses.dataclass(frozen=True)
class Regime:
    """How a target run starts and what it trains. ``transferred``: the source parts copied into the
    target model (empty = random initialisation); ``frozen``: parts that get no gradient. The head is
    always fresh on a target task: the source head's classes mean nothing there."""

    transferred: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()

    @property
    def from_source(self) -> bool:
        return bool(self.transferred)


REGIMES = {
    "random": Regime(),
    "transfer": Regime(transferred=("encoder", "decoder")),
    "transfer_encoder": Regime(transferred=("encoder",)),  # how medical TL is used in practice
    "frozen_random": Regime(frozen=("encoder",)),
    "frozen_transfer": Regime(transferred=("encoder", "decoder"), frozen=("encoder",)),
}


@dataclasses.dataclass(frozen=True)
class Run:
    kind: str  # "source" | "target"
    task: str
    seed: int
    workdir: str
    train_size: int = 0
    regime: str = "random"
    source_workdir: str | None = None

    @property
    def label(self) -> str:
        """How progress lines name the run (a folder task by its folder name)."""
        if self.kind == "source":
            return f"source {task_label(self.task)} seed {self.seed}"
        return f"{task_label(self.task)} n={self.train_size or 'all'} {self.regime} seed {self.seed}"


# Source run seeds are offset from the target seeds: with the same seed and architecture, source seed s and
# random-init target seed s would start from bitwise-equal encoder weights, making transfer seed s a close
# relative of random seed s and inflating every transfer-vs-random similarity.
SOURCE_SEED_OFFSET = 1000


def task_label(task: str) -> str:
    """A folder-safe name for a built-in task or a dataset folder."""
    return os.path.basename(os.path.normpath(str(task))) or "task"


def target_steps(study) -> dict[str, int]:
    """Training steps of every target of ``study``: ``study.target_steps`` unless
    ``study.target_steps_by_task`` ("task=steps,…", tasks by their label) says otherwise. An entry for a
    built-in task that is not a target is ignored (``--targets`` chose fewer than the config's); any other
    name that is not a target is refused as a typo."""
    from jaxfcn.data.builtin import is_builtin  # here, not at import: it loads the data stack

    labels = {task_label(t): t for t in study.targets}
    steps = {t: int(study.target_steps) for t in study.targets}
    spec = str(study.get("target_steps_by_task", "") or "").strip()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"study.target_steps_by_task={spec!r}: '{item}' is not task=steps with steps ≥ 1")
        if name not in labels:
            if is_builtin(name):
                continue  # a budget for a built-in task left out with --targets: it has nothing to set
            raise UserError(f"study.target_steps_by_task: '{name}' is not a target of this study "
                            f"(targets: {', '.join(labels)})")
        steps[labels[name]] = int(value)
    return steps


def plan(config, out_dir: str) -> tuple[list[Run], list[Run]]:
    """(source runs, target runs) of the grid in ``config.study``."""
    s = config.study
    target_steps(s)  # refuse a malformed per-target budget before anything trains
    unknown = [r for r in s.regimes if r not in REGIMES]
    if unknown:
        raise UserError(f"study.regimes: unknown regime(s) {unknown}; choose from {list(REGIMES)}")
    if s.seeds < 1:
        raise UserError("study.seeds must be ≥ 1")
    if s.source_seeds not in (0, s.seeds):
        raise UserError(f"study.source_seeds={s.source_seeds}: each transfer seed has its own source model, so "
                        f"the study trains study.seeds={s.seeds} sources; set study.source_seeds=0")
    needs_source = any(REGIMES[r].from_source for r in s.regimes)
    sources = [Run("source", s.source, SOURCE_SEED_OFFSET + seed,
                   os.path.join(out_dir, "source", f"seed_{SOURCE_SEED_OFFSET + seed}"))
               for seed in range(s.seeds)] if needs_source else []
    targets = []
    for target in s.targets:
        for size in s.train_sizes:
            for regime in s.regimes:
                for seed in range(s.seeds):
                    workdir = os.path.join(out_dir, "runs", task_label(target), f"n{size or 'all'}", regime,
                                           f"seed_{seed}")
                    source = sources[seed].workdir if REGIMES[regime].from_source else None
                    targets.append(Run("target", target, seed, workdir, size, regime, source))
    return sources, targets


def conditions(runs: list[Run]) -> list[list[Run]]:
    """``runs`` grouped into conditions (same program folder), in order; each condition's seeds ascend by 1."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(program_dir(run), []).append(run)
    for group in groups.values():
        seeds = [r.seed for r in group]
        if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError(f"seeds of {program_dir(group[0])} are not consecutive: {seeds}")
    return list(groups.values())


def program_dir(run: Run) -> str:
    """The folder of the K-seed program that trains ``run`` (its ``seed_<s>`` folder's parent)."""
    return os.path.dirname(run.workdir)


def run_config(config, run: Run):
    """The training config of one run: the study's shared settings plus this run's task/size/regime/seed."""
    c = config.copy_and_resolve_references()
    c.data.task = run.task
    c.train.seed = run.seed
    if run.kind == "source":
        c.train.steps = config.study.source_steps
        c.data.train_size = 0
        c.train.init, c.train.freeze = "random", ()
    else:
        regime = REGIMES[run.regime]
        c.train.steps = target_steps(config.study)[run.task]
        c.data.train_size = run.train_size
        c.train.init = run.source_workdir if regime.from_source else "random"
        if regime.from_source:
            c.train.transfer_parts = regime.transferred
        c.train.freeze = regime.frozen
        c.train.reinit_head = True
    return c
