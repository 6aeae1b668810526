#!/usr/bin/env bash
# Quick 3D training (configs/subcortical_3d.py, 60 steps, 8 subjects, whole run) before (BEFORE_TREE: a checkout
# of fb3e52c, numpy batches handed to the step) and after (this checkout: batches copied in the prefetch thread),
# alternating, full and frozen encoder. Whole-process wall seconds and minor faults from /usr/bin/time.
# Usage: BEFORE_TREE=/tmp/before [SIDES="after before"] bash quick3d.sh ROUNDS > quick3d.log
set -u
here=$(cd "$(dirname "$0")" && pwd); after_tree=$(cd "$here/../../.." && pwd)
for round in $(seq 1 "${1:-2}"); do
  for side in ${SIDES:-before after}; do
    tree=$after_tree; [ "$side" = before ] && tree=$BEFORE_TREE
    for regime in full frozen; do
      extra=(); [ "$regime" = frozen ] && extra=(--freeze encoder)
      work=$(mktemp -d)
      /usr/bin/time -f "round $round $side $regime: %e s wall, %R minor faults" \
        env PYTHONPATH="$tree" python -m jaxfcn train --config "$tree/configs/subcortical_3d.py" \
        --set train.steps=60 --set data.train_subjects=8 "${extra[@]}" --workdir "$work/run" --no-progress \
        > /dev/null 2> "$work/err" || { echo "round $round $side $regime: failed"; tail -3 "$work/err"; }
      grep "round $round" "$work/err"; rm -rf "$work"
    done
  done
done
