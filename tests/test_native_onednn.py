"""oneDNN's convolutions as XLA custom calls (jaxfcn.native.onednn): built here, equal to XLA's convolution
(values and both gradients, 2D and 3D, odd shapes, even and 1×1 kernels, one input channel, batches split
over XLA's threads) and to the matmul up-convolution, used by the default formulation on the CPU, and
refused cleanly (XLA's convolutions instead) where they cannot be built."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from jaxfcn.models import fast_ops, layers
from jaxfcn.native import onednn

BUILT_HERE = platform.system() == "Linux" and platform.machine() == "x86_64"  # where pyproject installs oneDNN
needs_onednn = pytest.mark.skipif(not BUILT_HERE, reason="oneDNN wheels are installed on Linux x86_64 only")


@needs_onednn
def test_onednn_handlers_are_built_and_registered():
    """Where pyproject.toml installs the oneDNN wheels, the handlers build: a broken build fails here instead
    of silently falling back to XLA's slower convolutions."""
    assert onednn.available(), onednn.unavailable_reason()
    assert onednn.library_path().is_file()


def products(conv, x, w, dy):
    """(y, dx, dk) of ``conv`` at (x, w) with incoming gradient dy, as one compiled program."""
    def run(x, w, dy):
        y, vjp = jax.vjp(conv, x, w)
        return (y, *vjp(dy))
    return jax.jit(run)(x, w, dy)


@needs_onednn
@pytest.mark.parametrize("shape,kernel", [
    ((2, 5, 6, 7, 3), (3, 3, 3, 3, 4)),   # depth ≠ height ≠ width
    ((1, 4, 4, 4, 1), (3, 3, 3, 1, 8)),   # one input channel: the first layer
    ((2, 3, 5, 4, 6), (1, 1, 1, 6, 2)),   # the 1×1×1 head
    ((1, 4, 6, 5, 2), (2, 3, 2, 2, 3)),   # even kernel sides: 'SAME' pads (k−1)//2 low, k//2 high
    ((5, 4, 6, 5, 3), (3, 3, 3, 3, 2)),   # five examples: uneven slices of the batch on XLA's threads
    ((3, 9, 7, 5), (3, 3, 5, 7)),         # 2D
    ((2, 6, 8, 16), (2, 2, 16, 4)),       # 2D, even kernel
])
def test_onednn_products_equal_xla_convolution(shape, kernel):
    ks = jax.random.split(jax.random.key(sum(shape) + sum(kernel)), 3)
    x, w = jax.random.normal(ks[0], shape), jax.random.normal(ks[1], kernel)
    dy = jax.random.normal(ks[2], shape[:-1] + kernel[-1:])
    for name, ours, ref in zip(("forward", "input gradient", "kernel gradient"),
                               products(fast_ops.onednn_conv, x, w, dy), products(layers.conv, x, w, dy)):
        assert ours.shape == ref.shape, name
        error = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
        assert error < 2e-6, f"{name}: relative error {error}"  # float32 rounding of sums of ≤ 600 products


@needs_onednn
@pytest.mark.parametrize("shape,out_channels", [
    ((2, 3, 5, 4, 6), 3),   # 3D, depth ≠ height ≠ width
    ((1, 2, 2, 2, 8), 4),   # one example: oneDNN's own threads
    ((5, 7, 3, 4), 6),      # 2D, five examples in uneven slices
    ((3, 4, 4, 16), 16),
])
def test_onednn_up_products_equal_matmul_up_convolution(shape, out_channels):
    """The decoder's stride-2 transposed convolution (oneDNN's deconvolution on the UpConv kernel read with
    strides) against :func:`jaxfcn.models.layers.up_conv` (matmul and depth-to-space)."""
    spatial = len(shape) - 2
    ks = jax.random.split(jax.random.key(sum(shape)), 3)
    x = jax.random.normal(ks[0], shape)
    w = jax.random.normal(ks[1], (shape[-1], 2**spatial * out_channels))
    dy = jax.random.normal(ks[2], (shape[0], *(2 * s for s in shape[1:-1]), out_channels))
    for name, ours, ref in zip(("forward", "input gradient", "kernel gradient"),
                               products(fast_ops.onednn_up_conv, x, w, dy), products(layers.up_conv, x, w, dy)):
        assert ours.shape == ref.shape, name
        error = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
        assert error < 2e-6, f"{name}: relative error {error}"


