"""Quick: a tiny 2D U-Net that trains on any dataset in about a minute on 2 CPU cores (a smoke test).

    jaxfcn train --config configs/quick.py --workdir runs/quick                      # built-in tissue task
    jaxfcn train --config configs/quick.py --workdir runs/quick_sub --data subcortical
    jaxfcn train --config configs/quick.py --workdir runs/quick_msd --data /data/Task04_Hippocampus

Result (tissue, 300 steps, 2 shared CPU cores, 1 min 40 s including data preparation): best val
Dice 0.732; `jaxfcn evaluate`: test mean Dice 0.816 (GM 0.862, WM 0.820, other 0.767), HD95 4.2 mm.
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 3
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.task = "tissue"
    c.data.spacing = 3.0  # coarse grid: small slices, fast steps
    c.data.slice_shape = (64, 64)
    c.train.steps = 300
    c.train.batch_size = 8
    c.train.learning_rate = 3e-3
    c.train.eval_every = 50
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.val_batches = 4
    c.train.snapshot_steps = "log:4"
    return c
