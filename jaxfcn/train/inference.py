"""Whole-volume inference (2D slice by slice, 3D sliding window) and ``jaxfcn predict``.

- **2D models** segment a volume slice by slice along every orientation in ``data.orientations`` (the
  ones they were trained on; axial = the third canonical axis, as the data layer slices) and average the
  softmax of those passes. Each whole slice is zero-padded to a multiple of 2^depth (the network is fully
  convolutional), slices go through in batches of ``train.batch_size``, and the padding is cropped off
  again. (Why all orientations: a model trained on a mix of orientations can be much better along one
  axis than another.)
- **3D models** use a sliding window of ``data.patch_shape``: window starts on each axis are
  ``round(linspace(0, L − P, n))`` with ``n = ceil((L − P) / (P · (1 − overlap))) + 1`` (nnU-Net's rule;
  the volume is zero-padded to at least one patch). Each window's softmax is weighted by a Gaussian
  importance map (σ = P/8 per axis, peak 1, floored at its smallest positive value), summed, and divided
  by the summed weights; the label is the argmax.

``predict_file`` reads a NIfTI with :func:`jaxfcn.data.load_volume_for_prediction` (the training
preprocessing on the canonical grid) and writes the labels back onto the input's exact grid (shape,
voxel order and affine), atomically (temporary file + rename).

Example::

    jaxfcn predict --workdir runs/tissue --input t1.nii.gz --output t1_seg.nii.gz
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, Sequence

import numpy as np

from jaxfcn.errors import UserError
from jaxfcn.runtime import on_device

DEFAULT_OVERLAP = 0.5


def make_probabilities_fn(model) -> Callable:
    """Jitted ``(variables, x (N, *S, C)) -> softmax (N, *S, K)``. The model is a static argument of one
    module-level function, so every call with an equal model (flax modules compare by value) shares JAX's
    jit cache: evaluating many runs of one architecture traces it once per input shape."""
    import jax

    from jaxfcn.models.layers import compiler_options

    return functools.partial(jax.jit(_probabilities, static_argnums=0, compiler_options=compiler_options()), model)


def _probabilities(model, variables, x):
    import jax

    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)


def _batched(probabilities_fn, variables, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` (N, ...) in fixed-size batches (the last one padded by repetition; one compile)."""
    outputs = []
    variables = on_device(variables)  # copied once, not at every call (a no-op for device arrays)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outputs.append(np.asarray(probabilities_fn(variables, on_device(chunk)))[:n])
    return np.concatenate(outputs)


def _pad_to_multiple(array: np.ndarray, axes: Sequence[int], multiple: int) -> tuple[np.ndarray, tuple]:
    pads = [(0, 0)] * array.ndim
    for axis in axes:
        pads[axis] = (0, -array.shape[axis] % multiple)
    crop = tuple(slice(0, n) for n in array.shape)
    return np.pad(array, pads), crop


