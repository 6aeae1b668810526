"""Easier target (built-in): cerebral GM, cerebral WM, cerebellum, brain stem, ventricles/CSF on real T1
MRI; the architecture of tissue_2d.py.

    jaxfcn train --config configs/structures_2d.py --workdir runs/str_random
    jaxfcn train --config configs/structures_2d.py --workdir runs/str_transfer --init runs/tissue_2d
    jaxfcn train --config configs/structures_2d.py --workdir runs/str_frozen --freeze encoder

Result: RESULT_PLACEHOLDER
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tissue_2d.py"))
    c.data.task = "structures"
    return c
