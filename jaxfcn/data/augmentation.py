"""On-device, jittable augmentation of a training batch (2D slices or 3D patches).

For each example independently, with ``rng`` split per transform:

1. **Flips**: each spatial axis listed in ``data.flip_axes`` (0-based over the example's spatial axes) is
   flipped with probability ½. Axes are those of the example, so for 2D slices from several orientations
   axis 0 is left–right for axial/coronal slices but anterior–posterior for sagittal ones. Only list axes
   whose flip maps every class onto itself (e.g. left and right merged).
2. **Rotation and scaling** about the centre: angle(s) uniform in ±``data.rotate_degrees`` (2D: one angle;
   3D: one per axis, composed), isotropic zoom uniform in ``1 ± data.scale_range``. Images are resampled
   linearly, labels by nearest neighbour; points from outside the example read 0 (background).
3. **Intensity jitter** (image only): ``x · a + b`` with ``a ∈ 1 ± j``, ``b ∈ ±j`` per example and channel,
   ``j = data.intensity_jitter``, applied where the image is nonzero so the background stays 0.

Keys other than ``image`` and ``label`` pass through. With ``data.augment`` false the batch is returned
unchanged. Call it inside the jitted train step, or jit it on its own::

    aug = jax.jit(lambda key, b: augment_batch(key, b, config.data))
"""
from __future__ import annotations

import math

from jaxfcn.errors import UserError

# jax is imported inside the functions: ``jaxfcn.data`` imports this module eagerly (see its __init__), and
# ``import jaxfcn.data`` must stay cheap for the CLI.


def _rotation(angles, dims: int):
    import jax.numpy as jnp

    if dims == 2:
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        return jnp.array([[c, -s], [s, c]])
    matrix = jnp.eye(3)
    for axis in range(3):  # rotation in the plane of the two other axes
        i, j = [a for a in range(3) if a != axis]
        c, s = jnp.cos(angles[axis]), jnp.sin(angles[axis])
        r = jnp.eye(3).at[i, i].set(c).at[i, j].set(-s).at[j, i].set(s).at[j, j].set(c)
        matrix = r @ matrix
    return matrix


def _warp_one(image, label, matrix):
    """Resample one example at ``matrix @ (p − centre) + centre`` for every output voxel ``p``."""
    import jax
    import jax.numpy as jnp

    spatial = label.shape
    centre = jnp.array([(n - 1) / 2 for n in spatial])
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in spatial], indexing="ij"))
    points = jnp.tensordot(matrix, grid - centre.reshape((-1,) + (1,) * len(spatial)), axes=1)
    coords = points + centre.reshape((-1,) + (1,) * len(spatial))
    warp_channel = lambda channel: jax.scipy.ndimage.map_coordinates(channel, list(coords), order=1, mode="constant")
    image = jax.vmap(warp_channel, in_axes=-1, out_axes=-1)(image)
    label = jax.scipy.ndimage.map_coordinates(label, list(coords), order=0, mode="constant")
    return image, label


def augment_batch(rng, batch: dict, data_config) -> dict:
    if not data_config.augment:
        return batch
    import jax
    import jax.numpy as jnp

    image, label = batch["image"], batch["label"]
    batch_size, dims = image.shape[0], image.ndim - 2
    for axis in data_config.flip_axes:
        if not 0 <= int(axis) < dims:
            raise UserError(f"data.flip_axes={tuple(data_config.flip_axes)}: axes must be in 0..{dims - 1}")
    k_flip, k_angle, k_scale, k_gain, k_bias = jax.random.split(rng, 5)

    flip_keys = jax.random.split(k_flip, max(1, len(data_config.flip_axes)))
    for key, axis in zip(flip_keys, data_config.flip_axes):
        flip = jax.random.bernoulli(key, 0.5, (batch_size,))
        image = jnp.where(flip.reshape((-1,) + (1,) * (dims + 1)), jnp.flip(image, int(axis) + 1), image)
        label = jnp.where(flip.reshape((-1,) + (1,) * dims), jnp.flip(label, int(axis) + 1), label)

    max_angle = math.radians(float(data_config.rotate_degrees))
    scale_range = float(data_config.scale_range)
    if max_angle > 0 or scale_range > 0:
        n_angles = 1 if dims == 2 else 3
        angles = jax.random.uniform(k_angle, (batch_size, n_angles), minval=-max_angle, maxval=max_angle)
        zoom = jax.random.uniform(k_scale, (batch_size,), minval=1 - scale_range, maxval=1 + scale_range)
        # Sampling at zoom⁻¹·R·p shows the content enlarged by `zoom` and rotated.
        matrices = jax.vmap(lambda a, z: _rotation(a, dims) / z)(angles, zoom)
        image, label = jax.vmap(_warp_one)(image.astype(jnp.float32), label, matrices)

    jitter = float(data_config.intensity_jitter)
    if jitter > 0:
        shape = (batch_size,) + (1,) * dims + (image.shape[-1],)
        gain = jax.random.uniform(k_gain, shape, minval=1 - jitter, maxval=1 + jitter)
        bias = jax.random.uniform(k_bias, shape, minval=-jitter, maxval=jitter)
        image = jnp.where(image != 0, image * gain + bias, 0.0)
    return {**batch, "image": image.astype(batch["image"].dtype), "label": label.astype(batch["label"].dtype)}
