"""PyTorch twin of :class:`jaxfcn.models.UNet` and exact weight conversion in both directions.

Needs the ``[torch]`` extra. The twin computes the same function as the Flax model for every supported
config (2D/3D; norms group/instance/batch/none; any depth, width, multiplier, convs per block, kernel size,
activation), in PyTorch's channels-first layout::

    net = TorchUNet(config)                                  # config or config.model (resolved sizes)
    net.load_state_dict(flax_to_torch(variables, config))   # params (+ batch_stats) → state_dict
    logits = net(x_ncdhw)                                    # (N, num_classes, *spatial), float32
    params = torch_to_flax(net.state_dict(), config)         # exact inverse (bitwise)

Correspondence (Flax ⇄ PyTorch), module paths identical (``encoder.block_0.conv_0`` etc.):

- ``conv_j``/``head`` ``kernel`` (*k, Cin, Cout) ⇄ ``Conv{2,3}d.weight`` (Cout, Cin, *k); padding "SAME"
  (low side ``(k-1)//2``) ⇄ ``padding="same"`` (same split for even k). Bias only when ``norm == "none"``
  (and always in the head).
- ``up_i`` ``kernel`` (Cin, 2^d·Cout), channel index ``((a·2+b)·2+c)·Cout + o`` ⇄
  ``ConvTranspose{2,3}d(k=2, stride=2).weight`` (Cin, Cout, 2, …, 2): both are the gradient-of-convolution
  convention, ``out[o, 2i+a] = Σ_c x[c, i]·K[c, a, o] + b[o]``.
- ``norm_j`` (group/instance) ``scale``/``bias`` ⇄ ``GroupNorm.weight``/``bias`` with Flax's group count rule
  and Flax's epsilon 1e-6 (PyTorch's default is 1e-5). Instance norm is GroupNorm with one channel per group.
- ``norm_j`` (batch) ⇄ :class:`FlaxBatchNorm` (a ``BatchNorm`` with the standard state_dict keys): Flax
  ``momentum=0.9`` is PyTorch ``momentum=0.1``; epsilon 1e-5; and, unlike ``torch.nn.BatchNorm``, the running
  variance is updated with the *biased* batch variance, as Flax does.
- Decoder concatenation order is ``[skip, upsampled]`` along channels; max-pool 2, stride 2, floor.
- Activations: the ``jax.nn`` function of the same name with its JAX defaults (``gelu`` is the tanh
  approximation, ``leaky_relu`` slope 0.01).

Compare in the default (contiguous) memory format. PyTorch 2.13's CPU ``GroupNorm`` on a
``channels_last_3d`` tensor loses precision when a group's mean is large against its spread: 3.1e-3 largest
error against float64, where the contiguous tensor gives 1.0e-6 (``benchmarks/README.md``, sliding window).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxfcn.models.layers import group_count  # the model's own rule, so the twin cannot drift from it

# jax.nn name → torch function with JAX's default arguments.
ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "celu": F.celu,
    "selu": F.selu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # jax.nn.gelu defaults to approximate=True
    "silu": F.silu,
    "swish": F.silu,
    "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
    "hard_sigmoid": F.hardsigmoid,
    "hard_tanh": F.hardtanh,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": lambda x: torch.logaddexp(x, torch.zeros_like(x)),  # jax: log(1+e^x), no linear cut-off
    "soft_sign": F.softsign,
    "log_sigmoid": F.logsigmoid,
    "mish": F.mish,
    "squareplus": lambda x: (x + torch.sqrt(x * x + 4.0)) / 2.0,
    "identity": lambda x: x,
}

GROUP_NORM_EPS = 1e-6  # flax.linen.GroupNorm default
BATCH_NORM_EPS = 1e-5  # flax.linen.BatchNorm default
BATCH_NORM_MOMENTUM = 0.1  # PyTorch convention for jaxfcn's flax momentum 0.9: new = 0.9·old + 0.1·batch


def _model_config(config):
    """Accept the full config or ``config.model``; sizes must be resolved."""
    m = config.model if "model" in config else config
    if m.num_classes <= 0 or m.in_channels <= 0:
        raise ValueError("config.model.num_classes and in_channels must be resolved (> 0); take them from the "
                         "dataset or a workdir's config.json")
    return m


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' has no PyTorch twin; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class FlaxBatchNorm(nn.BatchNorm2d):
    """BatchNorm for 2D and 3D inputs with Flax's running-statistics update.

    Training mode normalises with the biased batch statistics (as both frameworks do) and updates
    ``running_var`` with the *biased* variance (Flax) instead of PyTorch's unbiased one. The state_dict keys
    are those of ``torch.nn.BatchNorm*d``, so ordinary PyTorch checkpoints load unchanged.
    """

    def _check_input_dim(self, x):
        if x.dim() not in (4, 5):
            raise ValueError(f"expected a 4D or 5D input, got {x.dim()}D")

    def forward(self, x):
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0] + list(range(2, x.dim()))
        with torch.no_grad():
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def make_norm(kind: str, channels: int, groups: int) -> nn.Module | None:
    if kind == "group":
        return nn.GroupNorm(group_count(channels, groups), channels, eps=GROUP_NORM_EPS)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, eps=GROUP_NORM_EPS)
    if kind == "batch":
        return FlaxBatchNorm(channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm '{kind}' (group | instance | batch | none)")


class ConvBlock(nn.Module):
    """``convs`` × (conv → norm → activation), as ``jaxfcn.models.unet.ConvBlock``."""

    def __init__(self, cin: int, features: int, m, act):
        super().__init__()
        conv = nn.Conv2d if m.spatial_dims == 2 else nn.Conv3d
        self.convs = m.convs_per_block
        self.act = act
        for j in range(m.convs_per_block):
            self.add_module(f"conv_{j}", conv(cin if j == 0 else features, features, m.kernel_size,
                                              padding="same", bias=m.norm == "none"))
            norm = make_norm(m.norm, features, m.norm_groups)
            if norm is not None:
                self.add_module(f"norm_{j}", norm)

    def forward(self, x):
        for j in range(self.convs):
            x = getattr(self, f"conv_{j}")(x)
            norm = getattr(self, f"norm_{j}", None)
            if norm is not None:
                x = norm(x)
            x = self.act(x)
        return x


class Encoder(nn.Module):
    def __init__(self, m, widths, act):
        super().__init__()
        self.depth = len(widths)
        self.pool = (nn.MaxPool2d if m.spatial_dims == 2 else nn.MaxPool3d)(2, 2)
        for level, width in enumerate(widths):
            cin = m.in_channels if level == 0 else widths[level - 1]
            self.add_module(f"block_{level}", ConvBlock(cin, width, m, act))

    def forward(self, x):
        outputs = []
        for level in range(self.depth):
            if level:
                x = self.pool(x)
            x = getattr(self, f"block_{level}")(x)
            outputs.append(x)
        return outputs


class Decoder(nn.Module):
    def __init__(self, m, widths, act):
        super().__init__()
        self.depth = len(widths)
        up = nn.ConvTranspose2d if m.spatial_dims == 2 else nn.ConvTranspose3d
        for level in reversed(range(self.depth - 1)):
            self.add_module(f"up_{level}", up(widths[level + 1], widths[level], 2, stride=2))
            self.add_module(f"block_{level}", ConvBlock(2 * widths[level], widths[level], m, act))

    def forward(self, skips):
        x = skips[-1]
        outputs = []
        for level in reversed(range(self.depth - 1)):
            x = getattr(self, f"up_{level}")(x)
            x = torch.cat([skips[level], x], dim=1)
            x = getattr(self, f"block_{level}")(x)
            outputs.append(x)
        return outputs


class TorchUNet(nn.Module):
    """The PyTorch twin of ``jaxfcn.models.UNet`` (see the module docstring for the correspondence).

    Input ``(N, C, *spatial)``; output logits ``(N, num_classes, *spatial)``. Initial weights follow
    ``config.model.kernel_init`` with Flax's fan conventions, but are not the Flax model's values: use
    :func:`flax_to_torch` to get identical weights.
    """

    def __init__(self, config):
        super().__init__()
        m = _model_config(config)
        self.spatial_dims = m.spatial_dims
        self.depth = m.depth
        widths = [m.base_width * m.width_multiplier**level for level in range(m.depth)]
        act = activation(m.activation)
        self.encoder = Encoder(m, widths, act)
        self.decoder = Decoder(m, widths, act)
        conv = nn.Conv2d if m.spatial_dims == 2 else nn.Conv3d
        self.head = conv(widths[0], m.num_classes, 1, bias=True)
        self.frozen_parts: tuple[str, ...] = ()  # set by freeze()
        init_like_flax(self, m.kernel_init)

    def train(self, mode: bool = True) -> "TorchUNet":
        """``nn.Module.train``, except that the parts named in ``frozen_parts`` (see :func:`freeze`) stay in
        eval mode: a frozen batch norm normalises with its running statistics and keeps them, in training
        too, as ``jaxfcn.models.UNet(frozen_parts=...)`` does."""
        super().train(mode)
        for part in self.frozen_parts:
            getattr(self, part).eval()
        return self

    def forward(self, x):
        return self.forward_features(x)[0]

    def forward_features(self, x):
        """(logits, {layer name: feature map}) with the names of ``jaxfcn.models.layer_names``."""
        enc = self.encoder(x)
        dec = self.decoder(enc)
        feats = {f"enc_{level}": f for level, f in enumerate(enc[:-1])}
        feats["bottleneck"] = enc[-1]
        feats.update({f"dec_{level}": f for level, f in zip(reversed(range(1, self.depth - 1)), dec[:-1])})
        feats["head_input"] = dec[-1]
        return self.head(dec[-1]), feats


def _variance_scaling(scale: float, mode: str, distribution: str):
    def init(weight: torch.Tensor, fan_in: int, fan_out: int):
        fan = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / fan
        if distribution == "truncated_normal":
            # jax: std of a unit normal truncated to [-2, 2] is 0.8796…; rescale so the result has `variance`.
            std = math.sqrt(variance) / 0.87962566103423978
            nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
        else:
            limit = math.sqrt(3 * variance)
            nn.init.uniform_(weight, -limit, limit)
    return init


# Same definitions as jaxfcn.models.layers.KERNEL_INITS (jax.nn.initializers).
KERNEL_INITS = {
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
}


@torch.no_grad()
def init_like_flax(net: nn.Module, kernel_init: str) -> None:
    """Kernels from ``kernel_init`` with the Flax fans; biases 0; norm scales 1 (Flax's defaults).

    Fans of the Flax kernels: conv (*k, Cin, Cout) → fan_in = Cin·Πk, fan_out = Cout·Πk; up-conv
    (Cin, 2^d·Cout) → fan_in = Cin, fan_out = 2^d·Cout.
    """
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"unknown kernel_init '{kernel_init}', choose from {sorted(KERNEL_INITS)}")
    init = KERNEL_INITS[kernel_init]
    for module in net.modules():
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            cin, cout, *k = module.weight.shape
            init(module.weight, cin, cout * math.prod(k))
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            cout, cin, *k = module.weight.shape
            init(module.weight, cin * math.prod(k), cout * math.prod(k))
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------
# Conversion. The Flax parameter tree of the config (from jax.eval_shape, so it always follows the model's
# own naming) is the template; each leaf maps to one state_dict entry by a rule on its path.

_NORM_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _flax_template(m) -> dict:
    """ShapeDtypeStructs of the Flax variables (``params`` and, for batch norm, ``batch_stats``)."""
    import jax
    import jax.numpy as jnp

    from jaxfcn.models import build_model

    model = build_model(m)
    side = 2 ** (m.depth - 1)
    x = jax.ShapeDtypeStruct((1,) + (side,) * m.spatial_dims + (m.in_channels,), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))
    return dict(variables)


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _rule(path: tuple[str, ...]) -> tuple[str, str]:
    """(state_dict key, layout) for a Flax leaf path; layout ∈ conv | upconv | vector."""
    *modules, leaf = path
    for i, name in enumerate(modules):
        if name.startswith("norm_"):  # inner Flax module name (GroupNorm_0, BatchNorm_0, …) has no twin
            if leaf not in _NORM_LEAVES:
                break
            return ".".join(modules[: i + 1] + [_NORM_LEAVES[leaf]]), "vector"
    parent = modules[-1] if modules else ""
    if parent.startswith("up_") and leaf in ("kernel", "bias"):
        return ".".join(modules + ["weight" if leaf == "kernel" else "bias"]), "upconv" if leaf == "kernel" else "vector"
    if (parent.startswith("conv_") or parent == "head") and leaf in ("kernel", "bias"):
        return ".".join(modules + ["weight" if leaf == "kernel" else "bias"]), "conv" if leaf == "kernel" else "vector"
    raise ValueError(f"no PyTorch twin for Flax parameter {'/'.join(path)}")


def _conv_to_torch(a: np.ndarray) -> np.ndarray:  # (*k, Cin, Cout) → (Cout, Cin, *k)
    s = a.ndim - 2
    return a.transpose((s + 1, s) + tuple(range(s)))


def _upconv_to_torch(a: np.ndarray, spatial: int) -> np.ndarray:
    """(Cin, 2^d·Cout) → (Cin, 2, …, 2, Cout) → (Cin, Cout, 2, …, 2)."""
    cin = a.shape[0]
    k = a.reshape(cin, *([2] * spatial), a.shape[1] // 2**spatial)
    return np.moveaxis(k, -1, 1)


def _upconv_to_flax(w: np.ndarray) -> np.ndarray:
    k = np.moveaxis(w, 1, -1)  # (Cin, 2, …, 2, Cout)
    return k.reshape(k.shape[0], -1)


def _conv_to_flax(w: np.ndarray) -> np.ndarray:  # (Cout, Cin, *k) → (*k, Cin, Cout)
    s = w.ndim - 2
    return w.transpose(tuple(range(2, 2 + s)) + (1, 0))


def flax_to_torch(params, config, batch_stats=None) -> "OrderedDict[str, torch.Tensor]":
    """State_dict for :class:`TorchUNet` from Flax ``params`` (or a variables dict with ``params`` and
    ``batch_stats``). Batch norm without ``batch_stats`` gets Flax's initial statistics (mean 0, var 1)."""
    m = _model_config(config)
    if "params" in params:
        batch_stats = params.get("batch_stats", batch_stats)
        params = params["params"]
    template = _flax_template(m)
    given = {"params": params, "batch_stats": batch_stats}
    state = OrderedDict()
    for collection, tree in template.items():
        for path, spec in _leaves(tree):
            key, layout = _rule(path)
            source = given.get(collection)
            if source is None:
                value = np.zeros(spec.shape, np.float32) if path[-1] == "mean" else np.ones(spec.shape, np.float32)
            else:
                value = np.asarray(_get(source, path, collection), dtype=np.float32)
                if value.shape != tuple(spec.shape):
                    raise ValueError(f"Flax {collection} {'/'.join(path)}: shape {value.shape}, the config "
                                     f"expects {tuple(spec.shape)}")
            if layout == "conv":
                value = _conv_to_torch(value)
            elif layout == "upconv":
                value = _upconv_to_torch(value, m.spatial_dims)
            state[key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))  # own, writable copy
            if key.endswith("running_var"):
                state[key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return _in_module_order(state, m)


def _get(tree, path, collection):
    node = tree
    for i, key in enumerate(path):
        if key not in node:
            raise ValueError(f"Flax {collection} lacks {'/'.join(path[: i + 1])} (architecture differs from the config)")
        node = node[key]
    return node


def _in_module_order(state: OrderedDict, m) -> OrderedDict:
    order = list(_twin_shapes(m))
    return OrderedDict((k, state[k]) for k in order if k in state)


def _twin_shapes(m) -> "OrderedDict[str, tuple]":
    with torch.device("meta"):
        net = TorchUNet(m)
    return OrderedDict((k, tuple(v.shape)) for k, v in net.state_dict().items())


def _unwrap_state_dict(state_dict) -> dict:
    """Accept a raw state_dict, or common wrappers: {'state_dict': …}, {'model': …}, 'module.' prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def torch_to_flax_variables(state_dict, config) -> dict:
    """Flax variables ``{'params': …}`` (plus ``'batch_stats'`` for batch norm) from a TorchUNet state_dict.

    The state_dict must have exactly the twin's keys and shapes (``num_batches_tracked`` may be absent);
    otherwise a ``ValueError`` names the first missing, unexpected or mis-shaped entries.
    """
    import jax.numpy as jnp

    m = _model_config(config)
    state_dict = _unwrap_state_dict(state_dict)
    expected = _twin_shapes(m)
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)}≠{expected[k]}" for k in expected
             if k in state_dict and k not in optional and tuple(state_dict[k].shape) != expected[k]]
    problems = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {unexpected[:3]}"] if unexpected
                                                                   else []) + ([f"shape {wrong[:3]}"] if wrong else [])
    if problems:
        raise ValueError("state_dict does not match the config's architecture: " + "; ".join(problems))

    out: dict = {}
    for collection, tree in _flax_template(m).items():
        for path, spec in _leaves(tree):
            key, layout = _rule(path)
            w = state_dict[key].detach().cpu().to(torch.float32).numpy()
            if layout == "conv":
                w = _conv_to_flax(w)
            elif layout == "upconv":
                w = _upconv_to_flax(w)
            node = out.setdefault(collection, {})
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = jnp.asarray(np.ascontiguousarray(w))
    return out


def torch_to_flax(state_dict, config) -> dict:
    """Flax ``params`` (top-level encoder/decoder/head) from a TorchUNet state_dict; see
    :func:`torch_to_flax_variables` for batch-norm statistics."""
    return torch_to_flax_variables(state_dict, config)["params"]


# ---------------------------------------------------------------------------------------------------------
# Training with the twin: jaxfcn's loss and optimiser definitions in PyTorch (for parity runs and benchmarks).

def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, train_config,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """``jaxfcn.train.losses.segmentation_loss`` for channels-first logits (N, K, *S) and labels (N, *S).

    Same definitions: batch soft Dice over the foreground classes with ε = 1e-5, plus the voxel-mean
    cross-entropy, weighted by ``train.dice_weight`` / ``train.ce_weight`` as ``train.loss`` selects.
    """
    from jaxfcn.train.losses import DICE_EPSILON, LOSSES

    if train_config.loss not in LOSSES:
        raise ValueError(f"unknown train.loss '{train_config.loss}', choose from {list(LOSSES)}")
    logits = logits.float()
    labels = labels.long()
    w = torch.ones(labels.shape, dtype=torch.float32, device=logits.device)
    if weight is not None:
        w = w * weight.float().reshape((-1,) + (1,) * (labels.dim() - 1))
    total = logits.new_zeros(())
    if train_config.loss in ("dice_ce", "dice"):
        k = logits.shape[1]
        p = torch.softmax(logits, dim=1)
        y = F.one_hot(labels, k).movedim(-1, 1).float()
        wc = w.unsqueeze(1)
        axes = [0] + list(range(2, logits.dim()))
        intersection = (wc * p * y).sum(axes)
        denominator = (wc * p).sum(axes) + (wc * y).sum(axes)
        dice = (2.0 * intersection + DICE_EPSILON) / (denominator + DICE_EPSILON)
        total = total + train_config.dice_weight * (1.0 - dice[1:].mean())
    if train_config.loss in ("dice_ce", "ce"):
        nll = F.cross_entropy(logits, labels, reduction="none")
        total = total + train_config.ce_weight * (nll * w).sum() / w.sum().clamp_min(1.0)
    return total


def make_optimizer(parameters, train_config) -> torch.optim.Optimizer:
    """``jaxfcn.train.step.base_optimizer`` in PyTorch: adam (L2 ``weight_decay``), adamw (decoupled), sgd.

    Adam's constants are optax's (β = 0.9, 0.999; ε = 1e-8 added outside the square root). The learning
    rate is set every step with :func:`set_learning_rate` from jaxfcn's own schedule. ``grad_clip`` is
    applied by the caller (``torch.nn.utils.clip_grad_norm_``) before ``step()``.
    """
    t = train_config
    lr = t.learning_rate
    if t.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise ValueError(f"unknown train.optimizer '{t.optimizer}'")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def freeze(net: TorchUNet, parts) -> list[torch.nn.Parameter]:
    """Freeze the named top-level parts as a jaxfcn run does; returns the trainable parameters, the twin of
    ``jaxfcn.partition.split_params``.

    A frozen part gets no gradient (no backward is built for it) and runs as at evaluation from now on,
    whatever ``net.train()`` is later called with: its batch norms use and keep their running statistics
    (bitwise), so it computes one fixed function, the twin of ``UNet(frozen_parts=...)``.
    """
    from jaxfcn.partition import check_parts

    parts = check_parts(parts, "frozen part")
    for part in parts:
        getattr(net, part).requires_grad_(False)
    net.frozen_parts = tuple(dict.fromkeys((*net.frozen_parts, *parts)))
    net.train(net.training)
    return [p for p in net.parameters() if p.requires_grad]
