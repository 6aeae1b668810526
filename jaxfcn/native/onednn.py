"""oneDNN convolutions inside XLA:CPU programs: the three products (forward, input gradient, kernel gradient)
of the U-Net's stride-1 channels-last convolution and of its decoder's 2×…×2 stride-2 up-convolution, as XLA
FFI custom calls into oneDNN (``onednn_conv.cc``). Each call runs on XLA's own CPU threads.

Why: XLA:CPU runs convolutions with Eigen, which takes about twice oneDNN's time on the U-Net's thin 3D
layers, and it transposes activations around every kernel gradient (``benchmarks/README.md``, CPU: 3D).
PyTorch's CPU convolutions are oneDNN's; these calls give JAX programs the same kernels, on the same
arrays, without a copy.

The handlers are compiled on first use with the system's C++ compiler against the headers that jaxlib
ships (``jax.ffi.include_dir()``) and the oneDNN of the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``
wheels, into ``<jaxfcn cache>/native/<key>/`` (the key hashes the source, the compiler and both versions;
written to a temporary name and renamed, so concurrent first uses never load half a library). Where any
of that is missing (no compiler, another platform, ``JAXFCN_ONEDNN=0``), :func:`available` is False,
:func:`unavailable_reason` says why, and :mod:`jaxfcn.models.fast_ops` keeps XLA's own convolutions.

Example::

    from jaxfcn.native import onednn
    if onednn.available():
        y = onednn.forward(x, kernel)            # = jaxfcn.models.layers.conv(x, kernel)
        dx = onednn.input_grad(dy, kernel)
        dk = onednn.kernel_grad(x, dy, kernel.shape)
        u = onednn.up_forward(x, up_kernel)      # = jaxfcn.models.layers.up_conv(x, up_kernel)
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE = Path(__file__).with_name("onednn_conv.cc")
RUNTIME_WHEEL, HEADERS_WHEEL = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
TARGETS = ("jaxfcn_conv_forward", "jaxfcn_conv_backward_data", "jaxfcn_conv_backward_weights")
UP_TARGETS = ("jaxfcn_up_forward", "jaxfcn_up_backward_data", "jaxfcn_up_backward_weights")


class NativeUnavailable(RuntimeError):
    """The oneDNN handlers cannot be built or loaded here; the message says why."""


def _wheel_file(wheel: str, name: str) -> Path:
    try:
        files = importlib.metadata.files(wheel) or []
    except importlib.metadata.PackageNotFoundError:
        raise NativeUnavailable(f"the '{wheel}' wheel is not installed") from None
    for f in files:
        if f.name == name:
            return Path(f.locate()).resolve()
    raise NativeUnavailable(f"the '{wheel}' wheel has no {name}")


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise NativeUnavailable("no C++ compiler (set CXX, or install g++)")


def _build(out: Path, compiler: str, include: list[Path], library: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    # libgomp.so.1: the OpenMP runtime the wheel's oneDNN runs on; the handlers set its thread count per call.
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", *(f"-I{d}" for d in include), str(SOURCE),
           f"-L{library.parent}", f"-l:{library.name}", "-l:libgomp.so.1", f"-Wl,-rpath,{library.parent}", "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise NativeUnavailable(f"compiling {SOURCE.name} failed: {last}")
    os.replace(tmp, out)


def library_path() -> Path:
    """The compiled handlers, built now if this source, compiler and versions have not been built before."""
    from jaxfcn.data.fetch import cache_root

    if platform.system() != "Linux":
        raise NativeUnavailable(f"oneDNN convolutions are built for Linux only, not {platform.system()}")
    library = _wheel_file(RUNTIME_WHEEL, "libdnnl.so.3")
    header = _wheel_file(HEADERS_WHEEL, "dnnl.hpp")
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    key = hashlib.sha256("\n".join([
        SOURCE.read_text(), version, importlib.metadata.version("jaxlib"),
        importlib.metadata.version(RUNTIME_WHEEL), str(library)]).encode()).hexdigest()[:16]
    out = cache_root() / "native" / key / "libjaxfcn_onednn.so"
    if not out.exists():
        _build(out, compiler, [Path(jax.ffi.include_dir()), header.parent], library)
    return out


@functools.cache
def _load() -> str | None:
    """Build, load and register the handlers once per process; None if that worked, else the reason."""
    if os.environ.get("JAXFCN_ONEDNN", "1") == "0":
        return "turned off by JAXFCN_ONEDNN=0"
    try:
        lib = ctypes.cdll.LoadLibrary(str(library_path()))
    except (NativeUnavailable, OSError) as e:
        # A warning where pyproject.toml installs oneDNN (something is broken there); elsewhere only INFO.
        installed_here = platform.system() == "Linux" and platform.machine() == "x86_64"
        logging.getLogger("jaxfcn").log(logging.WARNING if installed_here else logging.INFO,
                                        "oneDNN convolutions unavailable, using XLA's (slower on the CPU): %s", e)
        return str(e)
    for target in TARGETS + UP_TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
    return None


def available() -> bool:
    """True when the oneDNN handlers are registered with XLA:CPU in this process (built on first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return _load()


def _padding(kernel_shape) -> dict:
    """The handlers' padding attributes: 'SAME' on each spatial axis (:func:`jaxfcn.models.layers.same_padding`)."""
    from jaxfcn.models.layers import same_padding  # here: jaxfcn.models imports this module

    low, high = zip(*(same_padding(k) for k in kernel_shape[:-2]))
    return {"pad_lo": np.array(low, np.int64), "pad_hi": np.array(high, np.int64)}


def _call(target: str, shape, dtype, *args, **attributes) -> jax.Array:
    if not available():  # registers the handlers before the first program that calls them is traced
        raise NativeUnavailable(f"oneDNN convolutions unavailable: {unavailable_reason()}")
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(shape), dtype))(*args, **attributes)


