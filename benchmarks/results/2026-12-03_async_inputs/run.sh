#!/bin/bash
# The 1 mm sliding window against PyTorch's channels_last loop after on_device (commit 52bc0f4), with the
# options of ../2026-12-03_more_runs/run.sh, so that across_runs.py can put them beside the runs before.
# Run from the repository root on a quiet machine: bash benchmarks/results/2026-12-03_async_inputs/run.sh [FIRST LAST]
# (runs 1-3 at 23:05-23:19 UTC, 4-5 right after; runs 6- on 2026-12-04 with D=benchmarks/results/2026-12-04_window_runs)
set -u
D=${D:-benchmarks/results/2026-12-03_async_inputs}
PY=${PY:-.venv/bin/python}
run() { name=$1; shift; { uptime; "$PY" "$@" --json "$D/$name.json"; uptime; } > "$D/$name.log" 2>&1; }
for i in $(seq "${1:-1}" "${2:-3}"); do
  run sliding_window_1mm_$i benchmarks/sliding_window.py --torch channels_last --rounds 7 --call-rounds 11
done
