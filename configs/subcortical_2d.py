"""Hard target (built-in): 7 subcortical structures (hippocampus, amygdala, caudate, putamen, pallidum,
thalamus, lateral ventricles) on real T1 MRI; the architecture of tissue_2d.py.

    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_random
    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_transfer --init runs/tissue_2d
    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_frozen --freeze encoder

Measured 2026-11-25, before the built-in subjects (jaxfcn.data.subjects): trained on the sym09a
template alone, validated on FSL's; not rerun on the subjects since, so today's runs will differ.
Result (1000 steps each, 2 shared CPU cores; val = pooled-slice training metric, test = whole
ICBM 2009c volume; still improving at step 1000, amygdala and pallidum never found at this size):

    random    val 0.298  test mean Dice 0.399  (90 % of best val at step 700)
    transfer  val 0.269  test mean Dice 0.134  (step 900)
    frozen    val 0.232  test mean Dice 0.277  (step 800)

The rows are one seed each. With 5 seeds, transfer ties random init (docs/transfer_controls.md).
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tissue_2d.py"))
    c.data.task = "subcortical"
    return c