@needs_onednn
@pytest.mark.parametrize("spatial", [2, 3])
def test_fast_step_calls_onednn_on_cpu_and_fast_xla_does_not(spatial):
    x = jnp.ones((2,) + (6,) * spatial + (3,))
    w = jnp.ones((3,) * spatial + (3, 4))
    dy = jnp.ones((2,) + (6,) * spatial + (4,))

    def text(conv):
        return jax.jit(lambda x, w, dy: products(conv, x, w, dy)).lower(x, w, dy).as_text()

    fast = text(fast_ops.fast_conv)
    for target in onednn.TARGETS:
        assert fast.count(target) >= 1, target
    assert "stablehlo.convolution" not in fast
    assert "jaxfcn_conv" not in text(fast_ops.xla_fast_conv)
    # The decoder's up-convolution: oneDNN's in `fast`, the matmul in `fast_xla`.
    up = fast_ops.kernels("fast").up_conv
    assert up is fast_ops.fast_up_conv and fast_ops.kernels("fast_xla").up_conv is layers.up_conv
    w_up = jnp.ones((3, 2**spatial * 4))
    up_text = jax.jit(lambda x, w, dy: products(up, x, w, dy)).lower(x, w_up, jnp.ones((2,) + (12,) * spatial + (4,)))
    for target in onednn.UP_TARGETS:
        assert up_text.as_text().count(target) >= 1, target


@needs_onednn
def test_bfloat16_convolutions_stay_with_xla():
    """The handlers are float32; other dtypes take XLA's convolutions."""
    x = jnp.ones((1, 4, 4, 4, 2), jnp.bfloat16)
    w = jnp.ones((3, 3, 3, 2, 2), jnp.bfloat16)
    text = jax.jit(fast_ops.fast_conv).lower(x, w).as_text()
    assert "jaxfcn_conv" not in text and "stablehlo.convolution" in text


FALLBACK = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from jaxfcn.models import fast_ops, layers
    from jaxfcn.native import onednn
    x, w = jnp.ones((1, 4, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 2))
    y = jax.jit(fast_ops.fast_conv)(x, w)
    json.dump({"available": onednn.available(), "reason": onednn.unavailable_reason(),
               "custom_call": "jaxfcn_conv" in jax.jit(fast_ops.fast_conv).lower(x, w).as_text(),
               "equal": bool(jnp.allclose(y, layers.conv(x, w)))}, open(sys.argv[1], "w"))
""")


@pytest.mark.parametrize("env,reason", [({"JAXFCN_ONEDNN": "0"}, "turned off by JAXFCN_ONEDNN=0"),
                                        ({"CXX": "false"}, "compiling onednn_conv.cc failed")])
def test_without_onednn_the_default_uses_xla_convolutions(tmp_path, env, reason):
    """Turned off, or a compiler that fails (``false`` exits 1): one-line reason, XLA's convolutions, same
    values. A fresh cache folder, so the compiler really runs."""
    out = tmp_path / "out.json"
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXFCN_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run([sys.executable, "-c", FALLBACK, str(out)], env=full_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    if env.get("CXX") and not BUILT_HERE:  # no wheels: the reason names the missing wheel instead
        reason = "wheel"
    assert not result["available"] and reason in result["reason"] and "\n" not in result["reason"]
    assert not result["custom_call"] and result["equal"]
    # A broken build where oneDNN is installed is said on stderr, in one line; turning it off is silent.
    warned = [line for line in done.stderr.splitlines() if "oneDNN convolutions unavailable" in line]
    assert len(warned) == (1 if env.get("CXX") and BUILT_HERE else 0), done.stderr[-2000:]


@needs_onednn
def test_build_is_cached_and_keyed():
    """A second call reuses the library; its folder name hashes the source and versions."""
    first = onednn.library_path()
    mtime = first.stat().st_mtime_ns
    assert onednn.library_path() == first and first.stat().st_mtime_ns == mtime
    assert len(first.parent.name) == 16 and first.parent.parent.name == "native"


@needs_onednn
@pytest.mark.parametrize("batch", [1, 2])  # oneDNN's own threads; slices on XLA's threads
def test_the_calling_threads_openmp_setting_is_left_as_it_was(batch):
    """The fault: each call set the OpenMP thread count of the thread it ran on and left it there. XLA runs a
    program's first operations on the thread that launched it (every operation, with jaxfcn's synchronous CPU
    dispatch), so PyTorch on the user's thread then ran its operations on one thread: 1.5× slower in the
    train-step benchmark."""
    import ctypes

    gomp = ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime the handlers link
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(3)
    try:
        x = jnp.ones((batch, 6, 6, 2))
        grads = jax.jit(jax.grad(lambda x, k: fast_ops.onednn_conv(x, k).sum(), argnums=(0, 1)))
        jax.block_until_ready(grads(x, jnp.ones((3, 3, 2, 2))))
        assert gomp.omp_get_max_threads() == 3
    finally:
        gomp.omp_set_num_threads(before)
