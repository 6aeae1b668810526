"""Template: Medical Segmentation Decathlon Task09_Spleen (portal-venous CT; spleen).

    jaxfcn train --config configs/msd_task09_spleen.py --workdir runs/spleen --data /data/Task09_Spleen
    jaxfcn evaluate --workdir runs/spleen

CT is clipped to a soft-tissue window of [-57, 164] HU (the window of MONAI's spleen tutorial) and
scaled to [-1, 1]; volumes are resampled to 1.5 mm isotropic and a 3D U-Net sees 96³ patches, a third
of them centred on the spleen (a small organ in a large field of view).

Result: not run here (the dataset is not bundled; no network on the build machine).
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.spatial_dims = 3
    c.model.depth = 5
    c.model.base_width = 16
    c.data.task = "/data/Task09_Spleen"
    c.data.modality = "CT"
    c.data.ct_window = (-57.0, 164.0)
    c.data.dims = 3
    c.data.spacing = 1.5
    c.data.patch_shape = (96, 96, 96)
    c.data.foreground_oversample = 0.33
    c.data.split = "kfold"
    c.train.steps = 6000
    c.train.batch_size = 2
    c.train.learning_rate = 1e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
