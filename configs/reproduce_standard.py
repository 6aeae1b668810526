"""The study of record: the default grid of `jaxfcn reproduce`, sized for 2 CPU cores in ≤ 90 minutes.

    jaxfcn reproduce --out runs/study_standard            # uses this file (--standard says the same)

Built-in subjects (jaxfcn.data.subjects): the tissue source and three targets of graded difficulty, each
seed drawing its own training subjects (1, 3, 10, 30) from the warped sym09a subjects; validation on
warped FSL subjects, test on the real ICBM 2009c template plus warped subjects of it. Five seeds; every
transfer seed starts from its own source model. Regimes: random init, transfer (encoder + decoder, fresh
head), and the encoder frozen at its random initial values. Encoder-only transfer (`transfer_encoder`) and the
transfer controls are in configs/transfer_controls.py; add it here with --set study.regimes=... .

Targets, by measured difficulty (random init, 30 subjects, 500 steps, 3 seeds, this grid's model;
2-core CPU): structures 0.65–0.77 test Dice, lobes 0.25–0.37, subcortical 0.00–0.19. Only structures
reaches the 0.5 the study asks of every target at this CPU budget; see docs/study/report.md.

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
    c.study.targets = ("structures", "lobes", "subcortical")
    c.study.train_sizes = (1, 3, 10, 30)
    c.study.regimes = ("random", "transfer", "frozen_random")
    c.study.seeds = 5
    c.study.source_steps = 800
    c.study.target_steps = 500
    c.study.probe_images = 128
    return c
