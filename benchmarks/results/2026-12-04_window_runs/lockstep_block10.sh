#!/bin/bash
# Runs of the 1 mm sliding window timed batch by batch in blocks of 10 batches (two so far, 04:23–04:38 UTC), so
# that across_runs.py has the six runs a 95 % interval over runs needs.
# Run from the repository root on a quiet machine: bash <this file> FIRST LAST
set -u
D=$(dirname "$0")
PY=${PY:-.venv/bin/python}
for i in $(seq "$1" "$2"); do
  { uptime; "$PY" benchmarks/sliding_window.py --torch channels_last --rounds 1 --call-rounds 0 \
      --lockstep-rounds 7 --lockstep-block 10 --json "$D/lockstep_block10_1mm_$i.json"; uptime; } \
    > "$D/lockstep_block10_1mm_$i.log" 2>&1
done
