"""Step-0 diagnostics of a transferred U-Net on the target data: is the starting point sound?

Every diagnostic compares a model about to be fine-tuned (e.g. source encoder + decoder, fresh head) with a
fresh random initialisation of the same architecture, on the same target images. Definitions:

* **Activations** (:func:`activation_statistics`). For every convolution, the output of its normalisation
  followed by the block's activation (for ReLU: the value the next layer sees), named after the norm's
  path, e.g. ``encoder/block_0/norm_1``; and the ``head`` logits. Over all images n, positions p and
  channels c of a layer ``a[n, p, c]``:

  - ``rms = sqrt(mean_{n,p,c} a²)``, the activation scale;
  - ``zero_fraction = #{a ≤ 0} / #a`` (exactly zero for ReLU outputs);
  - ``dead_fraction = #{c : max_{n,p} a[n, p, c] ≤ 0} / C``, channels that are off at every position of
    every image (dead ReLUs on this data). Not defined for the logits (reported as NaN).

* **Loss and gradients** (:func:`loss_and_gradient_norms`). The training loss
  (:func:`jaxfcn.train.losses.segmentation_loss`, no augmentation) of each given batch, and per part
  ``P`` (encoder / decoder / head) the Euclidean norm of its gradient ``‖∇_P L‖ = sqrt(Σ_{θ∈P} (∂L/∂θ)²)``,
  the parameter norm ``‖P‖`` and their ratio; all averaged over the batches.

* **Linear probe** (:func:`fit_linear_probe`, :func:`probe_scores`). How well a linear softmax classifier
  separates the target classes from one layer's features, per pixel (layers coarser than the input are
  repeated to the input grid, nearest neighbour). Features are standardised with the training pixels'
  mean and standard deviation (so models with different activation scales are compared at equal
  regularisation), then ``(W, b)`` minimises the class-balanced cross-entropy plus an L2 penalty::

      J(W, b) = Σ_i w_i · (−log softmax(x_i W + b)_{y_i}) + (λ/2)(‖W‖² + ‖b‖²),
      w_i = 1 / (K_present · n_{y_i})        (each class present in the training pixels weighs 1/K_present)

  (strictly convex, so the optimum is unique), solved by L-BFGS. Scores on held-out pixels: accuracy,
  balanced accuracy (mean over present classes of the per-class recall) and the mean foreground Dice of
  pooled counts (:func:`jaxfcn.train.metrics.mean_foreground_dice`, the validation metric of training).
  The probe's null reference is the same probe on the raw input intensities (``layer="input"``).

Example::

    stats = activation_statistics(model, {"params": params}, images)     # {layer: {"rms", ...}}
    probe = fit_linear_probe(*pixel_features(model, variables, images, labels), num_classes=8)
    probe_scores(probe, *pixel_features(model, variables, val_images, val_labels), num_classes=8)
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable, Sequence

import numpy as np

from jaxfcn.partition import PARTS
from jaxfcn.runtime import on_device

INPUT_LAYER = "input"  # the probe on raw image intensities (the probe's null reference)


# --- activations ---------------------------------------------------------------------------------------

def _norm_outputs(model, variables, x) -> dict:
    """{"<part>/<block>/norm_<j>": post-activation output} of every normalisation layer, and the logits."""
    import jax

    from jaxfcn.models.layers import Norm

    logits, state = model.apply(variables, x, train=False, mutable=["intermediates"],
                                capture_intermediates=lambda module, _: isinstance(module, Norm))
    fused = model.activation == "relu"  # ConvBlock fuses ReLU into the norm; otherwise it applies it after
    act = getattr(jax.nn, model.activation)
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        keys = [getattr(k, "key", None) for k in path]
        if "__call__" not in keys:  # the sown representations share the collection; keep module outputs only
            continue
        name = "/".join(keys[:keys.index("__call__")])
        out[name] = value if fused else act(value)
    return {**out, "head": logits}


def _layer_order(name: str):
    """Network order: encoder blocks up, decoder blocks from the deepest level down, convs in order."""
    part, block, conv = name.split("/")
    level = int(block.rsplit("_", 1)[1])
    return (PARTS.index(part), level if part == "encoder" else -level, conv)


def activation_statistics(model, variables, images, batch_size: int = 8) -> dict[str, dict]:
    """``{layer: {"rms", "zero_fraction", "dead_fraction", "channels"}}`` over ``images`` (N, *S, C_in).

    See the module docstring for the definitions. Batches are padded to ``batch_size`` (one compilation)
    and the padding is masked out of every statistic.
    """
    import jax

    variables = on_device({k: v for k, v in variables.items() if k == "params" or v})  # copied once
    batch_sums = _activation_sums(model)
    total = None
    for x, mask in _padded_batches(np.asarray(images, np.float32), batch_size):
        sums = jax.device_get(batch_sums(variables, *on_device((x, mask))))
        if total is None:
            total = sums
        else:
            for name, s in sums.items():
                t = total[name]
                t["sq"], t["zero"], t["count"] = t["sq"] + s["sq"], t["zero"] + s["zero"], t["count"] + s["count"]
                t["max"] = np.maximum(t["max"], s["max"])
    out = {}
    # jax returns dicts with sorted keys: put the layers back in network order
    for name in sorted(total, key=lambda k: (1, ()) if k == "head" else (0, _layer_order(k))):
        t = total[name]
        count = float(t["count"])
        out[name] = {"rms": math.sqrt(float(t["sq"]) / count), "zero_fraction": float(t["zero"]) / count,
                     "dead_fraction": float("nan") if name == "head" else float(np.mean(np.asarray(t["max"]) <= 0)),
                     "channels": int(np.asarray(t["max"]).shape[-1])}
    return out


@functools.lru_cache(maxsize=None)
def _activation_sums(model):
    """Jitted ``(variables, batch, mask) -> {layer: masked sums}`` for :func:`activation_statistics`."""
    import jax
    import jax.numpy as jnp

    from jaxfcn.models.layers import compiler_options

    def batch_sums(v, x, mask):
        sums = {}
        for name, a in _norm_outputs(model, v, x).items():
            a = a.astype(jnp.float32)
            m = mask.reshape((-1,) + (1,) * (a.ndim - 1))
            per_image = math.prod(a.shape[1:])
            sums[name] = {"sq": jnp.sum(m * a * a), "zero": jnp.sum(m * (a <= 0)), "count": jnp.sum(mask) * per_image,
                          "max": jnp.max(jnp.where(m > 0, a, -jnp.inf), axis=tuple(range(a.ndim - 1)))}
        return sums

    return jax.jit(batch_sums, compiler_options=compiler_options())


def _padded_batches(images: np.ndarray, batch_size: int):
    """(batch, mask) with the last batch padded by repeating its final image (mask 0 there)."""
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        pad = batch_size - len(x)
        mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        yield x, mask


# --- loss and per-part gradients -------------------------------------------------------------------------

def part_norms(tree) -> dict[str, float]:
    """``{part: sqrt(Σ leaf²)}`` of a params-shaped tree (``{"encoder", "decoder", "head"}``)."""
    import jax

    return {part: float(np.sqrt(sum(float(np.sum(np.square(np.asarray(leaf, np.float64))))
                                    for leaf in jax.tree.leaves(tree[part])))) for part in PARTS if part in tree}


def loss_and_gradient_norms(model, params, batches: Iterable[dict], train_config) -> dict:
    """Mean over ``batches`` of the training loss and, per part, ``‖∇_P L‖``, ``‖P‖`` and their ratio."""
    import jax

    grad_fn = _loss_and_gradient(model, train_config.loss, float(train_config.dice_weight), float(train_config.ce_weight))
    params = on_device(params)  # copied once, not at every batch
    losses, grads = [], []
    for batch in batches:
        loss, grad = grad_fn(params, *on_device((np.asarray(batch["image"], np.float32),
                                                 np.asarray(batch["label"], np.int32))))
        losses.append(float(loss))
        grads.append(part_norms(jax.device_get(grad)))
    if not losses:
        raise ValueError("no batches")
    weights = part_norms(params)
    grad_norm = {part: float(np.mean([g[part] for g in grads])) for part in grads[0]}
    return {"loss": float(np.mean(losses)), "batches": len(losses), "grad_norm": grad_norm, "param_norm": weights,
            "relative_grad_norm": {p: grad_norm[p] / weights[p] if weights[p] > 0 else float("nan") for p in grad_norm}}


@functools.lru_cache(maxsize=None)
def _loss_and_gradient(model, loss: str, dice_weight: float, ce_weight: float):
    """Jitted ``(params, image, label) -> (loss, gradient)`` of the training loss (no augmentation)."""
    import types

    import jax

    from jaxfcn.train.losses import segmentation_loss

    loss_config = types.SimpleNamespace(loss=loss, dice_weight=dice_weight, ce_weight=ce_weight)

    def loss_fn(p, image, label):
        return segmentation_loss(model.apply({"params": p}, image, train=True), label, loss_config)

    return jax.jit(jax.value_and_grad(loss_fn))


# --- linear probe ----------------------------------------------------------------------------------------

def pixel_features(model, variables, images, labels, layer: str = "head_input", *, pixels_per_image: int = 0,
                   seed: int = 0, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(X (P, C) float32, y (P,) int32): per-pixel features of ``layer`` and the pixel labels.

    ``layer``: a sown representation (:func:`jaxfcn.models.layer_names`) or ``"input"`` (the image
    intensities). Coarser layers are repeated to the input grid. ``pixels_per_image`` > 0 keeps that many
    seeded pixels of each image (the same positions for every model), 0 keeps all.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    spatial = images.shape[1:-1]
    size = math.prod(spatial)
    keep = None
    if 0 < pixels_per_image < size:
        rng = np.random.default_rng([seed, 5171])
        keep = np.stack([np.sort(rng.choice(size, pixels_per_image, replace=False)) for _ in range(len(images))])
    if layer == INPUT_LAYER:
        feats = images.reshape(len(images), size, -1)
    else:
        feats = _layer_on_input_grid(model, variables, images, layer, batch_size).reshape(len(images), size, -1)
    labels = labels.reshape(len(labels), size)
    if keep is not None:
        feats = np.take_along_axis(feats, keep[..., None], axis=1)
        labels = np.take_along_axis(labels, keep, axis=1)
    return feats.reshape(-1, feats.shape[-1]).astype(np.float32), labels.reshape(-1)


def _layer_on_input_grid(model, variables, images, layer: str, batch_size: int) -> np.ndarray:
    from jaxfcn.models import layer_names

    if layer not in layer_names(model.depth):
        raise ValueError(f"unknown layer '{layer}' (this model has: {', '.join(layer_names(model.depth))}, "
                         f"or '{INPUT_LAYER}')")
    variables = on_device({k: v for k, v in variables.items() if k == "params" or v})  # copied once
    forward = _layer_forward(model, layer, tuple(images.shape[1:-1]))
    pieces = [np.asarray(forward(variables, on_device(x)))[:int(m.sum())]
              for x, m in _padded_batches(images, batch_size)]
    return np.concatenate(pieces)


@functools.lru_cache(maxsize=None)
def _layer_forward(model, layer: str, spatial: tuple[int, ...]):
    """Jitted ``(variables, batch) -> layer features repeated to the input grid``."""
    import jax
    import jax.numpy as jnp

    def forward(v, x):
        _, state = model.apply(v, x, train=False, mutable=["intermediates"])
        f = state["intermediates"][layer][0].astype(jnp.float32)
        for axis, n in enumerate(spatial):  # nearest-neighbour repeat to the input grid
            f = jnp.repeat(f, n // f.shape[axis + 1], axis=axis + 1)
        return f

    return jax.jit(forward)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: ``logits = ((x − mean) / scale) @ kernel + bias``."""

    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    kernel: np.ndarray  # (C, K)
    bias: np.ndarray  # (K,)
    objective: float  # J at the solution
    gradient_norm: float  # ‖∇J‖ at the solution (≈ 0 when converged)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.kernel + self.bias

    def raw_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel (C, K), bias (K,)) acting on the unstandardised features: the same logits as :meth:`logits`."""
        kernel = self.kernel / self.scale[:, None]
        return kernel, self.bias - (self.mean / self.scale) @ self.kernel


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``w_i = 1 / (K_present · n_{y_i})``: every class present weighs 1/K_present; Σ w = 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = int(np.count_nonzero(counts))
    return 1.0 / (present * counts[labels])


def probe_objective(kernel, bias, features, labels, weights, l2: float):
    """J(W, b) of the module docstring (jax or numpy arrays; jax-differentiable)."""
    import jax
    import jax.numpy as jnp

    logits = features @ kernel + bias
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * nll) + 0.5 * l2 * (jnp.sum(kernel**2) + jnp.sum(bias**2))


def fit_linear_probe(features, labels, num_classes: int, *, l2: float = 1e-3, iterations: int = 200) -> LinearProbe:
    """The probe of the module docstring, fitted by ``iterations`` L-BFGS steps (optax, float64)."""
    import jax
    import jax.numpy as jnp

    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"features (P, C) and labels (P,) expected, got {x.shape} and {y.shape}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature stays 0 after centring
    with jax.enable_x64(True):
        kernel, bias, value, gnorm = _probe_solver(int(iterations))(
            jnp.asarray((x - mean) / scale), jnp.asarray(y), jnp.asarray(balanced_weights(y, num_classes)),
            jnp.asarray(l2, jnp.float64), jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
        kernel, bias = np.asarray(kernel), np.asarray(bias)
    return LinearProbe(mean, scale, kernel, bias, float(value), float(gnorm))


@functools.lru_cache(maxsize=None)
def _probe_solver(iterations: int):
    """One jitted L-BFGS solve of J (compiled once per feature width and pixel count)."""
    import jax
    import optax

    @jax.jit
    def solve(z, y, w, l2, kernel, bias):
        def objective(p):
            return probe_objective(p["kernel"], p["bias"], z, y, w, l2)

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
            return (optax.apply_updates(p, updates), state), None

        p = {"kernel": kernel, "bias": bias}
        (p, _), _ = jax.lax.scan(step, (p, solver.init(p)), None, length=iterations)
        value, grad = jax.value_and_grad(objective)(p)
        return p["kernel"], p["bias"], value, optax.tree.norm(grad)

    return solve


def probe_scores(probe: LinearProbe, features, labels, num_classes: int) -> dict:
    """Accuracy, balanced accuracy and mean foreground Dice (pooled counts) of the probe's argmax."""
    from jaxfcn.train.metrics import mean_foreground_dice

    y = np.asarray(labels, np.int64)
    pred = np.argmax(probe.logits(features), axis=-1)
    counts = np.stack([np.bincount(y[pred == y], minlength=num_classes), np.bincount(pred, minlength=num_classes),
                       np.bincount(y, minlength=num_classes)], axis=-1)
    present = counts[:, 2] > 0
    recall = counts[present, 0] / counts[present, 2]
    return {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recall)),
            "mean_foreground_dice": mean_foreground_dice(counts), "pixels": int(len(y))}


