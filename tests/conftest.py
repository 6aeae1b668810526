"""Shared test set-up: CPU only, a persistent compilation cache, tiny model configs."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from jaxfcn.cli import quiet_third_party_logs  # noqa: E402
from jaxfcn.runtime import enable_compilation_cache, keep_host_memory  # noqa: E402

# Compiled programs are cached on disk across runs of the suite, across xdist workers and in the CLI
# subprocesses the tests start (they inherit the environment).
enable_compilation_cache()
keep_host_memory()  # as the CLI does: CPU programs run on the calling thread
quiet_third_party_logs()  # as the CLI does: no absl/orbax WARNING lines in the test output

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
    """Base width 4, 2 levels, 32² inputs: the size every fast test uses."""
    from jaxfcn.config import base_config

    c = base_config()
    c.model.depth = 2
    c.model.base_width = 4
    c.model.norm_groups = 2
    c.model.in_channels = 1
    c.model.num_classes = 3
    c.data.slice_shape = (32, 32)
    c.data.patch_shape = (16, 16, 16)
    c.data.spacing = 6.0
    c.train.batch_size = 4
    c.train.steps = 6
    c.train.eval_every = 3
    c.train.log_every = 1
    c.train.checkpoint_every = 3
    c.train.val_batches = 2
    c.train.snapshot_steps = "1,3"
    return c
