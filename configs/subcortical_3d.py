"""Hard target (built-in) with the 3D U-Net of tissue_3d.py: 7 subcortical structures on real T1 MRI.

    jaxfcn train --config configs/subcortical_3d.py --workdir runs/sub3d_random
    jaxfcn train --config configs/subcortical_3d.py --workdir runs/sub3d_transfer --init runs/tissue_3d
    jaxfcn train --config configs/subcortical_3d.py --workdir runs/sub3d_frozen --freeze encoder

Result: not run to completion here (CPU-only build machine).
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tissue_3d.py"))
    c.data.task = "subcortical"
    return c
