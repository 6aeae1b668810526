"""jaxfcn.runtime: XLA compiler options the installed XLA does not know are dropped, never fatal.

The fault: jaxfcn passed ``xla_cpu_experimental_ynn_fusion_type`` to every CPU compilation, an option
that jaxlib 0.8.0 does not have, so every train step failed to compile there
(``INVALID_ARGUMENT: No such compile option``).
"""
import jax
import numpy as np

from jaxfcn.models import build_model, layers
from jaxfcn.runtime import supported_compiler_options
from jaxfcn.train.step import init_train_state, make_train_step
from train_helpers import like_real, shapes_dataset

UNKNOWN = {"xla_jaxfcn_no_such_option": True}


def test_unknown_options_are_dropped_and_known_ones_kept():
    known = {"xla_backend_optimization_level": 0}
    assert supported_compiler_options({**known, **UNKNOWN}) == known
    assert supported_compiler_options(known) == known
    assert supported_compiler_options(UNKNOWN) == {}
    assert supported_compiler_options({}) == {}
    # a known option with a value this XLA rejects is dropped too
    assert supported_compiler_options({"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"}) == {}


def test_train_step_compiles_with_an_option_this_xla_does_not_know(tiny_config, monkeypatch):
    """The layers' CPU options plus an unknown one (as the ynn option is for jaxlib 0.8.0): the step runs."""
    monkeypatch.setattr(layers, "CPU_COMPILER_OPTIONS", {**layers.CPU_COMPILER_OPTIONS, **UNKNOWN})
    config = like_real(tiny_config)
    config.train.learning_rate = 2e-3  # another program than the suite's other steps: compiled here, now
    model = build_model(config.model)
    state = init_train_state(model, config)
    batch = next(shapes_dataset(n_train=2, n_val=1, n_test=1).batches(4, seed=0))
    state, metrics = make_train_step(model, config)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(jax.device_get(state.step)) == 1
