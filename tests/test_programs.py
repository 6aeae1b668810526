"""Programs are built once per program config and device plan, handed to runs, and carry no run's values."""
import jax
import numpy as np

from jaxfcn.config_checks import resolve_config
from jaxfcn.train.checkpoint import load_params
from jaxfcn.train.loop import train_and_evaluate
from jaxfcn.train.parallel import plan_devices
from jaxfcn.train.programs import PER_RUN_VALUES, ProgramSet, program_config
from train_helpers import shapes_dataset


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_program_config_neutralises_every_per_run_value(tiny_config):
    c = tiny_config.copy_and_resolve_references()
    c.train.seed, c.train.init, c.data.task, c.data.train_size = 7, "/some/run", "structures", 3
    neutral = program_config(c)
    for section, values in PER_RUN_VALUES.items():
        for key, value in values.items():
            assert neutral[section][key] == value
    assert (c.train.seed, c.data.task) == (7, "structures")  # the run's own config is not changed


def test_program_set_shares_by_settings_and_plan(tiny_config):
    programs = ProgramSet()
    plan = plan_devices("none", tiny_config.train.batch_size)
    first = programs.get(tiny_config, plan)
    other_run = tiny_config.copy_and_resolve_references()
    other_run.train.seed, other_run.data.train_size = 5, 2
    assert programs.get(other_run, plan) is first  # per-run values only: the same programs
    other_lr = tiny_config.copy_and_resolve_references()
    other_lr.train.learning_rate *= 2
    assert programs.get(other_lr, plan) is not first  # a program value: new programs
    stacked = plan_devices("none", tiny_config.train.batch_size, num_seeds=2)
    assert programs.get(tiny_config, stacked) is not first  # another plan: new programs
    assert len(programs) == 3


def test_shared_programs_give_each_run_its_own_result(tiny_config, tmp_path):
    """A second run on shared programs compiles nothing new and ends exactly where it would alone."""
    data = shapes_dataset()
    tiny_config.model.num_classes = 0  # taken from the data
    config = resolve_config(tiny_config, data.info)
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 3, 3, 3
    programs = ProgramSet()
    first = train_and_evaluate(config, str(tmp_path / "seed0"), dataset=data, programs=programs, progress=False)
    config.train.seed = 1
    shared = train_and_evaluate(config, str(tmp_path / "seed1"), dataset=data, programs=programs, progress=False)
    alone = train_and_evaluate(config, str(tmp_path / "alone"), dataset=data, progress=False)
    assert len(programs) == 1
    assert (first["train_step_compilations"], shared["train_step_compilations"]) == (1, 0)
    assert alone["train_step_compilations"] == 1
    shared_params, alone_params = load_params(shared["workdir"]), load_params(alone["workdir"])
    assert leaves_equal(shared_params, alone_params)  # the seed reached the shared programs as an argument
    assert not leaves_equal(shared_params, load_params(first["workdir"]))
