"""One 3×3×3 'SAME' convolution layer on the CPU: forward and both gradients, per formulation, against PyTorch.

A call computes ``y = conv(x, w)`` and the input and kernel gradients of ``Σ y·dy`` (one jitted program per
formulation, compiled with the U-Net's XLA options, ``jaxfcn.models.layers.compiler_options``). Sides, all in
this process, interleaved per round after warm-up (medians; wall and process CPU time):

* ``plain``: ``jaxfcn.models.layers.conv``, XLA's native 3D convolution (``model.conv_impl="plain"``);
* ``fast``: ``jaxfcn.models.fast_ops.onednn_conv``, oneDNN's kernels as XLA custom calls, what
  ``model.conv_impl="fast"`` runs on the CPU (skipped where they cannot be built);
* ``fast_xla``: ``jaxfcn.models.fast_ops.conv3d_as_2d``, what ``model.conv_impl="fast_xla"`` runs on the CPU;
* the candidate formulations it was chosen from, each differentiated by JAX: ``depth_sum`` (kd 2D
  convolutions of the depth-shifted planes, summed), ``fold_in`` (kernel depth folded into the input
  channels: one 2D conv with kd·Cin inputs), ``fold_out`` (folded into the output channels: one 2D conv with
  kd·Cout outputs, then a shifted sum);
* ``torch_ndhwc`` / ``torch_ncdhw``: ``torch.nn.functional.conv3d`` forward and ``backward`` in
  ``channels_last_3d`` and in the default layout.

``--parts`` times the forward, the input gradient and the kernel gradient separately instead. PyTorch's
gradient rows are a forward plus ``backward`` for that one gradient (autograd has no gradient without its
forward), so compare them with JAX's gradient plus JAX's forward.

    python benchmarks/conv3d.py                 # batch 2: 32³ 16→16, 16³ 64→64, 64³ 16→16
    python benchmarks/conv3d.py --quick         # the first two shapes, 3 rounds
    python benchmarks/conv3d.py --parts --only plain,fast,fast_xla,fold_in,fold_out
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_common_args, interleave, machine_info, median_ms, write_json  # noqa: E402

SHAPES = ((2, 32, 16, 16), (2, 16, 64, 64), (2, 64, 16, 16))  # (batch, side, Cin, Cout)
PARTS = ("fwd", "dx", "dw")


def formulations() -> dict:
    import jax
    import jax.numpy as jnp

    from jaxfcn.models import fast_ops, layers

    def depth_sum(x, w):
        n, d, h, wd, c = x.shape
        kd = w.shape[0]
        xp = jnp.pad(x, ((0, 0), layers.same_padding(kd), (0, 0), (0, 0), (0, 0)))
        planes = [jax.lax.conv_general_dilated(xp[:, k:k + d].reshape(n * d, h, wd, c), w[k], (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")) for k in range(kd)]
        return sum(planes).reshape(n, d, h, wd, -1)

    from jaxfcn.native import onednn

    native = {"fast": fast_ops.onednn_conv} if onednn.available() else {}
    return {"plain": layers.conv, **native, "fast_xla": fast_ops.conv3d_as_2d, "depth_sum": depth_sum,
            "fold_in": fast_ops._depth_into_input_channels, "fold_out": fast_ops._depth_into_output_channels}


# XLA:CPU option sets to compare (--options): the U-Net's (Eigen convolutions), XLA's defaults (YNNPACK
# 2D convolutions), and oneDNN.
OPTIONS = {"unet": None, "xla_default": {}, "onednn": {"xla_cpu_use_onednn": True}}


def jax_runner(conv, x, w, dy, part: str, options: dict | None = None):
    import jax

    from jaxfcn.models.layers import compiler_options

    def program(x, w, dy):
        y, vjp = jax.vjp(conv, x, w)
        if part == "all":
            return (y, *vjp(dy))
        return {"fwd": y, "dx": vjp(dy)[0], "dw": vjp(dy)[1]}[part]

    options = compiler_options() if options is None else options
    compiled = jax.jit(program).lower(x, w, dy).compile(compiler_options=options)
    return lambda: jax.block_until_ready(compiled(x, w, dy)), compiled


def torch_runner(x, w, dy, part: str, channels_last: bool):
    import numpy as np
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    tx = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy()).contiguous(memory_format=fmt)
    tw = torch.from_numpy(np.asarray(w).transpose(4, 3, 0, 1, 2).copy()).contiguous(memory_format=fmt)
    tdy = torch.from_numpy(np.moveaxis(np.asarray(dy), -1, 1).copy()).contiguous(memory_format=fmt)
    pad = w.shape[0] // 2
    tx.requires_grad_(part in ("all", "dx"))
    tw.requires_grad_(part in ("all", "dw"))

    def run():
        tx.grad = tw.grad = None
        if part == "fwd":
            with torch.no_grad():
                return F.conv3d(tx, tw, padding=pad)
        F.conv3d(tx, tw, padding=pad).backward(tdy)

    return run


def main(argv=None) -> dict:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--rounds", type=int, default=0, help="default 5; 3 with --quick")
    parser.add_argument("--parts", action="store_true", help="time forward, input and kernel gradient separately")
    parser.add_argument("--only", default="", help="comma list of sides (default: all)")
    parser.add_argument("--options", default="unet", help=f"XLA options: {', '.join(OPTIONS)} (comma list: "
                        "each JAX side once per option set, named side@options)")
    parser.add_argument("--shapes", default="", help="e.g. 2x32x16x16,2x16x64x64 (batch x side x Cin x Cout)")
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes
              else SHAPES[:2] if args.quick else SHAPES)
    rounds = args.rounds or (3 if args.quick else 5)
    convs = formulations()
    sides = [s for s in (args.only.split(",") if args.only else [*convs, "torch_ndhwc", "torch_ncdhw"]) if s]
    option_sets = args.options.split(",")
    rows = []
    for n, side, cin, cout in shapes:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (n, side, side, side, cin))
        w = jax.random.normal(keys[1], (3, 3, 3, cin, cout)) * (2 / (27 * cin)) ** 0.5
        dy = jax.random.normal(keys[2], (n, side, side, side, cout))
        for part in (PARTS if args.parts else ("all",)):
            fns, reference, errors = {}, None, {}
            for name in sides:
                if name.startswith("torch_"):
                    fns[name] = torch_runner(x, w, dy, part, channels_last=name == "torch_ndhwc")
                    continue
                for option_set in option_sets:
                    label = name if option_set == "unet" else f"{name}@{option_set}"
                    fns[label], compiled = jax_runner(convs[name], x, w, dy, part, OPTIONS[option_set])
                    out = jax.tree.leaves(compiled(x, w, dy))
                    reference = reference or out
                    errors[label] = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(out, reference))
            times = interleave(fns, rounds=rounds)
            ms = {k: median_ms(t["wall"]) for k, t in times.items()}
            cpu = {k: median_ms(t["cpu"]) for k, t in times.items()}
            rows.append({"shape": f"B{n} {side}³ {cin}→{cout}", "part": part, "ms": ms, "cpu_ms": cpu,
                         "max_rel_error_vs_first": errors})
            print(f"B{n} {side}³ {cin}→{cout} [{part}]  " + "  ".join(f"{k} {v:.1f} ({cpu[k]:.0f})" for k, v in ms.items())
                  + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
    result = {"benchmark": "conv3d", "machine": machine_info(), "rounds": rounds, "rows": rows}
    best = {}
    for row in rows:
        torch_best = min((v for k, v in row["ms"].items() if k.startswith("torch_")), default=None)
        ours = "fast" if "fast" in row["ms"] else "fast_xla"
        if torch_best and ours in row["ms"]:
            best[f"speedup_vs_torch {row['shape']} {row['part']}"] = torch_best / row["ms"][ours]
    result["headline"] = best
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
