"""K-seed steps equal K independent single-seed steps, for every strategy, shared or independent batches,
with and without a frozen encoder. The K-seed step is the one a K-seed run uses
(:func:`jaxfcn.train.programs.build_programs` on a plan with K seeds)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfcn.errors import UserError
from jaxfcn.models import build_model
from jaxfcn.train import seeds
from jaxfcn.train.step import init_train_state, make_train_step, seed_key

SEEDS = (3, 5)
STEPS = 2
# fp32 on CPU. The strategies reorder sums (grouped vs per-seed convolutions, batched reductions), so
# gradients differ from the single-seed program by float rounding (~1e-7 relative). Adam divides by
# sqrt(v): a rounding difference in g moves the update by ~lr·δg/|g|, so after 2 steps params agree to
# ~1e-6 absolute; 2e-5 leaves margin and is 50x below one lr = 1e-3 step.
ATOL = 2e-5


def make_setup(augment: bool):
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth, c.model.base_width, c.model.norm_groups = 2, 4, 2
    c.model.in_channels, c.model.num_classes = 1, 3
    c.data.slice_shape = (32, 32)
    c.train.batch_size = 4
    c.data.augment = augment
    model = build_model(c.model)
    k1, k2 = jax.random.split(jax.random.key(42))
    shape = (len(SEEDS), STEPS, c.train.batch_size, 32, 32)
    return c, model, jax.random.normal(k1, shape + (1,)), jax.random.randint(k2, shape, 0, 3)


def single_runs(config, model, images, labels, frozen, shared):
    """Final states of ordinary single-seed runs (``--seed s``), one per seed."""
    step = make_train_step(model, config, frozen)
    finals = []
    for n, s in enumerate(SEEDS):
        state = init_train_state(model, config, frozen, rng=seed_key(s))
        for t in range(STEPS):
            i = 0 if shared else n
            state, _ = step(state, {"image": images[i, t], "label": labels[i, t]})
        finals.append(state)
    return finals


@pytest.fixture(scope="module")
def plain():
    """No augmentation (keeps compile time low); shared batches; the single-seed reference runs."""
    setup = make_setup(augment=False)
    return setup, single_runs(*setup, frozen=(), shared=True)


@pytest.fixture(scope="module")
def frozen_independent():
    """Augmentation on (each member must draw its own run's keys), frozen encoder, per-seed batches."""
    setup = make_setup(augment=True)
    return setup, single_runs(*setup, frozen=("encoder",), shared=False)


def k_seed_programs(config, frozen, strategy, shared):
    """(plan, programs) of a K-seed run of ``SEEDS`` with ``strategy`` on one device."""
    from jaxfcn.train.parallel import plan_devices
    from jaxfcn.train.programs import build_programs

    c = config.copy_and_resolve_references()
    c.train.freeze, c.train.seed_strategy = tuple(frozen), strategy
    plan = plan_devices("none", c.train.batch_size, num_seeds=len(SEEDS), seed_batches=not shared)
    return plan, build_programs(c, plan)


def initial_states(plan, programs):
    return plan.place_state(plan.stack([programs.initial_state(s) for s in SEEDS]))


def run_seeds(config, model, images, labels, frozen, strategy, shared):
    plan, programs = k_seed_programs(config, frozen, strategy, shared)
    step, state = programs.train_step, initial_states(plan, programs)
    for t in range(STEPS):
        batch = {"image": images[0, t], "label": labels[0, t]} if shared else \
            {"image": images[:, t], "label": labels[:, t]}
        state, metrics = step(state, batch)
        assert metrics["loss"].shape == (len(SEEDS),)
    return state


def assert_members_equal(stacked, singles):
    assert seeds.num_seeds(stacked) == len(singles)
    for n, single in enumerate(singles):
        member = seeds.unstack_state(stacked, n)
        assert int(member.step) == STEPS
        for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=ATOL)


