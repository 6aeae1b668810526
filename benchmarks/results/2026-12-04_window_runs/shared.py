"""What decompose.py, per_batch.py and stream.py share: the 1 mm volume, tissue_3d's U-Net (64³ windows,
batch 2, initial weights, on the device), JAX's softmax network, the PyTorch twin in channels_last_3d, and the
volume's 90 batches of windows (the sliding-window loop's own order) ready for both sides."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from sliding_window import model_config, torch_twin, volume  # noqa: E402


def setup() -> SimpleNamespace:
    import jax
    import torch

    from jaxfcn.models import build_model
    from jaxfcn.runtime import on_device
    from jaxfcn.train.inference import make_probabilities_fn, window_starts

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    config = model_config(64, 2, "fast")
    image = volume(1.0)
    model = build_model(config.model)
    variables = on_device(model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False))
    fmt = torch.channels_last_3d
    starts = [(a, b, c) for a in window_starts(image.shape[0], 64, 0.5)
              for b in window_starts(image.shape[1], 64, 0.5) for c in window_starts(image.shape[2], 64, 0.5)]
    batches = [np.stack([image[a:a + 64, b:b + 64, c:c + 64] for a, b, c in starts[f:f + 2]])
               for f in range(0, len(starts), 2)]
    return SimpleNamespace(
        config=config, image=image, model=model, variables=variables, fmt=fmt, batches=batches,
        probabilities_fn=make_probabilities_fn(model), x_jax=[on_device(x) for x in batches],
        net=torch_twin(config, variables, fmt),
        x_torch=[torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(memory_format=fmt) for x in batches])