def probe_layer(model, variables, train: tuple, test: tuple, num_classes: int, layer: str = "head_input", *,
                pixels_per_image: int = 0, l2: float = 1e-3, seed: int = 0) -> tuple[LinearProbe, dict]:
    """Fit the probe on ``train = (images, labels)`` features of ``layer`` and score it on ``test``."""
    fit = pixel_features(model, variables, *train, layer, pixels_per_image=pixels_per_image, seed=seed)
    probe = fit_linear_probe(*fit, num_classes, l2=l2)
    return probe, probe_scores(probe, *pixel_features(model, variables, *test, layer), num_classes)


def fit_probe_head(model, params, images, labels, num_classes: int, *, layer: str = "head_input",
                   pixels_per_image: int = 0, seed: int = 0, l2: float = 1e-3) -> dict:
    """``params`` with the head set to the probe fitted on ``(images, labels)`` features of the head's input
    (linear probing before fine-tuning; the probe's standardisation folded into the head)."""
    from jaxfcn.partition import with_head

    features = pixel_features(model, {"params": params}, images, labels, layer, pixels_per_image=pixels_per_image,
                              seed=seed)
    return with_head(params, *fit_linear_probe(*features, num_classes, l2=l2).raw_head())


# --- all of it for one model ------------------------------------------------------------------------------

def diagnose(model, params, *, images, batches: Sequence[dict], train_config, probe_train: tuple, probe_test: tuple,
             num_classes: int, probe_layers: Sequence[str] = ("head_input",), pixels_per_image: int = 0) -> dict:
    """Every step-0 diagnostic of one model: ``{"activations": {layer: …}, "gradients": …, "probe": {layer: …}}``.

    ``images``: target images for :func:`activation_statistics`; ``batches``: target training batches for
    :func:`loss_and_gradient_norms`; ``probe_train`` / ``probe_test``: (images, labels) for
    :func:`probe_layer` on each of ``probe_layers``. Compare with the same call on a fresh initialisation.
    """
    variables = {"params": params}
    return {"activations": activation_statistics(model, variables, images),
            "gradients": loss_and_gradient_norms(model, params, batches, train_config),
            "probe": {layer: probe_layer(model, variables, probe_train, probe_test, num_classes, layer,
                                         pixels_per_image=pixels_per_image)[1] for layer in probe_layers}}