@pytest.mark.parametrize("strategy", seeds.SEED_STRATEGIES)
def test_k_seed_step_equals_single_seed_steps(plain, strategy):
    setup, singles = plain
    assert_members_equal(run_seeds(*setup, (), strategy, shared=True), singles)
    # the members really differ (different seeds), so the comparison above is not vacuous
    diff = singles[0].params["head"]["kernel"] - singles[1].params["head"]["kernel"]
    assert float(jnp.abs(diff).max()) > 1e-2


@pytest.mark.parametrize("strategy", ["vmap", "per_seed", "unrolled"])
def test_frozen_encoder_and_independent_batches(frozen_independent, strategy):
    setup, singles = frozen_independent
    config, model = setup[:2]
    frozen = ("encoder",)
    stacked = run_seeds(*setup, frozen, strategy, shared=False)
    assert_members_equal(stacked, singles)
    initial = initial_states(*k_seed_programs(config, frozen, strategy, shared=False))
    for a, b in zip(jax.tree.leaves(stacked.params["encoder"]), jax.tree.leaves(initial.params["encoder"])):
        np.testing.assert_array_equal(a, b)  # frozen: bitwise unchanged


def test_program_initial_states_equal_single_run_inits(plain):
    """The programs are built with the seed neutralised; each member still gets its own run's init."""
    (config, model, _, _), _ = plain
    stacked = initial_states(*k_seed_programs(config, (), "vmap", shared=True))
    for n, s in enumerate(SEEDS):
        c = config.copy_and_resolve_references()
        c.train.seed = s
        single = init_train_state(model, c)
        for a, b in zip(jax.tree.leaves(seeds.unstack_state(stacked, n)), jax.tree.leaves(single)):
            np.testing.assert_array_equal(a, b)


def test_per_seed_strategy_has_no_grouped_convolution(plain):
    """The reason for per_seed: vmap over per-seed kernels must not become a grouped convolution. In the
    K-seed programs; there, on the CPU, oneDNN's custom calls batch per seed under either strategy."""
    from jaxfcn.native import onednn

    (config, model, images, labels), _ = plain
    batch = {"image": images[0, 0], "label": labels[0, 0]}
    groups, texts = {}, {}
    for strategy in ("vmap", "per_seed"):
        plan, programs = k_seed_programs(config, (), strategy, shared=True)
        texts[strategy] = programs.train_step.lower(initial_states(plan, programs), batch).as_text()
        groups[strategy] = {int(g) for g in re.findall(r"feature_group_count = (\d+)", texts[strategy])}
    if jax.default_backend() == "cpu" and onednn.available():
        assert groups == {"vmap": set(), "per_seed": set()}
        assert all("jaxfcn_conv_backward_weights" in text for text in texts.values())
    else:
        assert len(SEEDS) in groups["vmap"]
        assert groups["per_seed"] == {1}


def test_xla_per_seed_conv_has_no_grouped_convolution():
    """The same rule for XLA's convolutions, at the function level (vmap over kernels and inputs)."""
    from jaxfcn.models import fast_ops

    x, w = jnp.ones((len(SEEDS), 2, 6, 6, 3)), jnp.ones((len(SEEDS), 3, 3, 3, 4))

    def groups(conv):
        loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731  (sin: a per-seed incoming gradient)
        text = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)))).lower(x, w).as_text()
        return {int(g) for g in re.findall(r"feature_group_count = (\d+)", text)}

    assert len(SEEDS) in groups(fast_ops.xla_fast_conv)
    assert groups(fast_ops.xla_per_seed_conv) == {1}


def test_strategy_choice():
    assert seeds.choose_seed_strategy("cpu") == "unrolled"
    assert seeds.choose_seed_strategy("gpu") in seeds.SEED_STRATEGIES
    assert seeds.check_strategy("auto") == seeds.choose_seed_strategy()
    with pytest.raises(UserError, match="--seed-strategy pmap: not one of"):
        seeds.check_strategy("pmap")