def _forward_local(x, kernel):
    return _call(TARGETS[0], x.shape[:-1] + kernel.shape[-1:], x.dtype, x, kernel, **_padding(kernel.shape))


def _input_grad_local(dy, kernel):
    return _call(TARGETS[1], dy.shape[:-1] + kernel.shape[-2:-1], dy.dtype, dy, kernel, **_padding(kernel.shape))


def _kernel_grad_local(x, dy, kernel_shape):
    return _call(TARGETS[2], kernel_shape, x.dtype, x, dy, **_padding(kernel_shape))


def _up_forward_local(x, kernel):
    out_channels = kernel.shape[1] // 2 ** (x.ndim - 2)
    shape = (x.shape[0], *(2 * s for s in x.shape[1:-1]), out_channels)
    return _call(UP_TARGETS[0], shape, x.dtype, x, kernel)


def _up_input_grad_local(dy, kernel):
    shape = (dy.shape[0], *(s // 2 for s in dy.shape[1:-1]), kernel.shape[0])
    return _call(UP_TARGETS[1], shape, dy.dtype, dy, kernel)


def _up_kernel_grad_local(x, dy, kernel_shape):
    return _call(UP_TARGETS[2], kernel_shape, x.dtype, x, dy)


# Sharding. A custom call is opaque to XLA's partitioner, which would gather a batch-sharded input onto
# every device and convolve the whole batch there. These rules keep the batch axis as sharded as the
# activation arrives (every other axis replicated): each device convolves its own examples, and a kernel
# gradient is its devices' partial sums, all-reduced. On one device the rules are not consulted at all.

def _batch_axes(arg_shape):
    """The mesh axes that shard an activation's batch axis (None: not sharded)."""
    spec = arg_shape.sharding.spec
    return spec[0] if len(spec) else None


def _batch_sharded(mesh, axes, rank: int) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (rank - 1))))


def _spatial_factors(rank: int) -> tuple[str, str]:
    """Shardy factor names of an activation's spatial axes (s0 s1 …) and of a kernel's (k0 k1 …)."""
    return " ".join(f"s{i}" for i in range(rank - 2)), " ".join(f"k{i}" for i in range(rank - 2))


def _conv_rules(rank: int) -> tuple[str, str, str]:
    """Shardy's rules of the convolution's forward, input gradient and kernel gradient: activations
    (b, *s, c) and (b, *s, o), kernel (*k, c, o)."""
    s, k = _spatial_factors(rank)
    return f"b {s} c, {k} c o -> b {s} o", f"b {s} o, {k} c o -> b {s} c", f"b {s} c, b {s} o -> {k} c o"


def _up_rules(rank: int) -> tuple[str, str, str]:
    """Shardy's rules of the up-convolution's forward, input gradient and kernel gradient: the output's
    spatial axes are twice the input's, so they are other factors (t0 t1 …); the kernel is (c, taps·o)."""
    s, _ = _spatial_factors(rank)
    t = s.replace("s", "t")
    return f"b {s} c, c k -> b {t} o", f"b {t} o, c k -> b {s} c", f"b {s} c, b {t} o -> c k"


