"""Source task (built-in) with a 3D U-Net: tissue classes on real T1 MRI, 64³ patches at 2 mm.

    jaxfcn train --config configs/tissue_3d.py --workdir runs/tissue_3d
    jaxfcn evaluate --workdir runs/tissue_3d            # whole test volume, Gaussian sliding window

Meant for an accelerator (a 3D step is ~50× a 2D step of tissue_2d.py on CPU). subcortical_3d.py loads
this file, so `--init runs/tissue_3d` matches its architecture.

Result: not run to completion here (CPU-only build machine); the 2D configs carry measured results.
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.spatial_dims = 3
    c.model.depth = 4
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.task = "tissue"
    c.data.dims = 3
    c.data.spacing = 2.0
    c.data.patch_shape = (64, 64, 64)
    c.data.foreground_oversample = 0.33
    c.train.steps = 2000
    c.train.batch_size = 2
    c.train.learning_rate = 1e-3
    c.train.eval_every = 200
    c.train.log_every = 25
    c.train.checkpoint_every = 250
    c.train.val_batches = 4
    c.train.snapshot_steps = "log:8"
    return c
