"""The paper's grid, small enough for 2 CPU cores in ≤ 15 minutes (the README's first command).

    jaxfcn reproduce --quick --out runs/study            # uses this file

Tiny 2D U-Net on 5 mm slices of the built-in MRI; 3 seeds, 3 target training-set sizes, all four regimes.
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 3
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.spacing = 5.0
    c.data.slice_shape = (40, 40)
    c.train.batch_size = 8
    c.train.learning_rate = 3e-3
    c.train.eval_every = 25
    c.train.log_every = 25
    c.train.checkpoint_every = 1000
    c.train.val_batches = 4
    c.train.snapshot_steps = "log:3"
    c.study.source = "tissue"
    c.study.targets = ("subcortical", "structures")
    c.study.train_sizes = (8, 32, 0)
    c.study.seeds = 3
    c.study.source_seeds = 2
    c.study.source_steps = 300
    c.study.target_steps = 150
    c.study.probe_images = 32
    return c