def _all_but_batch(rule: str) -> tuple[str, ...]:
    """The rule's factors other than ``b``, in order of first appearance (the order Shardy requires)."""
    names = rule.replace(",", " ").replace("->", " ").split()
    return tuple(n for n in dict.fromkeys(names) if n != "b")


@functools.cache
def _partitioned_activation_product(local, rank: int, rule: str) -> custom_partitioning:
    """``local`` (forward or input gradient: batch in, batch out) partitioned along the batch axis; ``rule``
    is its Shardy rule."""
    product = custom_partitioning(local)

    def infer(mesh, arg_shapes, result_shape):
        return _batch_sharded(mesh, _batch_axes(arg_shapes[0]), rank)

    def partition(mesh, arg_shapes, result_shape):
        sharded = _batch_sharded(mesh, _batch_axes(arg_shapes[0]), rank)
        return mesh, local, sharded, (sharded, NamedSharding(mesh, PartitionSpec()))

    product.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                          need_replication_factors=_all_but_batch(rule))
    return product


@functools.cache
def _partitioned_kernel_grad(local, rank: int, rule: str) -> custom_partitioning:
    """``local`` (a kernel gradient) partitioned along the batch axis: per-device partial sums, then an
    all-reduce; ``rule`` is its Shardy rule."""
    product = custom_partitioning(local, static_argnums=(2,))

    def infer(kernel_shape, mesh, arg_shapes, result_shape):
        return NamedSharding(mesh, PartitionSpec())

    def partition(kernel_shape, mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0])
        sharded = _batch_sharded(mesh, axes, rank)

        def lower(x, dy):
            partial = local(x, dy, kernel_shape)
            return partial if axes is None else jax.lax.psum(partial, axes)

        return mesh, lower, NamedSharding(mesh, PartitionSpec()), (sharded, sharded)

    product.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                          reduction_factors=("b",), need_replication_factors=_all_but_batch(rule))
    return product


def _operation(forward_local, input_grad_local, kernel_grad_local, rules):
    """The three products of one operation (forward, input gradient, kernel gradient), each partitioned along
    the batch axis; ``rules(rank)`` gives their Shardy rules."""

    def forward(x, kernel):
        return _partitioned_activation_product(forward_local, x.ndim, rules(x.ndim)[0])(x, kernel)

    def input_grad(dy, kernel):
        return _partitioned_activation_product(input_grad_local, dy.ndim, rules(dy.ndim)[1])(dy, kernel)

    def kernel_grad(x, dy, kernel_shape):
        return _partitioned_kernel_grad(kernel_grad_local, x.ndim, rules(x.ndim)[2])(x, dy, tuple(kernel_shape))

    return forward, input_grad, kernel_grad


forward, input_grad, kernel_grad = _operation(_forward_local, _input_grad_local, _kernel_grad_local, _conv_rules)
forward.__doc__ = """``forward(x, kernel)`` = ``jaxfcn.models.layers.conv(x, kernel)``: 'SAME' stride-1,
x (N, *S, Ci), kernel (*K, Ci, Co), float32."""
input_grad.__doc__ = """``input_grad(dy, kernel)``: the gradient of ``<forward(x, kernel), dy>`` with respect to x,
(N, *S, Ci)."""
kernel_grad.__doc__ = """``kernel_grad(x, dy, kernel_shape)``: the gradient of ``<forward(x, kernel), dy>`` with respect
to the kernel, of shape ``kernel_shape``."""

up_forward, up_input_grad, up_kernel_grad = _operation(_up_forward_local, _up_input_grad_local, _up_kernel_grad_local,
                                                       _up_rules)
up_forward.__doc__ = """``up_forward(x, kernel)`` = ``jaxfcn.models.layers.up_conv(x, kernel)``: x (N, *S, Ci),
kernel (Ci, 2^d·Co) -> (N, *2S, Co), float32."""
up_input_grad.__doc__ = """``up_input_grad(dy, kernel)``: the gradient of ``<up_forward(x, kernel), dy>`` with respect
to x, (N, *S, Ci)."""
up_kernel_grad.__doc__ = """``up_kernel_grad(x, dy, kernel_shape)``: the gradient of ``<up_forward(x, kernel), dy>``
with respect to the kernel (Ci, 2^d·Co)."""
