"""The paper's full grid (meant for a GPU): 2 mm slices at 128², 5 seeds, 4 training-set sizes.

    jaxfcn reproduce --full --out runs/study_full          # uses this file
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 4
    c.model.base_width = 16
    c.data.spacing = 2.0
    c.data.slice_shape = (128, 128)
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.eval_every = 100
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.val_batches = 8
    c.train.snapshot_steps = "log:8"
    c.study.grid = "full"
    c.study.source = "tissue"
    c.study.targets = ("subcortical", "structures")
    c.data.train_subjects = 256  # generated subjects per built-in task: 128 is a subset, 0 (all) is 256
    c.study.train_sizes = (8, 32, 128, 0)
    c.study.seeds = 5
    c.study.source_steps = 4000
    c.study.target_steps = 2000
    c.study.probe_images = 64
    return c
