"""Why two sliding-window runs disagree: the 64³ base-8, batch-2 forward (tissue_3d's U-Net, initial weights)
of JAX (`fast`) and the PyTorch twin (channels_last_3d), timed three ways in one process (EPYC, 2 cores):

1. order: does the side run just before a timed call slow it (20 ms or 300 ms pause)?
2. content: does a batch's content (corner windows are > 90 % zeros) change either side's time?
3. interference: a busy loop on core 1 for 20 % / 50 % of each 10 ms: does it slow one side more?
4. idle: busy loops at SCHED_IDLE priority on both cores (they run only when nothing else wants a core, and
   a thread that wakes preempts them inside the guest, so the VM's vCPUs never halt): off, on, off, on.

    python benchmarks/results/2026-12-03_intervals/forward_experiments.py [order,content,interference,idle]
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402,F401  (the process settings every benchmark runs with)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sliding_window import model_config, torch_twin, volume  # noqa: E402

from jaxfcn.models import build_model  # noqa: E402
from jaxfcn.train import inference  # noqa: E402

HOG = "import time,sys\nd=float(sys.argv[1])\nwhile True:\n t=time.perf_counter()\n while time.perf_counter()-t<d*0.01: pass\n time.sleep((1-d)*0.01)\n"

torch.set_num_threads(2)
image = volume(1.0)
config = model_config(64, 2, "fast")
model = build_model(config.model)
variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 64, 1), np.float32), train=False)
net = torch_twin(config, variables, torch.channels_last_3d)
probabilities = inference.make_probabilities_fn(model)
shape = tuple(max(n, 64) for n in image.shape[:3])
starts = [(a, b, c) for a in inference.window_starts(shape[0], 64, 0.5)
          for b in inference.window_starts(shape[1], 64, 0.5) for c in inference.window_starts(shape[2], 64, 0.5)]


def sides(first: int):
    """(jax, torch) runners on the batch of windows starts[first:first + 2]."""
    x = np.stack([image[a:a + 64, b:b + 64, c:c + 64] for a, b, c in starts[first:first + 2]])
    xj = jax.device_put(x)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(memory_format=torch.channels_last_3d)

    def run_torch():
        with torch.inference_mode():
            torch.softmax(net(xt), 1)

    return (lambda: jax.block_until_ready(probabilities(variables, xj))), run_torch, float((x == 0).mean())


def report(label, times):
    for side, t in times.items():
        print(f"{label:28s} {side:6s} wall {1e3 * statistics.median(t['wall']):6.1f} ms, "
              f"CPU {1e3 * statistics.median(t['cpu']):6.1f} ms", flush=True)


def busy_loops(cores, duty: float, idle_priority: bool = False) -> list:
    """Busy-loop processes, one per core in ``cores``, spinning ``duty`` of every 10 ms."""
    prefix = ["chrt", "--idle", "0"] if idle_priority else []
    return [subprocess.Popen(prefix + ["taskset", "-c", str(c), sys.executable, "-c", HOG, str(duty)]) for c in cores]


def stop(processes):
    for p in processes:
        p.kill()
        p.wait()


experiments = (sys.argv[1] if len(sys.argv) > 1 else "order,content,interference").split(",")
firsts = np.linspace(0, len(starts) - 2, 5).round().astype(int).tolist()
J, T, _ = sides(firsts[1])
for _ in range(3):
    J(), T()

# 1. order: a conditioning call, then the timed one
times = {}
for _ in range(10 if "order" in experiments else 0):
    for label, before, fn, pause in (("JAX after JAX, 20 ms", J, J, 0.02), ("JAX after PyTorch, 20 ms", T, J, 0.02),
                                     ("JAX after PyTorch, 300 ms", T, J, 0.3), ("PyTorch after PyTorch, 20 ms", T, T, 0.02),
                                     ("PyTorch after JAX, 20 ms", J, T, 0.02), ("PyTorch after JAX, 300 ms", J, T, 0.3)):
        before()
        times.setdefault(label, {"wall": [], "cpu": []})
        r = common.interleave({"x": fn}, rounds=1, warmup=0, settle=pause)["x"]
        times[label]["wall"] += r["wall"]
        times[label]["cpu"] += r["cpu"]
for label, t in times.items():
    report("1. " + label, {"": t})

# 2. content: five batches spread through the volume's window order
fns = {}
for first in firsts if "content" in experiments else []:
    j, t, zeros = sides(first)
    fns[f"jax {first} ({zeros:.0%} zeros)"], fns[f"torch {first}"] = j, t
for name, t in (common.interleave(fns, rounds=6) if fns else {}).items():
    report("2. batch " + name, {"": t})

# 3. interference on core 1
for duty in (0.0, 0.2, 0.5) if "interference" in experiments else ():
    hogs = busy_loops([1], duty) if duty else []
    time.sleep(0.5)
    try:
        report(f"3. busy loop {duty:.0%} of core 1", common.interleave({"jax": J, "torch": T}, rounds=8))
    finally:
        stop(hogs)

# 4. SCHED_IDLE busy loops on both cores
for on in (False, True, False, True) if "idle" in experiments else ():
    spinners = busy_loops([0, 1], 1.0, idle_priority=True) if on else []
    time.sleep(0.5)
    try:
        report(f"4. SCHED_IDLE loops {'on' if on else 'off'}", common.interleave({"jax": J, "torch": T}, rounds=8))
    finally:
        stop(spinners)
