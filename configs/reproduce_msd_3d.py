"""The 3D variant of configs/reproduce_msd.py: the same tasks, channels, sizes, regimes and seeds, with a 3D
U-Net on 64³ patches at 2 mm (128 mm cubes: a whole hippocampus crop, most of a prostate, the atrium with its
surroundings); a third of the training patches are centred on foreground. Meant for a GPU.

    jaxfcn reproduce --config configs/reproduce_msd_3d.py --out runs/msd_3d

The tasks are found as in configs/reproduce_msd.py (`$JAXFCN_MSD_DIR/<task>`, else
`$JAXFCN_CACHE/msd/<task>`). Result: not run here (no MSD task on the build machine); tests/test_reproduce_msd.py
runs it on MSD-shaped folders.
"""
import os

from jaxfcn.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reproduce_msd.py"))
    c.model.spatial_dims = 3
    c.data.dims = 3
    c.data.spacing = 2.0
    c.data.patch_shape = (64, 64, 64)
    c.data.foreground_oversample = 0.33
    c.data.foreground_batch_fraction = 0.0  # the patches already centre a third on foreground (line above)
    c.train.batch_size = 2
    c.study.grid = "msd_3d"
    c.study.probe_images = 32  # 3D patches: CKA features of 32 probe patches per model
    return c
