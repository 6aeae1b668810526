"""Hard target (built-in): 7 subcortical structures (hippocampus, amygdala, caudate, putamen, pallidum,
thalamus, lateral ventricles) on real T1 MRI; the architecture of tissue_2d.py.

    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_random
    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_transfer --init runs/tissue_2d
    jaxfcn train --config configs/subcortical_2d.py --workdir runs/sub_frozen --freeze encoder

Result: RESULT_PLACEHOLDER
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tissue_2d.py"))
    c.data.task = "subcortical"
    return c
