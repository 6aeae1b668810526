#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one run on a machine with one NVIDIA GPU, within a deadline.
#
#   SUITE_SECONDS=540 OUT=/tmp/gpu bash benchmarks/gpu_suite.sh
#
# It uses the machine's own python3 with its JAX (CUDA), PyTorch, flax and optax; jaxfcn runs from this
# checkout (PYTHONPATH), and wheels of packages the machine lacks are installed from .whl/ when present
# (ml_collections; flax from .whl_flax/ only if the machine's flax is older than pyproject's lower bound).
# Parts run in order of priority, each in its own process under a time limit, so one failure or hang costs only its
# own time; a part that would start with under 30 s left is skipped. Results: $OUT/<part>.json and one
# log, $OUT/suite.log; the printed tail of each part carries its table.
set -u
OUT=${OUT:-/tmp/jaxfcn_gpu_suite}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
DEADLINE=$(( $(date +%s) + ${SUITE_SECONDS:-540} ))
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX takes 75% of the GPU's memory by default; PyTorch runs in the same processes and needs room too.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45

put_first_on_path() {  # put_first_on_path DIR: install DIR/*.whl (no registry there) ahead of the machine's own
    compgen -G "$1/*.whl" >/dev/null || return 0
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "/tmp/jaxfcn$1" "$1"/*.whl \
        && export PYTHONPATH="/tmp/jaxfcn$1:$PYTHONPATH"
}
put_first_on_path .whl
python3 -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:2])) < (0, 12))" || put_first_on_path .whl_flax

part() {  # part NAME LIMIT_SECONDS COMMAND...: run with a limit, log it, print its tail
    local name=$1 limit=$2 left start rc
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 30 )); then echo "[$name] skipped: ${left} s left" | tee -a "$LOG"; return 0; fi
    (( limit > left )) && limit=$left
    echo "[$name] start $(date +%T), limit ${limit} s: $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/part.log" 2>&1
    rc=$?
    cat "$OUT/part.log" >> "$LOG"
    echo "[$name] exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    grep -v -e "Warning" -e "warn(" -e "^ *self\." -e "^ *warnings" "$OUT/part.log" | tail -n "${TAIL:-28}"
    rm -f "$OUT/part.log"
    return $rc
}

# 1. The machine, the versions, and one jaxfcn train step on the GPU: if this fails, nothing else can work.
part sanity 90 python3 - <<'EOF' || { echo "sanity failed: stopping"; exit 1; }
import shutil, subprocess, jax, flax, optax, torch
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
print("jax", jax.__version__, jax.devices(), "| flax", flax.__version__, "| optax", optax.__version__,
      "| torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
import sys; sys.path.insert(0, "benchmarks")
from train_step import bench_config, jax_side
import numpy as np
config = bench_config(64, 2, 3, 8, "float32")
batch = {"image": np.zeros((2, 64, 64, 1), np.float32) + np.arange(64, dtype=np.float32)[:, None, None] / 64,
         "label": (np.arange(2 * 64 * 64).reshape(2, 64, 64) % 4).astype(np.int32)}
run, flops, _ = jax_side(config, batch, (), 2)
run()
print(f"jaxfcn step on {jax.default_backend()}: ok, {flops / 1e9:.3f} GFLOP")
EOF

# 2. 3D (issue 17's GPU setting, never measured on a GPU yet): 64³ patches, batch 2, depth 4, base 32, full float32,
#    against torch.compile and torch.compile with CUDA graphs.
part train_step_3d 200 python3 benchmarks/train_step.py --dims 3 --size 64 --batch 2 --base 32 --precision fp32 \
    --rounds 7 --torch compile,compile_cudagraphs --json "$OUT/train_step_3d.json"
# 3. The goal's setting (batch 8, 128², depth 4, base 16), full float32 on both sides, kernel profile.
part train_step_fp32 250 python3 benchmarks/train_step.py --precision fp32 --rounds 9 --profile \
    --torch nchw,channels_last,compile,compile_cudagraphs --json "$OUT/train_step_fp32.json"
# 4. A GPU-sized setting: batch 16, 256², base 32, TF32 on both sides (each framework's usual GPU setting).
#    (2026-11-26 on an H200: 123 s with channels_last,compile; 97 s with compile_cudagraphs alone.)
part train_step_large_tf32 170 python3 benchmarks/train_step.py --precision tf32 --size 256 --batch 16 --base 32 \
    --rounds 7 --torch compile,compile_cudagraphs --profile --json "$OUT/train_step_large_tf32.json"
# 5. The goal's setting with TF32 on both sides.
part train_step_tf32 100 python3 benchmarks/train_step.py --precision tf32 --rounds 9 --torch compile,compile_cudagraphs \
    --json "$OUT/train_step_tf32.json"
# 6. bf16 compute on both sides (JAX compute_dtype, PyTorch autocast), GPU-sized setting; not yet measured.
part train_step_large_bf16 120 python3 benchmarks/train_step.py --dtype bfloat16 --size 256 --batch 16 --base 32 \
    --rounds 5 --torch compile --json "$OUT/train_step_large_bf16.json"
# 7. The other scripts' GPU column (input_pipeline and torch_parity need the NIfTI/tfds stack, not on the machine).
part run_all_gpu 300 python3 benchmarks/run_all.py --quick --devices gpu --only seeds,devices,cka \
    --json "$OUT/run_all_gpu.json"
echo "suite done $(date +%T)"
