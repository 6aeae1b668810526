"""Easier target (built-in): cerebral GM, cerebral WM, cerebellum, brain stem, ventricles/CSF on real T1
MRI; the architecture of tissue_2d.py.

    jaxfcn train --config configs/structures_2d.py --workdir runs/str_random
    jaxfcn train --config configs/structures_2d.py --workdir runs/str_transfer --init runs/tissue_2d
    jaxfcn train --config configs/structures_2d.py --workdir runs/str_frozen --freeze encoder

Measured 2026-11-25, before the built-in subjects (jaxfcn.data.subjects): trained on the sym09a
template alone, validated on FSL's; not rerun on the subjects since, so today's runs will differ.
Result (1000 steps each, 2 shared CPU cores; val = pooled-slice training metric, test = whole
ICBM 2009c volume):

    random    val 0.804  test mean Dice 0.869, HD95 10.5 mm  (90 % of best val at step 500)
    transfer  val 0.786  test mean Dice 0.865, HD95 4.5 mm   (step 600)
    frozen    val 0.677  test mean Dice 0.798, HD95 6.0 mm   (step 700)
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tissue_2d.py"))
    c.data.task = "structures"
    return c
