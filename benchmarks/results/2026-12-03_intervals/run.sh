#!/bin/bash
# The CPU goals of issue 17, re-measured with many rounds so that each paired ratio has a 95 % interval.
# Run from the repository root on a quiet machine: bash benchmarks/results/2026-12-03_intervals/run.sh
set -u
D=benchmarks/results/2026-12-03_intervals
PY=${PY:-.venv/bin/python}
run() { name=$1; shift; { uptime; "$PY" "$@" --json "$D/$name.json"; uptime; } > "$D/$name.log" 2>&1; }
run ts3d_64_base8 benchmarks/train_step.py --dims 3 --size 64 --batch 2 --base 8 --torch channels_last,compile --rounds 21
run sliding_window_1mm benchmarks/sliding_window.py --torch channels_last --rounds 11 --call-rounds 15
run ts3d_32 benchmarks/train_step.py --dims 3 --size 32 --batch 2 --torch channels_last,compile --rounds 15
run ts2d benchmarks/train_step.py --torch channels_last,compile --rounds 15
