"""Source task (built-in): grey matter / white matter / other intracranial on real T1 MRI, 2D U-Net.

    jaxfcn train --config configs/tissue_2d.py --workdir runs/tissue_2d
    jaxfcn evaluate --workdir runs/tissue_2d            # test split: the ICBM 2009c template

Sized to train on a laptop CPU (3 mm grid, 64² slices from all three orientations, widths 8-64); the
target-task configs (subcortical_2d.py, structures_2d.py) load this file, so their architecture always
matches and `--init runs/tissue_2d` works.

Measured 2026-11-25, before the built-in subjects (jaxfcn.data.subjects): trained on the sym09a
template alone, validated on FSL's; not rerun on the subjects since, so today's runs will differ.
Result (1000 steps, 2 shared CPU cores, ~5 min of training): best val Dice 0.743 (training metric:
pooled 64² slices of the FSL template); test (ICBM 2009c, whole volume, 3 orientations averaged):
mean Dice 0.832 (GM 0.878, WM 0.833, other 0.785), mean HD95 4.2 mm. 90 % of the best val Dice at step 300.
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 4
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.task = "tissue"
    c.data.spacing = 3.0
    c.data.slice_shape = (64, 64)
    c.train.steps = 1000
    c.train.batch_size = 8
    c.train.learning_rate = 2e-3
    c.train.eval_every = 100
    c.train.log_every = 25
    c.train.checkpoint_every = 250
    c.train.val_batches = 8
    c.train.snapshot_steps = "log:8"
    return c
