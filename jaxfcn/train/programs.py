"""The programs a run executes, built once and handed to every run that shares them.

A run executes three programs: the initialisation ``(rng, params) -> TrainState``, the train step
``(state, batch) -> (state, metrics)`` compiled for the run's :class:`~jaxfcn.train.parallel.DevicePlan`
(one seed, or K seeds stacked), and the validation step ``(variables, batch) -> (K, 3)`` pooled counts.
They depend on the architecture, the training settings and the device plan, never on a run's own values:
its seed, ``--init`` source and training subset reach them as arguments (the rng key, the params, the
batches). :func:`build_programs` therefore builds them from the config with those values set to the
neutral ones of :data:`PER_RUN_VALUES`, so no program can carry one run's value into another run.

A caller that trains many runs (the study, a K-seed program) keeps one :class:`ProgramSet` and passes it
to every run. Runs whose program config (see :func:`program_config`) and plan are equal get the same
:class:`Programs` object, so each program is traced and compiled once in the process; JAX's persistent
compilation cache (:mod:`jaxfcn.runtime`) serves it to later processes.

Example::

    programs = ProgramSet()
    for seed in (0, 1, 2):
        train_and_evaluate(seed_config(config, seed), f"runs/seed_{seed}", programs=programs)
"""
from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Callable

# A run's own values, which the programs receive as arguments, with the neutral value each program
# config holds instead. ``train.transfer_parts`` / ``reinit_head`` only choose the params passed in.
PER_RUN_VALUES = {
    "train": {"seed": 0, "num_seeds": 1, "init": "random", "init_step": -1,
              "transfer_parts": (), "reinit_head": False},
    "data": {"task": "", "train_size": 0, "subset_seed": 0},
}


def program_config(config):
    """A copy of the (resolved) run ``config`` with every value of :data:`PER_RUN_VALUES` neutral."""
    config = copy.deepcopy(config)
    for section, values in PER_RUN_VALUES.items():
        for key, value in values.items():
            config[section][key] = value
    return config


@dataclasses.dataclass(frozen=True)
class Programs:
    """The programs of one program config and device plan (see the module docstring)."""

    config: Any  # the program config they were built from (per-run values neutral)
    plan: Any  # the DevicePlan the train step is compiled for
    model: Any
    init: Callable  # jitted (rng, params or None) -> TrainState; rng = jaxfcn.train.step.seed_key(seed)
    train_step: Callable  # compiled by ``plan``; the state is donated
    eval_step: Callable  # jitted (variables, batch) -> (K, 3) confusion counts

    def initial_state(self, seed: int, params=None):
        """The fresh state of the run with ``train.seed = seed`` (``params``: transferred params)."""
        from jaxfcn.train.step import seed_key

        return self.init(seed_key(int(seed)), params)

    def serves(self, config, plan) -> bool:
        """Whether these programs are the ones of a run with (resolved) ``config`` on ``plan``."""
        return plan == self.plan and _as_json(program_config(config)) == _as_json(self.config)


def build_programs(config, plan) -> Programs:
    """The programs of a run with the resolved ``config`` (``model.num_classes`` / ``in_channels`` set) on
    ``plan``: a single-seed step, or with ``plan.num_seeds`` the K-seed step of ``train.seed_strategy``."""
    from jaxfcn.models import build_model
    from jaxfcn.train.step import init_program, make_eval_step, seed_key, train_step_function

    config = program_config(config)
    model = build_model(config.model)
    frozen = tuple(config.train.freeze)
    if plan.num_seeds:
        from jaxfcn.train.seeds import stacked_step_function

        step = stacked_step_function(model, config, frozen, strategy=config.train.seed_strategy,
                                     shared_batch=not plan.seed_batches, axis_name=plan.axis_name)
    else:
        step = train_step_function(model, config, frozen, axis_name=plan.axis_name)
    init = init_program(model, config, frozen)
    import jax

    one = jax.eval_shape(init, seed_key(0), None)  # the state's structure, for the plan's shardings
    state_shape = one if not plan.num_seeds else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((plan.num_seeds, *x.shape), x.dtype), one)
    return Programs(config=config, plan=plan, model=model, init=init,
                    train_step=plan.compile_step(step, state_shape),
                    eval_step=make_eval_step(model, config.model.num_classes))


class ProgramSet:
    """The programs built so far for a sequence of runs; :meth:`get` returns the ones that serve a run,
    building them the first time (equality of the whole program config and plan, nothing hashed)."""

    def __init__(self):
        self._built: list[Programs] = []

    def get(self, config, plan) -> Programs:
        for programs in self._built:
            if programs.serves(config, plan):
                return programs
        programs = build_programs(config, plan)
        self._built.append(programs)
        return programs

    def __len__(self) -> int:
        return len(self._built)


def _as_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=list)
