"""Template: Medical Segmentation Decathlon Task05_Prostate (multi-parametric MRI: T2 + ADC; peripheral
zone + transition zone).

    jaxfcn train --config configs/msd_task05_prostate.py --workdir runs/prostate --data /data/Task05_Prostate
    jaxfcn evaluate --workdir runs/prostate

Voxels are strongly anisotropic (about 0.6×0.6×3.6 mm) and there are only 32 training cases, so this is a
2D U-Net on axial slices at the native in-plane resolution (data.spacing = 0 keeps the grid), as
nnU-Net's 2D configuration does. Both channels are z-scored per case (MRI).

Result: not run here (the dataset is not bundled; no network on the build machine).
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.depth = 5
    c.model.base_width = 16
    c.data.task = "/data/Task05_Prostate"
    c.data.dims = 2
    c.data.spacing = 0.0
    c.data.orientations = ("axial",)
    c.data.slice_shape = (320, 320)
    c.data.split = "kfold"
    c.train.steps = 4000
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
