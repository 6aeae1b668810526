"""Representations of named U-Net layers on a fixed probe set, as matrices for CKA.

The layers are the ones :class:`jaxfcn.models.unet.UNet` sows into the ``intermediates`` collection
(:func:`jaxfcn.models.unet.layer_names`: every encoder level, the bottleneck, every decoder block, and
the head's input). A conv feature map (N, *S, C) becomes a matrix in one of two conventions:

* ``"images"`` (default; Kornblith et al. 2019, Nguyen et al. 2021): rows = probe images, columns =
  the flattened H·W(·D)·C. CKA then compares how the two layers arrange the *images*. With
  ``max_features`` the columns are bounded: ``P = max_features // C`` spatial positions are sampled
  (seeded, without replacement, the same for every image and every model) and all C channels kept at
  each. Since the linear Gram ``XXᵀ`` is a sum over positions, the sampled Gram is an unbiased estimate
  of the full one up to the constant factor ``|S|/P``, which CKA ignores.
* ``"positions"``: rows = spatial positions pooled over images, columns = C. ``positions_per_image``
  positions are sampled per image (seeded by the image's index) on the *input* grid and mapped to each
  layer's grid (``coordinate · size_layer // size_input``), so row r is the same input location of the
  same image in every layer and every model; layers of different resolution stay comparable.
  ``positions_within="nonzero"`` draws them only where the input is nonzero in some channel (the imaged
  anatomy: preprocessing leaves background exactly 0), so the rows are tissue, not a block of identical
  background rows that any two networks agree on; an image with fewer such positions gives all it has.

Memory stays bounded in 3D: features are selected on the device batch by batch, so only
``n × P × C`` (images) or ``n·positions_per_image × C`` (positions) floats per layer reach the host.

Probe set: :func:`probe_images` draws a fixed, seeded subset of a dataset's validation split.

Example::

    images = probe_images(dataset, count=64, seed=0)
    feats = extract_features(model, variables, images, ["enc_0", "bottleneck"], max_features=16384)
    cka_matrix(list(feats.values()))
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from jaxfcn.runtime import on_device

CONVENTIONS = ("images", "positions")
# Where the "positions" convention may sample: anywhere, or only where the input image is nonzero in some
# channel. Preprocessing z-scores MRI over its nonzero voxels and leaves the rest exactly 0, so "nonzero"
# is the imaged anatomy; background positions all carry the same input and would add a block of
# identical rows that every network, trained or not, agrees on.
POSITION_REGIONS = ("all", "nonzero")


def probe_indices(available: int, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``count`` distinct examples out of ``available`` (all when count ≥ available)."""
    if count <= 0 or count >= available:
        return np.arange(available)
    return np.sort(np.random.default_rng([seed, 4099]).choice(available, size=count, replace=False))


def probe_images(dataset, count: int = 64, seed: int = 0, split: str = "val") -> np.ndarray:
    """A fixed, seeded probe set (count, *S, C) float32 from ``dataset``'s ``split`` (validation by default)."""
    source = dataset.sources[split]
    idx = probe_indices(len(source), count, seed)
    return np.stack([np.asarray(source[int(i)]["image"], np.float32) for i in idx])


