"""Which part of the network each parameter belongs to, and moving parts between models.

A parameter's label is the first key of its path: ``encoder``, ``decoder`` or ``head`` (the U-Net is built
so that this holds, see :mod:`jaxfcn.models.unet`). Everything else (freezing, transfer, per-part
statistics) is a function of these labels.

Example::

    labels = param_labels(params)                       # same tree, leaves are "encoder"/"decoder"/"head"
    trainable, frozen = split_params(params, ("encoder",))
    params = merge_params(trainable, frozen)            # exact inverse
    params = transfer_params(fresh, source, ("encoder", "decoder"))   # source features, fresh head
    params = zero_head(params)                          # or with_head(params, kernel, bias)
"""
from __future__ import annotations

from typing import Iterable

import jax

PARTS = ("encoder", "decoder", "head")


def check_parts(parts: Iterable[str], what: str = "part") -> tuple[str, ...]:
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}: choose from {list(PARTS)}")
    return parts


def param_labels(params) -> dict:
    """A tree like ``params`` whose leaves are the part names."""
    missing = [p for p in PARTS if p not in params]
    extra = [k for k in params if k not in PARTS]
    if missing or extra:
        raise ValueError(f"params must have exactly the top-level keys {list(PARTS)}; got {list(params)}")
    return {part: jax.tree.map(lambda _, part=part: part, params[part]) for part in PARTS}


def split_params(params, frozen_parts: Iterable[str]) -> tuple[dict, dict]:
    """(trainable, frozen): two dicts of top-level parts, disjoint and together equal to ``params``."""
    frozen_parts = check_parts(frozen_parts, "frozen part")
    trainable = {k: v for k, v in params.items() if k not in frozen_parts}
    frozen = {k: v for k, v in params.items() if k in frozen_parts}
    return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> dict:
    """Inverse of :func:`split_params`; keeps the canonical part order."""
    both = {**trainable, **frozen}
    return {k: both[k] for k in PARTS if k in both}


# The model keys that decide what a transferred part computes: its parameter shapes (spatial_dims,
# in_channels, depth, widths, convs_per_block, kernel_size, norm) and, with equal shapes, the function its
# values are used in (norm, norm_groups for group norm, activation). A transfer between configs that differ
# in any of them is refused. Not listed: num_classes (shapes only the head, re-initialised when it
# differs), kernel_init (draws initial values, which the transfer replaces), conv_impl and compute_dtype
# (same function, other program or rounding).
TRANSFER_KEYS = ("spatial_dims", "in_channels", "depth", "base_width", "width_multiplier", "convs_per_block",
                 "kernel_size", "norm", "norm_groups", "activation")


def transfer_differences(source_model, target_model) -> list[str]:
    """``"model.KEY: S in the source, T here"`` for each key of :data:`TRANSFER_KEYS` whose value differs
    between two ``config.model`` sections (empty: the source's parts compute the same function here).
    ``norm_groups`` counts only where both models use group norm."""

    def value(model, key):
        v = model.get(key)
        return list(v) if isinstance(v, tuple) else v

    both_group = source_model.get("norm") == target_model.get("norm") == "group"
    return [f"model.{k}: {value(source_model, k)} in the source, {value(target_model, k)} here"
            for k in TRANSFER_KEYS if value(source_model, k) != value(target_model, k)
            and (k != "norm_groups" or both_group)]


def transfer_params(target: dict, source: dict, parts: Iterable[str] = ("encoder", "decoder")) -> dict:
    """``target`` with the listed parts replaced by the source's (shapes must agree exactly).

    The head is re-initialised simply by not listing it: it keeps ``target``'s fresh initial values.
    """
    parts = check_parts(parts, "transfer part")
    out = dict(target)
    for part in parts:
        src_shapes = jax.tree.map(lambda a: tuple(a.shape), source[part])
        dst_shapes = jax.tree.map(lambda a: tuple(a.shape), target[part])
        if src_shapes != dst_shapes:
            raise ValueError(f"cannot transfer '{part}': source and target architectures differ")
        out[part] = source[part]
    return merge_params(out, {})


# Head initialisations of a transferred model (see jaxfcn.reproduce.controls, which compares them):
#   fresh  - the target's own random draw (kernel_init, zero bias): what transfer_params leaves;
#   zero   - kernel and bias 0: every class starts at probability 1/K, and the first gradients reach only
#            the head (∂L/∂features = W = 0), so the transferred features are not disturbed by a random head;
#   probe  - a linear probe fitted on the transferred features (linear probing, then fine-tuning: Kumar et
#            al., ICLR 2022), computed by jaxfcn.analysis.transfer and set with with_head.
HEAD_INITS = ("fresh", "zero", "probe")


def with_head(params: dict, kernel, bias) -> dict:
    """``params`` with the head's kernel and bias replaced (shapes must equal the current head's).

    ``kernel`` may be given as (C_in, K) for a 1×1 head; it is reshaped to the head's (1, …, 1, C_in, K).
    """
    import numpy as np

    head = params["head"]
    kernel = np.asarray(kernel, np.asarray(head["kernel"]).dtype)
    bias = np.asarray(bias, np.asarray(head["bias"]).dtype)
    if kernel.size == np.asarray(head["kernel"]).size and kernel.ndim == 2:
        kernel = kernel.reshape(np.shape(head["kernel"]))
    if kernel.shape != np.shape(head["kernel"]) or bias.shape != np.shape(head["bias"]):
        raise ValueError(f"head must be kernel {np.shape(head['kernel'])} and bias {np.shape(head['bias'])}; "
                         f"got {kernel.shape} and {bias.shape}")
    return merge_params({**params, "head": {**head, "kernel": kernel, "bias": bias}}, {})


def zero_head(params: dict) -> dict:
    """``params`` with an all-zero head (kernel and bias)."""
    import numpy as np

    return with_head(params, np.zeros(np.shape(params["head"]["kernel"])), np.zeros(np.shape(params["head"]["bias"])))
