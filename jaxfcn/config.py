"""Experiment configuration: the base ConfigDict every `configs/*.py` starts from, loading, overrides.

Every experiment is a Python file in ``configs/`` whose ``get_config()`` returns an
``ml_collections.ConfigDict`` built from :func:`base_config`. Keeping one base means every config has the
same keys, so ``--set`` overrides and the workdir compatibility check work uniformly.

Example::

    from jaxfcn.config import load_config
    cfg = load_config("configs/quick.py", overrides=["train.steps=50", "data.task=subcortical"])
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections

from jaxfcn.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    """All keys with their defaults. Configs change values; they never add keys."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.spatial_dims = 2
    c.model.in_channels = 0  # 0 = taken from the data (resolved value is saved in the workdir's config)
    c.model.num_classes = 0  # 0 = taken from the data, background included
    c.model.depth = 4  # resolution levels; the deepest level is the bottleneck (part of the encoder)
    c.model.base_width = 16
    c.model.width_multiplier = 2
    c.model.convs_per_block = 2
    c.model.kernel_size = 3
    c.model.norm = "group"  # group | instance | batch | none
    c.model.norm_groups = 8
    c.model.activation = "relu"  # any jax.nn activation name, e.g. relu, leaky_relu, gelu, silu
    c.model.kernel_init = "he_normal"  # he_normal | he_uniform | glorot_uniform | glorot_normal | lecun_normal
    c.model.conv_impl = "fast"  # plain | fast | fast_xla | per_seed | im2col: the layers' formulation (jaxfcn.models.fast_ops)
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)

    c.data = ml_collections.ConfigDict()
    c.data.task = "tissue"  # built-in task name, or a path to an MSD / nnU-Net folder
    c.data.dims = 2  # 2: slices; 3: patches
    c.data.orientations = ("axial", "coronal", "sagittal")  # 2D only
    c.data.spacing = 2.0  # mm, isotropic resampling target (0 = keep native spacing)
    c.data.slice_shape = (128, 128)  # 2D input size (crop/pad)
    c.data.patch_shape = (64, 64, 64)  # 3D input size
    c.data.foreground_oversample = 0.33  # 3D: fraction of patches centred on foreground
    # 2D: fraction of every training batch drawn from the slices that hold foreground (0 = uniform over all
    # slices); the slices' counterpart of foreground_oversample (jaxfcn.data.dataset).
    c.data.foreground_batch_fraction = 0.0
    c.data.split = "templates"  # built-in: templates (the only one); user data: kfold
    c.data.fold = 0
    c.data.num_folds = 5
    c.data.train_size = 0  # training SUBJECTS (cases): 0 = all; N = seeded, nested subset of N cases
    c.data.subset_seed = 0
    c.data.subset_per_seed = False  # True: the subset seed is train.seed (each seed draws its own subjects)
    # Built-in tasks: subjects generated from the real templates (jaxfcn.data.subjects; docs/data.md).
    c.data.train_subjects = 32  # warped sym09a subjects (up to 10000)
    c.data.val_subjects = 4  # warped fsl subjects
    c.data.test_subjects = 4  # warped asym09c subjects, besides the real asym09c
    c.data.subject_labels = "nearest"  # nearest | linear (one-hot trilinear, then argmax)
    c.data.subject_resolution_mm = 0.0  # > data.spacing: blur each subject to a random FWHM up to this
    c.data.modality = ""  # "" = from dataset.json; "CT" or "MRI" forces the normalisation
    # Folder tasks: the image channels used, as indices into dataset.json's modalities: "" = all; "1" or "0,2"
    # for any folder; "Task01_BrainTumour=1,Task05_Prostate=0+1" per folder name (others keep all). The
    # model's in_channels follows; a study's source and targets must agree (jaxfcn.data.folders.selected_channels).
    c.data.channels = ""
    c.data.ct_window = (-1000.0, 1000.0)
    c.data.augment = True
    c.data.flip_axes = ()  # spatial axes that may be flipped (empty: none; left-right labels merged ⇒ safe)
    c.data.rotate_degrees = 10.0
    c.data.scale_range = 0.1
    c.data.intensity_jitter = 0.1

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.steps = 2000
    c.train.batch_size = 8
    c.train.optimizer = "adam"  # adam | adamw | sgd
    c.train.learning_rate = 1e-3
    c.train.lr_schedule = "cosine"  # constant | cosine
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.0
    c.train.momentum = 0.9  # sgd only
    c.train.grad_clip = 0.0  # 0 = no clipping
    c.train.loss = "dice_ce"  # dice_ce | dice | ce
    c.train.dice_weight = 1.0
    c.train.ce_weight = 1.0
    c.train.eval_every = 200
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.checkpoint_best = True  # also checkpoint at every new best validation Dice (for --step best)
    c.train.snapshot_steps = "log:8"  # "log:K" = K log-spaced steps, or "10,100,1000"; step 0 always saved
    c.train.val_batches = 8
    c.train.init = "random"  # random | path to a source workdir
    c.train.init_step = -1  # source step to transfer from; -1 = latest
    c.train.transfer_parts = ("encoder", "decoder")
    c.train.reinit_head = False
    c.train.freeze = ()  # e.g. ("encoder",)
    c.train.num_seeds = 1
    c.train.seed_strategy = "auto"  # auto | vmap | per_seed | im2col | unrolled | map (jaxfcn.train.seeds)
    c.train.seed_data_order = "shared"  # shared | independent
    c.train.parallel = "auto"  # auto | none | pmap | sharding

    # The experiment grid of `jaxfcn reproduce` (ignored by a single training run).
    c.study = ml_collections.ConfigDict()
    c.study.grid = "custom"  # quick | standard | full | custom: what the report says the run can show
    c.study.source = "tissue"  # built-in task or MSD/nnU-Net folder
    c.study.targets = ("subcortical", "structures")
    c.study.train_sizes = (1, 3, 10, 30)  # target training subjects (cases); 0 = all
    c.study.regimes = ("random", "transfer", "transfer_encoder", "frozen_random")  # see reproduce.grid.REGIMES
    c.study.seeds = 5  # per target condition; transfer seed s starts from its own source seed s
    c.study.source_seeds = 0  # 0 = one source per target seed (the only design the study allows)
    c.study.source_steps = 2000
    c.study.target_steps = 1000
    # Per-target overrides of target_steps, "task=steps,…" (e.g. "lobes=1200"): a harder target needs a longer
    # budget to learn; every regime and size of a target trains the same number of steps.
    c.study.target_steps_by_task = ""
    c.study.probe_images = 64  # validation images fed to every model for CKA
    # CKA of the study (jaxfcn.reproduce.analysis): debiased | biased (only to compare with its artefact)
    c.study.cka_estimator = "debiased"
    # Rows of a layer's CKA representation: "positions" (default) = seeded spatial positions of every probe
    # image, columns = channels; "images" = one row per probe image, columns = its flattened activations.
    c.study.cka_convention = "positions"
    c.study.cka_positions_per_image = 16  # positions convention: rows = probe_images × this
    c.study.cka_positions_within = "nonzero"  # positions where the probe image is nonzero, or "all"
    c.study.cka_max_features = 16384  # images convention: columns per layer (seeded positions × all channels)
    c.study.cka_permutations = 200  # permutation-null draws per layer
    # Base widths at which the untrained-network CKA baseline is also measured (jaxfcn.analysis.width_null);
    # () = not measured. Shows where the study's width sits: random features agree more as width grows.
    c.study.cka_null_widths = ()
    return c


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a config file and apply ``key=value`` overrides."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"jaxfcn_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config is user code: report where it broke, in one line
        raise UserError(f"{path}: cannot load config: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: config file has no get_config() function")
    config = module.get_config()
    check_keys(config, base_config(), source=path)
    apply_overrides(config, overrides)
    return config


