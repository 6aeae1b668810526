"""Transfer controls (issue 19): why is transfer worse than random init on the built-in targets?

    jaxfcn analyze transfer --out runs/transfer_controls          # uses this file

tissue → subcortical, 5 seeds per control, each control's seeds in one program, transfer seed s from
source seed s; the controls and diagnostics are those of jaxfcn.reproduce.controls. A 2D U-Net small
enough for 2 CPU cores (4 mm grid, 48² slices, depth 3, widths 8-32).
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 3
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.spacing = 4.0
    c.data.slice_shape = (48, 48)
    c.data.train_subjects, c.data.val_subjects, c.data.test_subjects = 32, 8, 8  # pinned: the run of record
    c.train.batch_size = 8
    c.train.learning_rate = 5e-3
    c.train.lr_schedule = "cosine"
    c.train.eval_every = 25
    c.train.log_every = 25
    c.train.checkpoint_every = 100_000  # the final state only: the controls are read at their end
    c.train.checkpoint_best = False
    c.train.snapshot_steps = ""  # step 0 and the final step (the source adds its early step)
    c.train.val_batches = 4
    c.study.source = "tissue"
    c.study.targets = ("subcortical",)
    c.study.seeds = 5
    c.study.source_steps = 600
    c.study.target_steps = 600
    return c
