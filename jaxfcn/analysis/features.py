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

CONVENTIONS = ("images", "positions")


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


def sample_positions(num_images: int, spatial_shape: Sequence[int], per_image: int, seed: int = 0) -> np.ndarray:
    """(num_images, per_image, ndim) integer coordinates, distinct within an image, seeded per image index."""
    size = int(np.prod(spatial_shape))
    per_image = min(per_image, size)
    out = np.empty((num_images, per_image, len(spatial_shape)), np.int32)
    for i in range(num_images):
        flat = np.random.default_rng([seed, 8191, i]).choice(size, size=per_image, replace=False)
        out[i] = np.stack(np.unravel_index(np.sort(flat), tuple(spatial_shape)), axis=-1)
    return out


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
                     batch_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
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
    layers = _check_layers(model, layers)
    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
        raise ValueError("no probe images")
    variables = {k: v for k, v in variables.items() if k == "params" or v}  # drop empty collections
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
    coords_all = (sample_positions(n, spatial_in, positions_per_image, seed) if convention == "positions"
                  else np.zeros((n, 1, len(spatial_in)), np.int32))
    pieces: dict[str, list] = {name: [] for name in layers}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        x = images[start:stop]
        coords = coords_all[start:stop]
        if pad:  # repeat the last image so the batch shape (and the compiled program) stays the same
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            coords = np.concatenate([coords, np.repeat(coords[-1:], pad, axis=0)])
        out = select(variables, x, coords)
        for name in layers:
            pieces[name].append(np.asarray(out[name])[:stop - start])
    result = {}
    for name in layers:
        feats = np.concatenate(pieces[name])
        result[name] = feats.reshape(-1, feats.shape[-1]) if convention == "positions" else feats
    return result