def check_keys(config, reference, source: str, prefix: str = "") -> None:
    """Every key of ``config`` must exist in ``reference`` (typos must not pass silently)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in reference:
            raise UserError(f"{source}: unknown config key '{name}'")
        if isinstance(value, ml_collections.ConfigDict):
            check_keys(value, reference[key], source, prefix=name + ".")


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: --set data.task=subcortical


def apply_overrides(config, overrides) -> None:
    """Apply ``key.sub=value`` strings. Unknown keys and wrong types are user errors."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = config
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UserError(f"--set {item}: unknown config key '{key}'")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise UserError(f"--set {item}: unknown config key '{key}'")
        current = node[leaf]
        value = _parse_value(text)
        if isinstance(current, str) and not isinstance(value, str):
            value = text  # a string key keeps the raw text: train.snapshot_steps=10,100 is not a tuple
        if isinstance(current, tuple) and isinstance(value, (list, tuple, str)):
            value = tuple(value) if not isinstance(value, str) else tuple(v for v in value.split(",") if v)
        elif isinstance(current, tuple) and isinstance(value, (int, float)):
            value = (value,)  # one element: study.train_sizes=30 means (30,)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"--set {item}: wrong type for '{key}' (expected {type(current).__name__}): {e}") from None


def config_to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def architecture_of(config) -> dict:
    """The keys that decide the shapes of the parameter tree (used to refuse mismatched workdirs/--init)."""
    m = config.model
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.to_dict().items()
            if k in ("spatial_dims", "in_channels", "num_classes", "depth", "base_width", "width_multiplier", "convs_per_block", "kernel_size", "norm")}
