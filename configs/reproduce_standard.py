"""The study of record: the default grid of `jaxfcn reproduce`, sized for 2 CPU cores in ≤ 90 minutes.

    jaxfcn reproduce --out runs/study_standard            # uses this file (--standard says the same)

Built-in subjects (jaxfcn.data.subjects): the tissue source and three targets of graded difficulty
(structures: large regions by contrast; lobes: cortical regions whose borders follow position, not contrast;
deep_nuclei: caudate, putamen and thalamus, small), each seed drawing its own training subjects (1, 3, 10,
30) from the warped sym09a subjects; validation on warped FSL subjects, test on the real ICBM 2009c template
plus warped subjects of it. Five seeds; every transfer seed starts from its own source model. Regimes: random
init, transfer (encoder + decoder, fresh head), and the encoder frozen at its random initial values.
Encoder-only transfer (`transfer_encoder`) and the transfer controls are in configs/transfer_controls.py;
add it here with --set study.regimes=... .

Budgets: a target trains until its random-init seeds learn it at 30 subjects (test Dice ≥ 0.5 is the
study's bar), measured in a pilot before this grid ran (3 seeds, 30 subjects, 2-core CPU; validation Dice):
structures 0.59–0.69 at 500 steps; lobes 0.19–0.43 at 500, 0.62–0.69 at 900, 0.71–0.74 at 1500; deep_nuclei
0.32–0.58 at 800 with uniform slices and 0.52–0.69 at 800 with half of every batch drawn from slices that
hold foreground (data.foreground_batch_fraction = 0.5, used for every run here). The retired `subcortical`
target (seven small structures) reached 0.45–0.53 only after 1500 steps.

The rules the claims are judged by are in jaxfcn/reproduce/claims.py and were fixed before this grid ran;
the committed run is docs/study/ (report.md, results.json, figures/).
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 3
    c.model.base_width = 8
    c.model.norm_groups = 4
    c.data.spacing = 4.0
    c.data.slice_shape = (48, 48)
    c.data.train_subjects = 30
    c.data.val_subjects = 4
    c.data.test_subjects = 8
    c.data.subset_per_seed = True
    c.data.foreground_batch_fraction = 0.5
    c.train.batch_size = 8
    c.train.learning_rate = 1e-2
    c.train.eval_every = 50
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.val_batches = 4
    c.train.checkpoint_best = False  # the study evaluates final models
    c.train.snapshot_steps = "50,200"  # with step 0 and the final step: representation evolution
    c.study.grid = "standard"
    c.study.source = "tissue"
    c.study.targets = ("structures", "lobes", "deep_nuclei")
    c.study.train_sizes = (1, 3, 10, 30)
    c.study.regimes = ("random", "transfer", "frozen_random")
    c.study.seeds = 5
    c.study.source_steps = 800
    c.study.target_steps = 500
    c.study.target_steps_by_task = "lobes=900,deep_nuclei=800"
    c.study.probe_images = 128
    c.study.cka_convention = "positions"
    c.study.cka_positions_per_image = 16  # up to 2048 rows per layer
    c.study.cka_positions_within = "nonzero"  # positions on the anatomy only (background is exactly 0)
    c.study.cka_null_widths = (4, 8, 16, 32)  # the untrained baseline's dependence on width (8 = this model)
    return c
