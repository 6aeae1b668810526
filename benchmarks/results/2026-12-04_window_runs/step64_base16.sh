#!/bin/bash
# More runs of issue 17's own 3D setting at 64³ (batch 2, depth 4, base 16; one run so far, 2026-12-03 08:42 UTC,
# ../2026-12-03_host_memory/ts3d_64.json), with the options of the 64³ base-8 runs, for across_runs.py.
# Run from the repository root on a quiet machine: bash <this file> [FIRST LAST]
set -u
D=$(dirname "$0")
PY=${PY:-.venv/bin/python}
for i in $(seq "${1:-1}" "${2:-3}"); do
  { uptime; "$PY" benchmarks/train_step.py --dims 3 --size 64 --batch 2 --base 16 --torch channels_last,compile \
      --rounds 11 --json "$D/ts3d_64_base16_$i.json"; uptime; } > "$D/ts3d_64_base16_$i.log" 2>&1
done
