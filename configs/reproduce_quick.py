"""The paper's grid, small enough for 2 CPU cores in ≤ 15 minutes (the README's first command).

    jaxfcn reproduce --quick --out runs/study            # uses this file

Tiny 2D U-Net on 5 mm slices of the built-in MRI; 3 seeds, 2 target training-set sizes (8 and all), all
four regimes; each condition's 3 seeds train as one program. Measured on a 2-core CPU: the subcortical
target learns nothing before ~250 steps at this size (val Dice 0.00 at 250 steps with lr 3e-3, 0.12 at 300
and 0.19 at 500 with lr 1e-2), hence 400 steps at lr 1e-2 and two sizes rather than more sizes with fewer
steps. The full grid is configs/reproduce_full.py.
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
    c.train.learning_rate = 1e-2
    c.train.eval_every = 50
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.val_batches = 4
    c.train.checkpoint_best = False  # the study evaluates final models; saves cost ~0.3 s each
    c.train.snapshot_steps = "50"  # with step 0 and the final step: three points of representation evolution
    c.study.grid = "quick"
    c.study.source = "tissue"
    c.study.targets = ("subcortical", "structures")
    c.study.train_sizes = (8, 0)
    c.study.seeds = 3
    c.study.source_steps = 300
    c.study.target_steps = 400
    c.study.probe_images = 32
    return c
