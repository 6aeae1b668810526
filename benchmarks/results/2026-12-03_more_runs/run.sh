#!/bin/bash
# More runs of the two CPU settings of issue 17 that sit at parity (64³ base-8 train step, 1 mm sliding window),
# so that across_runs.py's interval over runs narrows. Same code and options as ../2026-12-03_intervals/run.sh.
# Run from the repository root on a quiet machine: bash benchmarks/results/2026-12-03_more_runs/run.sh
set -u
D=benchmarks/results/2026-12-03_more_runs
PY=${PY:-.venv/bin/python}
run() { name=$1; shift; { uptime; "$PY" "$@" --json "$D/$name.json"; uptime; } > "$D/$name.log" 2>&1; }
# First block 16:44–17:02 (i = 1 2 3); second block 17:37– (i = 4 5 6), with BLOCK=2.
first=1; [ "${BLOCK:-1}" = 2 ] && first=4
for i in $first $((first + 1)) $((first + 2)); do
  run sliding_window_1mm_$i benchmarks/sliding_window.py --torch channels_last --rounds 7 --call-rounds 11
  [ "$i" = $((first + 2)) ] || run ts3d_64_base8_$i benchmarks/train_step.py --dims 3 --size 64 --batch 2 --base 8 --torch channels_last,compile --rounds 11
done
