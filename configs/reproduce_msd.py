"""The study's grid on Medical Segmentation Decathlon tasks (real multi-subject MRI), 2D; meant for a GPU.

    jaxfcn data fetch msd Task01_BrainTumour             # and Task04_Hippocampus, Task02_Heart, Task05_Prostate
    jaxfcn reproduce --config configs/reproduce_msd.py --out runs/msd
    jaxfcn reproduce --config configs/reproduce_msd_3d.py --out runs/msd_3d     # the 3D variant

Where the tasks are: `$JAXFCN_MSD_DIR/<task>`, else `$JAXFCN_CACHE/msd/<task>` (default
`~/.cache/jaxfcn/msd/<task>`): the folder `jaxfcn data fetch msd TASK` unpacks into, so the two commands
above agree with no path given. `--source DIR` / `--targets DIR …` replace them with any MSD or nnU-Net
folders; a missing or malformed folder stops the study before anything is written, in one line naming it.

Source: Task01_BrainTumour (484 brain MRI of glioma patients, four contrasts; labels oedema, non-enhancing
and enhancing tumour). Targets: Task04_Hippocampus (T1 MRI cropped around the hippocampus, 260 cases;
anterior and posterior hippocampus), Task02_Heart (MRI, 20 cases; left atrium), Task05_Prostate
(T2 + ADC, 32 cases; peripheral and transition zones). Transfer needs one input-channel count throughout,
so the study feeds one contrast of each task (`data.channels`, per folder name): the source's T1w
(channel 1, closest to the hippocampus scans' T1), the prostate's T2 (channel 0); the others have one.

Training-set sizes count subjects (cases): 1, 3, 6, 12, each seed drawing its own subset; 12 is the most
every target offers (Task02_Heart: 20 labelled cases, 4 held out for test, 4 for validation), so every size
means the same on every target. Sources train on all their training cases.

Data: 1.5 mm isotropic, axial slices centre-cropped/padded to 128² (192 mm: a whole brain or prostate
field of view, the middle of a heart scan; the hippocampus crops are padded). Check what the network sees with
`jaxfcn data show $JAXFCN_MSD_DIR/Task02_Heart --out heart.png`. One spacing and one slice size for all
tasks: the source's filters act on the same physical scale in every target.

Result: not run here (the build machine has no network, so no MSD task); its end-to-end test runs it on
MSD-shaped folders (tests/test_reproduce_msd.py). Preparing Task01_BrainTumour reads 484 four-channel
volumes once (cached under `$JAXFCN_CACHE/prepared`).
"""
import os

from jaxfcn.config import load_config
from jaxfcn.data.msd_fetch import task_folder

SOURCE = "Task01_BrainTumour"
TARGETS = ("Task04_Hippocampus", "Task02_Heart", "Task05_Prostate")


def get_config():
    # The GPU training recipe of the full grid (model, optimiser, budgets, logging), on MSD tasks.
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reproduce_full.py"))
    c.model.norm_groups = 8
    c.data.channels = f"{SOURCE}=1,Task05_Prostate=0"  # one contrast per task (docstring)
    c.data.split = "kfold"  # MSD folders: a fixed test set, then data.num_folds folds (fold 0 validates)
    c.data.spacing = 1.5
    c.data.orientations = ("axial",)  # Task05_Prostate's 3.6 mm slices make other orientations blurry
    c.data.subset_per_seed = True
    c.data.foreground_batch_fraction = 0.5  # small structures (hippocampus, atrium) in half of every batch
    c.train.checkpoint_best = False  # the study evaluates final models
    c.study.grid = "msd"
    c.study.source = task_folder(SOURCE)
    c.study.targets = tuple(task_folder(t) for t in TARGETS)
    c.study.train_sizes = (1, 3, 6, 12)
    c.study.regimes = ("random", "transfer", "frozen_random")
    return c