def sample_positions(num_images: int, spatial_shape: Sequence[int], per_image: int, seed: int = 0,
                     within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded positions per image: ``(coords (num_images, per_image, ndim) int32, valid (num_images, per_image))``.

    Positions are distinct within an image and drawn with ``np.random.default_rng([seed, 8191, i])`` for
    image i, so they depend on the image's index and never on a model. ``within`` (num_images, *spatial)
    bool restricts image i's draw to its True positions; an image with fewer than ``per_image`` of them
    contributes all it has and its remaining slots are marked invalid (``valid`` False, coordinates 0).
    """
    size = int(np.prod(spatial_shape))
    per_image = min(per_image, size)
    coords = np.zeros((num_images, per_image, len(spatial_shape)), np.int32)
    valid = np.zeros((num_images, per_image), bool)
    for i in range(num_images):
        allowed = np.arange(size) if within is None else np.flatnonzero(np.asarray(within[i]).reshape(-1))
        take = min(per_image, len(allowed))
        flat = np.sort(np.random.default_rng([seed, 8191, i]).choice(allowed, size=take, replace=False))
        coords[i, :take] = np.stack(np.unravel_index(flat, tuple(spatial_shape)), axis=-1)
        valid[i, :take] = True
    return coords, valid


def column_positions(layer: str, spatial_shape: Sequence[int], channels: int, max_features: int | None,
                     seed: int = 0) -> np.ndarray | None:
    """Flat spatial indices kept for the ``images`` convention (None = all), seeded by layer name."""
    size = int(np.prod(spatial_shape))
    if not max_features or size * channels <= max_features:
        return None
    keep = max(1, max_features // channels)
    rng = np.random.default_rng([seed, 4231, zlib.crc32(layer.encode())])
    return np.sort(rng.choice(size, size=keep, replace=False))


def _check_layers(model, layers) -> list[str]:
    from jaxfcn.models import layer_names

    available = layer_names(model.depth)
    if layers is None:
        return available
    layers = list(layers)
    for layer in layers:
        if layer not in available:
            raise ValueError(f"unknown layer '{layer}' (this model has: {', '.join(available)})")
    return layers


def extract_features(model, variables, images, layers: Sequence[str] | None = None, *,
                     convention: str = "images", max_features: int | None = None, positions_per_image: int = 64,
                     positions_within: str = "all", batch_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """``{layer: (rows, cols) float32}`` for ``images`` (N, *S, C_in), see the module docstring.

    ``variables``: ``{"params", …}`` of ``model`` (e.g. from :func:`jaxfcn.train.checkpoint.load_variables`);
    ``layers``: names from :func:`jaxfcn.models.layer_names` (default: all). Batches are padded to
    ``batch_size`` so one compilation serves the whole probe set.
    """
    import jax
    import jax.numpy as jnp

    from jaxfcn.models.layers import compiler_options

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention '{convention}' (choose from {', '.join(CONVENTIONS)})")
    if positions_within not in POSITION_REGIONS:
        raise ValueError(f"unknown positions_within '{positions_within}' (choose from {', '.join(POSITION_REGIONS)})")
    layers = _check_layers(model, layers)
    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
        raise ValueError("no probe images")
    # empty collections dropped; copied to the device once, not at every batch
    variables = on_device({k: v for k, v in variables.items() if k == "params" or v})
    spatial_in = images.shape[1:-1]

    def forward(v, x):
        _, state = model.apply(v, x, train=False, mutable=["intermediates"])
        return {name: state["intermediates"][name][0] for name in layers}

    shapes = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((batch_size, *images.shape[1:]), jnp.float32))
    keep = {name: column_positions(name, s.shape[1:-1], s.shape[-1], max_features, seed)
            for name, s in shapes.items()}

    def select(v, x, coords):
        feats = forward(v, x)
        out = {}
        for name, f in feats.items():
            f = f.astype(jnp.float32)
            b, *spatial, c = f.shape
            if convention == "images":
                f = f.reshape(b, -1, c)
                if keep[name] is not None:
                    f = f[:, keep[name], :]
                out[name] = f.reshape(b, -1)
            else:
                scale = np.asarray(spatial) / np.asarray(spatial_in)
                idx = (coords * scale).astype(jnp.int32)  # input-grid coordinate → this layer's grid
                rows = (jnp.arange(b)[:, None],) + tuple(idx[..., a] for a in range(len(spatial)))
                out[name] = f[rows]  # (b, k, c)
        return out

    select = jax.jit(select, compiler_options=compiler_options())
    if convention == "positions":
        within = np.any(images != 0, axis=-1) if positions_within == "nonzero" else None
        coords_all, valid = sample_positions(n, spatial_in, positions_per_image, seed, within=within)
    else:
        coords_all, valid = np.zeros((n, 1, len(spatial_in)), np.int32), np.ones((n, 1), bool)
    pieces: dict[str, list] = {name: [] for name in layers}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        x = images[start:stop]
        coords = coords_all[start:stop]
        if pad:  # repeat the last image so the batch shape (and the compiled program) stays the same
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            coords = np.concatenate([coords, np.repeat(coords[-1:], pad, axis=0)])
        out = select(variables, *on_device((x, coords)))
        for name in layers:
            pieces[name].append(np.asarray(out[name])[:stop - start])
    result = {}
    for name in layers:
        feats = np.concatenate(pieces[name])
        result[name] = feats[valid] if convention == "positions" else feats  # (rows, C): valid positions only
    return result
