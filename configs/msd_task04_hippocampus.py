"""Template: Medical Segmentation Decathlon Task04_Hippocampus (MRI, anterior + posterior hippocampus).

    jaxfcn data check /data/Task04_Hippocampus
    jaxfcn train --config configs/msd_task04_hippocampus.py --workdir runs/hippo --data /data/Task04_Hippocampus
    jaxfcn evaluate --workdir runs/hippo                 # held-out cases of the folder's split

The volumes are small (about 35×50×35 voxels at 1 mm, cropped around the hippocampus), so a 3D U-Net
on 1 mm patches of 32×48×32 sees almost the whole case (nnU-Net picks 40×56×40 for this task).
Cases are split by data.fold of data.num_folds.

Result: not run here (the dataset is not bundled; no network on the build machine).
"""
from jaxfcn.config import base_config


def get_config():
    c = base_config()
    c.model.spatial_dims = 3
    c.model.depth = 4
    c.model.base_width = 16
    c.data.task = "/data/Task04_Hippocampus"
    c.data.dims = 3
    c.data.spacing = 1.0
    c.data.patch_shape = (32, 48, 32)
    c.data.foreground_oversample = 0.33
    c.data.split = "kfold"
    c.train.steps = 4000
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
