"""3D sliding-window inference over one whole built-in volume, JAX (jaxfcn) against a PyTorch loop.

The volume is the real ICBM 2009c template (the built-in test template, ``template_case``) on a 1 mm grid
(188 × 224 × 196 voxels, z-scored inside the brain); the network is the 3D U-Net of ``configs/tissue_3d.py``
(depth 4, base 8, 64³ patches, 4 classes) with its initial weights: the time does not depend on the values.
Both sides compute the same thing:

* windows of the patch size, starts per axis from :func:`jaxfcn.train.inference.window_starts` (as many
  windows as MONAI's ``sliding_window_inference`` with the same ``overlap``; MONAI places them at a fixed
  stride with the last one clamped to the edge, this rule spreads them evenly);
* each window's softmax weighted by the Gaussian importance map MONAI's ``mode="gaussian"`` uses
  (``sigma_scale=0.125``: σ = P/8 per axis, peak 1, floored at its smallest positive value), summed, and
  divided by the summed weights;
* ``--batch`` windows per network call (MONAI's ``sw_batch_size``).

Sides, interleaved per round after a warm-up call:

* ``jax``: :func:`jaxfcn.train.inference.predict_sliding_window`, the code ``jaxfcn predict`` and the
  study's evaluation run (``model.conv_impl`` from ``--jax``, default ``fast``);
* ``torch_nchw`` / ``torch_channels_last``: the PyTorch twin (``jaxfcn.interop.torch``, the same weights)
  in ``torch.inference_mode`` with a loop written here the way MONAI's is: stack the windows, one forward,
  softmax, accumulate ``probs · weight`` and ``weight`` into whole-volume tensors.

Reported: seconds per volume (median wall), ``speedup_vs_torch`` = best PyTorch ÷ JAX, and the two
results' agreement (largest absolute probability difference, fraction of voxels with the same label).

Then the network calls alone (``network_call``): 5 batches of windows spread through the volume's window
order, through JAX's jitted softmax network and through the PyTorch twin + softmax in the best PyTorch
format, ``--call-rounds`` interleaved rounds, wall and CPU ms per call and the paired ratio with its 95 %
interval (``paired.py``). It separates the network from the loop
around it: a whole volume is ~90 calls of one shape, so its time moves with the neighbours' load by more
than the two sides differ.

With ``--lockstep-rounds N``, N more rounds of whole volumes timed batch by batch (``lockstep``): JAX's
:class:`jaxfcn.train.inference.WindowSums` and the PyTorch loop's batch i (or block of ``--lockstep-block``
batches) run back to back, each timed to completion, and a volume's time is the sum of its blocks and its
final division. The whole-volume rounds above
put a volume (13–25 s on the EPYC VM) between the two sides, and the machine's speed can change by more than
the sides differ in that time (``results/2026-12-04_window_runs/NOTES.md``).

    python benchmarks/sliding_window.py                 # 1 mm volume, 64³ windows, overlap 0.5, batch 2
    python benchmarks/sliding_window.py --quick         # 2 mm volume, 32³ windows, 3 rounds
    python benchmarks/sliding_window.py --overlap 0.25 --batch 4 --jax fast,plain
    python benchmarks/sliding_window.py --torch channels_last --lockstep-rounds 5 --lockstep-block 10
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SETTLE_S, add_common_args, interleave, machine_info, write_json  # noqa: E402
from paired import format_ratio, paired_ratio  # noqa: E402


def volume(spacing: float):
    """The real asym09c template of the built-in tissue task, (X, Y, Z, 1) float32, z-scored in the brain."""
    from jaxfcn.data.builtin import template_case
    from jaxfcn.data.preprocess import zscore_nonzero

    return zscore_nonzero(template_case("tissue", "asym09c", spacing).image).astype("float32")


def model_config(patch: int, batch: int, conv_impl: str):
    from jaxfcn.config import load_config
    from jaxfcn.data.builtin import TASKS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config(os.path.join(root, "configs", "tissue_3d.py"))
    c.model.in_channels, c.model.num_classes = 1, len(TASKS[c.data.task])  # what training resolves them to
    c.data.patch_shape = (patch,) * 3
    c.model.conv_impl = conv_impl
    c.train.batch_size = batch
    return c


def jax_side(config, variables, image, overlap):
    from jaxfcn.models import build_model
    from jaxfcn.train.inference import make_probabilities_fn, predict_sliding_window

    probabilities_fn = make_probabilities_fn(build_model(config.model))
    holder = {}

    def run():  # the result is a numpy array: every device computation has finished when it returns
        holder["probs"] = predict_sliding_window(probabilities_fn, variables, image, config.data.patch_shape,
                                                 overlap, config.train.batch_size)

    return run, holder


def torch_twin(config, variables, memory_format):
    """The PyTorch twin of ``config``'s U-Net with ``variables``' weights, in eval mode and ``memory_format``."""
    from jaxfcn.interop.torch import TorchUNet, flax_to_torch

    net = TorchUNet(config)
    net.load_state_dict(flax_to_torch(variables["params"], config))
    return net.eval().to(memory_format=memory_format)


class TorchWindowSums:
    """A MONAI-style PyTorch sliding-window loop over the twin, written independently of the JAX side, one
    batch of windows at a time (the interface of :class:`jaxfcn.train.inference.WindowSums`): stack the
    windows, one forward, softmax, accumulate ``probs · weight`` and ``weight`` into whole-volume tensors."""

    def __init__(self, net, image, patch, overlap, batch, classes, memory_format):
        import numpy as np
        import torch

        from jaxfcn.train.inference import gaussian_importance, window_starts

        self.net, self.patch, self.batch, self.format = net, tuple(patch), batch, memory_format
        self.spatial = image.shape[:3]
        x = torch.from_numpy(np.moveaxis(image, -1, 0).copy())  # (C, X, Y, Z)
        shape = tuple(max(n, p) for n, p in zip(x.shape[1:], self.patch))
        self.x = torch.nn.functional.pad(x, [v for n, s in reversed(list(zip(x.shape[1:], shape))) for v in (0, s - n)])
        self.starts = [(a, b, c) for a in window_starts(shape[0], self.patch[0], overlap)
                       for b in window_starts(shape[1], self.patch[1], overlap)
                       for c in window_starts(shape[2], self.patch[2], overlap)]
        self.batches = -(-len(self.starts) // batch)
        self.weight = torch.from_numpy(gaussian_importance(self.patch))
        self.total = torch.zeros((classes, *shape))
        self.weights = torch.zeros(shape)

    def add_batch(self, index):
        import torch

        p0, p1, p2 = self.patch
        with torch.inference_mode():
            group = self.starts[index * self.batch:(index + 1) * self.batch]
            windows = torch.stack([self.x[:, a:a + p0, b:b + p1, c:c + p2] for a, b, c in group])
            probs = torch.softmax(self.net(windows.contiguous(memory_format=self.format)), dim=1)
            for (a, b, c), p in zip(group, probs):
                box = (slice(a, a + p0), slice(b, b + p1), slice(c, c + p2))
                self.total[(slice(None), *box)] += p * self.weight
                self.weights[box] += self.weight

    def probabilities(self):
        import numpy as np

        out = (self.total / self.weights)[:, :self.spatial[0], :self.spatial[1], :self.spatial[2]]
        return np.moveaxis(out.numpy(), 0, -1)


def torch_side(config, variables, image, overlap, memory_format):
    """(run, holder): one whole volume through :class:`TorchWindowSums` per ``run()``."""
    net = torch_twin(config, variables, memory_format)
    holder = {}

    def run():
        sums = TorchWindowSums(net, image, config.data.patch_shape, overlap, config.train.batch_size,
                               config.model.num_classes, memory_format)
        for index in range(sums.batches):
            sums.add_batch(index)
        holder["probs"] = sums.probabilities()

    return run, holder


class LockstepSide(NamedTuple):
    """One side's volume in ``lockstep``: its window sums (``WindowSums`` or ``TorchWindowSums``, which share
    ``batches``, ``add_batch`` and ``probabilities``) and a call that waits until their work has finished."""
    sums: object
    wait: Callable[[], object]

    def run_batches(self, indices) -> None:
        """Adds these batches and returns when they are computed."""
        for index in indices:
            self.sums.add_batch(index)
        self.wait()


def lockstep(config, variables, image, overlap, memory_format, rounds: int, block: int = 1) -> dict:
    """Both sides' volumes batch by batch: per round one JAX and one PyTorch volume, run in blocks of
    ``block`` batches, the two sides' block j one after the other (the side that goes first alternates by
    round). Each block is timed to completion 20 ms after the previous one ended, as ``common.interleave``
    does; the final divisions are timed too. A volume's time is the sum of its blocks. The two sides' block j
    run seconds apart, not a whole volume (13–25 s on the EPYC VM) apart, so a change in the machine's speed
    reaches both alike. Within a block a side's batches follow each other as in its own loop (caches, and
    PyTorch's spinning OpenMP workers, as they would be); ``block`` 1 puts the other side and a pause between
    every two batches of one side. Returns per side the round totals (wall, CPU) and the paired ratio
    PyTorch ÷ JAX over rounds."""
    import jax

    from jaxfcn.models import build_model
    from jaxfcn.train.inference import WindowSums, make_probabilities_fn

    probabilities_fn = make_probabilities_fn(build_model(config.model))
    net = torch_twin(config, variables, memory_format)
    patch, batch = tuple(config.data.patch_shape), config.train.batch_size

    def sides():
        jax_sums = WindowSums(probabilities_fn, variables, image, patch, overlap, batch)
        torch_sums = TorchWindowSums(net, image, patch, overlap, batch, config.model.num_classes, memory_format)
        return {"jax": LockstepSide(jax_sums, lambda: jax.block_until_ready((jax_sums.total, jax_sums.weights))),
                "torch": LockstepSide(torch_sums, lambda: None)}  # PyTorch's CPU calls return when done

    for side in sides().values():  # warm-up: compiles JAX's programs, builds PyTorch's
        side.run_batches(range(side.sums.batches))
        side.sums.probabilities()
    out = {name: {"wall": [], "cpu": []} for name in ("jax", "torch")}

    def timed(name, fn, *args):  # adds fn's wall and CPU seconds to the current round's totals of side ``name``
        time.sleep(SETTLE_S)
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        out[name]["wall"][-1] += time.perf_counter() - w
        out[name]["cpu"][-1] += time.process_time() - c

    for r in range(rounds):
        current = sides()
        order = ["jax", "torch"] if r % 2 == 0 else ["torch", "jax"]
        for name in order:
            out[name]["wall"].append(0.0)
            out[name]["cpu"].append(0.0)
        count = current["jax"].sums.batches
        for first in range(0, count, block):
            for name in order:
                timed(name, current[name].run_batches, range(first, min(first + block, count)))
        for name in order:
            timed(name, current[name].sums.probabilities)
    return {"seconds_per_volume": {k: statistics.median(v["wall"]) for k, v in out.items()},
            "cpu_seconds_per_volume": {k: statistics.median(v["cpu"]) for k, v in out.items()},
            "rounds_s": {k: [round(s, 2) for s in v["wall"]] for k, v in out.items()},
            "paired_speedup_vs_torch": paired_ratio(out["torch"]["wall"], out["jax"]["wall"])}


def network_call_sides(config, variables, image, overlap, memory_format, calls: int):
    """``{"jax": run, "torch": run}``: each runs ``calls`` forward + softmax calls, on ``calls`` batches of
    windows spread evenly through the volume's sliding-window order (the same batches on both sides). JAX
    calls through ``make_probabilities_fn``, PyTorch through the twin in ``inference_mode`` with
    ``memory_format``. Spread, because a volume's windows differ (14–97 % zeros here) and the corner batch
    alone stands for none of them: a first check on a busy machine had PyTorch slower on it, a later one
    found no effect of content on either side (``results/2026-12-03_intervals/NOTES.md``)."""
    import jax
    import numpy as np
    import torch

    from jaxfcn.models import build_model
    from jaxfcn.train.inference import make_probabilities_fn, window_starts

    patch = tuple(config.data.patch_shape)
    shape = tuple(max(n, p) for n, p in zip(image.shape[:3], patch))
    padded = np.zeros(shape + image.shape[-1:], np.float32)
    padded[: image.shape[0], : image.shape[1], : image.shape[2]] = image
    starts = [(a, b, c) for a in window_starts(shape[0], patch[0], overlap)
              for b in window_starts(shape[1], patch[1], overlap)
              for c in window_starts(shape[2], patch[2], overlap)]
    batch = config.train.batch_size
    firsts = np.linspace(0, len(starts) - batch, calls).round().astype(int)
    batches = [np.stack([padded[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in starts[f:f + batch]])
               for f in firsts]
    probabilities_fn = make_probabilities_fn(build_model(config.model))
    x_jax = [jax.device_put(x) for x in batches]
    net = torch_twin(config, variables, memory_format)
    x_torch = [torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(memory_format=memory_format)
               for x in batches]

    def run_jax():
        jax.block_until_ready([probabilities_fn(variables, x) for x in x_jax])

    def run_torch():
        with torch.inference_mode():
            for x in x_torch:
                torch.softmax(net(x), dim=1)

    return {"jax": run_jax, "torch": run_torch}


def main(argv=None) -> dict:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--spacing", type=float, default=0.0, help="grid spacing in mm (default 1; 2 with --quick)")
    parser.add_argument("--patch", type=int, default=0, help="window side (default 64; 32 with --quick)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch", default="2", help="windows per network call (MONAI's sw_batch_size); a comma "
                        "list times every side at each, named side@bN")
    parser.add_argument("--jax", default="fast", help="comma list of model.conv_impl values, one JAX side each")
    parser.add_argument("--torch", default="nchw,channels_last", help="comma list of PyTorch sides: nchw, "
                        "channels_last (default both)")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 5; 3 with --quick)")
    parser.add_argument("--call-rounds", type=int, default=10, help="interleaved rounds of the network call alone "
                        "(5 calls each; 0 skips it)")
    parser.add_argument("--lockstep-rounds", type=int, default=0, help="rounds of whole volumes timed batch by "
                        "batch, the two sides' batch i back to back (JAX and the best PyTorch format; 0 skips it)")
    parser.add_argument("--lockstep-block", type=int, default=1, help="batches per timed block in those rounds "
                        "(default 1)")
    args = parser.parse_args(argv)
    spacing = args.spacing or (2.0 if args.quick else 1.0)
    patch = args.patch or (32 if args.quick else 64)
    rounds = args.rounds or (3 if args.quick else 5)
    impls = [i for i in args.jax.split(",") if i]
    sides = [v for v in args.torch.split(",") if v]
    if not sides or set(sides) - {"nchw", "channels_last"}:
        parser.error(f"--torch {args.torch}: a comma list of nchw, channels_last")

    import jax
    import numpy as np
    import torch

    from jaxfcn.models import build_model
    from jaxfcn.train.inference import window_starts

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    formats = {v: {"nchw": torch.contiguous_format, "channels_last": torch.channels_last_3d}[v] for v in sides}
    image = volume(spacing)
    batches = [int(b) for b in args.batch.split(",") if b]
    config = model_config(patch, batches[0], impls[0])
    model = build_model(config.model)
    variables = model.init(jax.random.key(0), np.zeros((1, patch, patch, patch, 1), np.float32), train=False)
    windows = int(np.prod([len(window_starts(max(n, patch), patch, args.overlap)) for n in image.shape[:3]]))

    def label(side: str, batch: int) -> str:
        return side if len(batches) == 1 else f"{side}@b{batch}"

    fns, results = {}, {}
    for batch in batches:
        for impl in impls:
            name = label("jax" if impl == impls[0] else f"jax_{impl}", batch)
            fns[name], results[name] = jax_side(model_config(patch, batch, impl), variables, image, args.overlap)
        for variant, fmt in formats.items():
            name = label(f"torch_{variant}", batch)
            fns[name], results[name] = torch_side(model_config(patch, batch, impls[0]), variables, image,
                                                  args.overlap, fmt)
    times = interleave(fns, rounds=rounds, warmup=1)

    seconds = {name: statistics.median(t["wall"]) for name, t in times.items()}
    by_batch = {}
    for batch in batches:
        jax_name = label("jax", batch)
        torch_s = {k: seconds[k] for k in (label(f"torch_{v}", batch) for v in sides)}
        best = min(torch_s, key=torch_s.get)
        by_batch[batch] = {"jax": jax_name, "best_torch": best, "speedup_vs_torch": torch_s[best] / seconds[jax_name],
                           "paired_speedup_vs_torch": {k: paired_ratio(times[k]["wall"], times[jax_name]["wall"])
                                                       for k in torch_s}}
    # Each side at its fastest batch: what a user who tunes sw_batch_size on both gets.
    jax_best = min((label("jax", b) for b in batches), key=seconds.get)
    torch_best = min((by_batch[b]["best_torch"] for b in batches), key=seconds.get)
    first = by_batch[batches[0]]
    reference, ours = results[first["best_torch"]]["probs"], results[first["jax"]]["probs"]
    result = {
        "benchmark": "sliding_window",
        "machine": machine_info(),
        "config": {"volume": list(image.shape[:3]), "spacing_mm": spacing, "patch": patch, "overlap": args.overlap,
                   "batches": batches, "windows": windows, "depth": config.model.depth,
                   "base_width": config.model.base_width, "classes": config.model.num_classes,
                   "conv_impl": impls, "rounds": rounds, "torch_threads": torch.get_num_threads(),
                   "quick": args.quick},
        "seconds_per_volume": seconds,
        "cpu_seconds_per_volume": {name: statistics.median(t["cpu"]) for name, t in times.items()},
        "rounds_s": {name: [round(s, 2) for s in t["wall"]] for name, t in times.items()},
        "rounds_minor_faults": {name: t["faults"] for name, t in times.items()},
        "by_batch": by_batch,
        "best_jax": jax_best,
        "best_torch": torch_best,
        "speedup_vs_torch": seconds[torch_best] / seconds[jax_best],
        "max_abs_probability_difference": float(np.abs(reference - ours).max()),
        "label_agreement": float((reference.argmax(-1) == ours.argmax(-1)).mean()),
    }
    if args.call_rounds:
        channels_last = "channels_last" in torch_best
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        calls = 5
        t = interleave(network_call_sides(model_config(patch, batches[0], impls[0]), variables, image, args.overlap,
                                          fmt, calls),
                       rounds=args.call_rounds, warmup=1)
        result["network_call"] = {
            "batch": batches[0], "torch_format": "channels_last_3d" if channels_last else "nchw",
            "ms": {k: 1e3 * statistics.median(v["wall"]) / calls for k, v in t.items()},
            "cpu_ms": {k: 1e3 * statistics.median(v["cpu"]) / calls for k, v in t.items()},
            "paired_speedup_vs_torch": paired_ratio(t["torch"]["wall"], t["jax"]["wall"]),
        }
    if args.lockstep_rounds:
        fmt = torch.channels_last_3d if "channels_last" in torch_best else torch.contiguous_format
        result["lockstep"] = lockstep(model_config(patch, batches[0], impls[0]), variables, image, args.overlap, fmt,
                                      args.lockstep_rounds, args.lockstep_block)
        result["lockstep"]["torch_format"] = "channels_last_3d" if fmt == torch.channels_last_3d else "nchw"
        result["lockstep"]["block"] = args.lockstep_block
    result["headline"] = {"jax_s": seconds[jax_best], "best_torch_s": seconds[torch_best],
                          "speedup_vs_torch": result["speedup_vs_torch"],
                          "paired_vs_best_torch": format_ratio(first["paired_speedup_vs_torch"][first["best_torch"]]),
                          "label_agreement": result["label_agreement"]}
    if "network_call" in result:
        result["headline"]["network_call_speedup_vs_torch"] = result["network_call"]["paired_speedup_vs_torch"]["median"]
    if "lockstep" in result:
        result["headline"]["lockstep_speedup_vs_torch"] = result["lockstep"]["paired_speedup_vs_torch"]["median"]
    print_table(result)
    write_json(args.json, result)
    return result


def print_table(r: dict) -> None:
    c = r["config"]
    print(f"sliding-window inference: volume {'×'.join(map(str, c['volume']))} at {c['spacing_mm']:g} mm, "
          f"{c['patch']}³ windows, overlap {c['overlap']:g}, {c['windows']} windows, batch "
          f"{','.join(map(str, c['batches']))}, depth {c['depth']}, base {c['base_width']}; "
          f"{r['machine']['backend']} ({r['machine']['cpus']} cpus, torch threads {c['torch_threads']}); "
          f"medians of {c['rounds']} rounds")
    print("| side | s / volume | CPU s | best PyTorch at this batch ÷ side (JAX ÷ this side, paired) |")
    print("|---|---|---|---|")
    for batch, row in r["by_batch"].items():
        best_s = r["seconds_per_volume"][row["best_torch"]]
        for name, s in r["seconds_per_volume"].items():
            if len(r["by_batch"]) > 1 and not name.endswith(f"@b{batch}"):
                continue  # another batch's row
            ratio = f"{best_s / s:.2f}"
            if name in row["paired_speedup_vs_torch"]:
                ratio += f" ({format_ratio(row['paired_speedup_vs_torch'][name])})"
            print(f"| {name} | {s:.2f} | {r['cpu_seconds_per_volume'][name]:.2f} | {ratio} |")
        print(f"batch {batch}: JAX ÷ best PyTorch ({row['best_torch']}) {row['speedup_vs_torch']:.2f}×")
    print(f"each side at its best batch: {r['best_jax']} ÷ {r['best_torch']}: {r['speedup_vs_torch']:.2f}×; "
          f"agreement: max |Δp| {r['max_abs_probability_difference']:.1e}, same label "
          f"{100 * r['label_agreement']:.3f}% of voxels")
    for name, faults in r.get("rounds_minor_faults", {}).items():  # a slow round with ~10⁶: a fault of ours
        print(f"{name}: s per round {' '.join(map(str, r['rounds_s'][name]))}; minor faults {' '.join(map(str, faults))}")
    if "network_call" in r:
        n = r["network_call"]
        print(f"one network call alone (batch {n['batch']}, PyTorch {n['torch_format']}): JAX {n['ms']['jax']:.1f} ms "
              f"(CPU {n['cpu_ms']['jax']:.1f}), PyTorch {n['ms']['torch']:.1f} ms (CPU {n['cpu_ms']['torch']:.1f}); "
              f"PyTorch ÷ JAX paired {format_ratio(n['paired_speedup_vs_torch'])}")
    if "lockstep" in r:
        n = r["lockstep"]
        seconds, rounds = n["seconds_per_volume"], {k: " ".join(map(str, v)) for k, v in n["rounds_s"].items()}
        print(f"volumes batch by batch, {n.get('block', 1)} per timed block (PyTorch {n['torch_format']}): "
              f"JAX {seconds['jax']:.2f} s (per round "
              f"{rounds['jax']}), PyTorch {seconds['torch']:.2f} s ({rounds['torch']}); PyTorch ÷ JAX paired "
              f"{format_ratio(n['paired_speedup_vs_torch'])}")


if __name__ == "__main__":
    main()
