#!/bin/bash
# Fresh processes in the order default none none default (repeated), so that a steady drift of the machine's
# speed falls on both conditions alike: default (NumPy marks its large arrays for huge pages) against none
# (NUMPY_MADVISE_HUGEPAGE=0). Run from the repository root on a quiet machine:
#   bash <this file> REPEATS ROUNDS CALLS
set -u
D=$(dirname "$0")
PY=${PY:-.venv/bin/python}
for rep in $(seq 1 "$1"); do
  for condition in default none none default; do
    if [ "$condition" = none ]; then export NUMPY_MADVISE_HUGEPAGE=0; else unset NUMPY_MADVISE_HUGEPAGE; fi
    CONDITION=$condition "$PY" "$D/pages.py" "$2" "$3"
  done
done
