"""Pipeline smoke test: the study's pipeline end to end on 2 CPU cores in about 10 minutes (the README's
first command). Its report says in its first line that it is not a finding.

    jaxfcn reproduce --quick --out runs/study            # uses this file

Tiny 2D U-Net on 5 mm slices of the built-in subjects (8 training subjects, 2 validation, 2 test + the
real held-out template); 3 seeds, training sets of 2 and 8 subjects, three regimes; each condition's 3 seeds
train as one program. The study of record is configs/reproduce_standard.py; the GPU grid is
configs/reproduce_full.py.
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 3
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.spacing = 5.0
    c.data.slice_shape = (40, 40)
    c.data.train_subjects = 8
    c.data.val_subjects = 2
    c.data.test_subjects = 2
    c.data.subset_per_seed = True
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
    c.study.train_sizes = (2, 8)
    c.study.regimes = ("random", "transfer", "frozen_random")
    c.study.seeds = 3
    c.study.source_steps = 300
    c.study.target_steps = 300
    c.study.probe_images = 32
    return c