def predict_slices(probabilities_fn, variables, image: np.ndarray, axis: int, multiple: int,
                   batch_size: int) -> np.ndarray:
    """Softmax (X, Y, Z, K) of a 2D model applied to every slice of ``image`` (X, Y, Z, C) along ``axis``."""
    slices = np.moveaxis(image, axis, 0)  # (n, a, b, C): the data layer's np.take(volume, i, axis)
    padded, crop = _pad_to_multiple(slices, (1, 2), multiple)
    probs = _batched(probabilities_fn, variables, padded.astype(np.float32), batch_size)
    return np.moveaxis(probs[crop[:3]], 0, axis)


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one axis (``length ≥ patch``); see the module docstring."""
    if length <= patch:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    n = math.ceil((length - patch) / step) + 1
    return sorted({int(round(s)) for s in np.linspace(0, length - patch, n)})


def gaussian_importance(patch: Sequence[int]) -> np.ndarray:
    """Gaussian weights over a patch: σ = P/8 per axis, peak 1, no zeros."""
    grids = np.meshgrid(*[(np.arange(p) - (p - 1) / 2) / (p / 8) for p in patch], indexing="ij")
    weight = np.exp(-0.5 * sum(g**2 for g in grids)).astype(np.float32)
    weight /= weight.max()
    return np.maximum(weight, weight[weight > 0].min())


def predict_sliding_window(probabilities_fn, variables, image: np.ndarray, patch: Sequence[int],
                           overlap: float, batch_size: int) -> np.ndarray:
    """Softmax (X, Y, Z, K) of a 3D model by Gaussian-weighted sliding windows over ``image`` (X, Y, Z, C)
    (:class:`WindowSums`, one batch of windows after another)."""
    sums = WindowSums(probabilities_fn, variables, image, patch, overlap, batch_size)
    for index in range(sums.batches):
        sums.add_batch(index)
    return sums.probabilities()


class WindowSums:
    """The weighted sums of one volume's sliding windows, built one batch of windows at a time.

    The volume, the weighted sums and the summed weights stay on the device: per batch of windows, one
    jitted gather cuts the windows out, ``probabilities_fn`` runs them, and one jitted, donated update adds
    ``probs · weight`` and ``weight`` in place. Nothing returns to the host until the division in
    :meth:`probabilities`, so the loop is a queue of dispatches (on a GPU the host never waits for a window).
    The last batch is padded with copies of its last window, added with weight 0. The gather and the update
    compile once per volume shape (they are small); the network compiles once per batch shape. A caller
    that times batches (``benchmarks/sliding_window.py --lockstep``) drives :meth:`add_batch` itself."""

    def __init__(self, probabilities_fn, variables, image: np.ndarray, patch: Sequence[int], overlap: float,
                 batch_size: int):
        if not 0.0 <= overlap < 1.0:
            raise UserError(f"--overlap {overlap}: must be in [0, 1)")
        self._probabilities_fn, self._batch_size = probabilities_fn, batch_size
        self._patch = tuple(int(p) for p in patch)
        self._spatial = image.shape[:3]
        self._padded_shape = tuple(max(n, p) for n, p in zip(self._spatial, self._patch))
        # the variables, the volume and the weights are copied before the first window is cut out: a program
        # dispatched while an input is still being copied would run on XLA:CPU's pool threads, and so would
        # the whole volume's programs queued behind it (jaxfcn.runtime.on_device)
        self._variables = on_device(variables)
        self._volume = on_device(np.pad(image, [(0, s - n) for s, n in zip(self._padded_shape, self._spatial)]
                                        + [(0, 0)]))
        starts = np.array([(a, b, c) for a in window_starts(self._padded_shape[0], self._patch[0], overlap)
                           for b in window_starts(self._padded_shape[1], self._patch[1], overlap)
                           for c in window_starts(self._padded_shape[2], self._patch[2], overlap)], np.int32)
        count = len(starts)
        self.batches = -(-count // batch_size)
        self._starts = np.concatenate([starts, np.repeat(starts[-1:], self.batches * batch_size - count, axis=0)])
        self._live = (np.arange(len(self._starts)) < count).astype(np.float32)
        self._weight = on_device(gaussian_importance(self._patch))
        self.total = self.weights = None

    def add_batch(self, index: int) -> None:
        """Run batch ``index`` of windows and add it to :attr:`total` and :attr:`weights` (dispatched, not
        waited for)."""
        import jax.numpy as jnp

        gather, add = _window_programs()
        rows = slice(index * self._batch_size, (index + 1) * self._batch_size)
        batch_starts = jnp.asarray(self._starts[rows])
        probs = self._probabilities_fn(self._variables, gather(self._volume, batch_starts, self._patch))
        if self.total is None:
            self.total = jnp.zeros(self._padded_shape + (probs.shape[-1],), jnp.float32)
            self.weights = jnp.zeros(self._padded_shape, jnp.float32)
        self.total, self.weights = add(self.total, self.weights, jnp.asarray(probs), batch_starts,
                                       jnp.asarray(self._live[rows]), self._weight)

    def probabilities(self) -> np.ndarray:
        """Softmax (X, Y, Z, K): the weighted sums divided by the summed weights, the padding cropped off."""
        out = np.asarray(self.total / self.weights[..., None])
        return out[: self._spatial[0], : self._spatial[1], : self._spatial[2]]


@functools.cache
def _window_programs():
    """(gather, add): :func:`_gather_windows` and :func:`_add_windows` jitted (sums donated, updated in place)."""
    import jax

    return jax.jit(_gather_windows, static_argnums=2), jax.jit(_add_windows, donate_argnums=(0, 1))


def _gather_windows(volume, starts, patch):
    """(B, *patch, C) windows of ``volume`` (X, Y, Z, C) at ``starts`` (B, 3)."""
    import jax

    size = patch + (volume.shape[-1],)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(volume, (s[0], s[1], s[2], 0), size))(starts)


def _add_windows(total, weights, probs, starts, live, weight):
    """``total[window] += probs · weight · live`` and ``weights[window] += weight · live`` per window."""
    import jax

    def add(i, carry):
        total, weights = carry
        s = starts[i]
        w = weight * live[i]
        corner = (s[0], s[1], s[2])
        block = jax.lax.dynamic_slice(total, corner + (0,), probs.shape[1:])
        total = jax.lax.dynamic_update_slice(total, block + probs[i] * w[..., None], corner + (0,))
        summed = jax.lax.dynamic_slice(weights, corner, weight.shape)
        weights = jax.lax.dynamic_update_slice(weights, summed + w, corner)
        return total, weights

    return jax.lax.fori_loop(0, probs.shape[0], add, (total, weights))


def predict_volume(model, variables, image: np.ndarray, config, overlap: float = DEFAULT_OVERLAP,
                   probabilities_fn=None) -> np.ndarray:
    """Labels (X, Y, Z) int32 for a preprocessed canonical ``image`` (X, Y, Z, C), 2D or 3D model."""
    from jaxfcn.data.preprocess import ORIENTATION_AXIS

    probabilities_fn = probabilities_fn or make_probabilities_fn(model)
    if image.ndim != 4 or image.shape[-1] != config.model.in_channels:
        raise UserError(f"input has shape {image.shape}; the model expects (X, Y, Z, {config.model.in_channels})")
    batch_size = config.train.batch_size
    if config.model.spatial_dims == 2:
        probs = None
        for orientation in config.data.orientations:
            p = predict_slices(probabilities_fn, variables, image, ORIENTATION_AXIS[orientation],
                               2**config.model.depth, batch_size)
            probs = p if probs is None else probs + p
    else:
        probs = predict_sliding_window(probabilities_fn, variables, image, tuple(config.data.patch_shape),
                                       overlap, batch_size)
    return np.argmax(probs, axis=-1).astype(np.int32)


def _nifti_suffix(path: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if path.endswith(suffix):
            return suffix
    raise UserError(f"--output {path}: must end in .nii or .nii.gz")


def save_nifti_atomic(image, path: str) -> None:
    """Write a NIfTI image via a temporary file in the same directory and ``os.replace``."""
    import nibabel as nib

    suffix = _nifti_suffix(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp{suffix}")
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def predict_file(workdir: str, input_path: str, output_path: str, step=None,
                 overlap: float = DEFAULT_OVERLAP) -> dict:
    """Segment one NIfTI file with a trained run; returns a small report (shape, classes, step)."""
    from jaxfcn.data import load_volume_for_prediction
    from jaxfcn.models import build_model
    from jaxfcn.train.checkpoint import load_variables
    from jaxfcn.train.workdir import load_run_config

    config = load_run_config(workdir)
    if not os.path.isfile(input_path):
        raise UserError(f"--input {input_path}: file not found")
    _nifti_suffix(output_path)
    out_dir = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(out_dir):
        raise UserError(f"--output {output_path}: directory {out_dir} does not exist")
    if not 0.0 <= overlap < 1.0:
        raise UserError(f"--overlap {overlap}: must be in [0, 1)")
    variables, used_step = load_variables(workdir, step)
    image, restore = load_volume_for_prediction(input_path, config.data, depth=config.model.depth)
    model = build_model(config.model)
    labels = predict_volume(model, variables, image, config, overlap)
    result = restore(labels)
    save_nifti_atomic(result, output_path)
    return {"output": output_path, "shape": list(result.shape), "step": used_step,
            "classes_present": sorted(int(v) for v in np.unique(labels))}
