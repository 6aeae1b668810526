"""Set-up shared by this folder's experiment scripts: the real 1 mm volume of the sliding-window benchmark and
`tissue_3d`'s untrained U-Net (64³ windows, 2 per call), in the benchmarks' process settings (`common`)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402,F401  (the process settings of every benchmark)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import sliding_window as sw  # noqa: E402

from jaxfcn.models import build_model  # noqa: E402
from jaxfcn.train.inference import make_probabilities_fn  # noqa: E402

image = sw.volume(1.0)
config = sw.model_config(64, 2, "fast")
model = build_model(config.model)
variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
probabilities = make_probabilities_fn(model)
