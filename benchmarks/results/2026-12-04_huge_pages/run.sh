#!/bin/bash
# Fresh processes, conditions alternating: default (NumPy marks its own large arrays), none
# (NUMPY_MADVISE_HUGEPAGE=0: nothing is marked, no huge pages), all (glibc.malloc.hugetlb=1: glibc marks all
# the memory it takes from the system). Run from the repository root on a quiet machine:
#   bash <this file> REPEATS ROUNDS
set -u
D=$(dirname "$0")
PY=${PY:-.venv/bin/python}
for rep in $(seq 1 "$1"); do
  CONDITION=default "$PY" "$D/pages.py" "$2"
  CONDITION=none NUMPY_MADVISE_HUGEPAGE=0 "$PY" "$D/pages.py" "$2"
  CONDITION=all GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$PY" "$D/pages.py" "$2"
done
