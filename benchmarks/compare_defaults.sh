#!/usr/bin/env bash
# The shipped default against the normal-incidence default of the day issue 15 was filed
# (git e9725aa^: its model files and its own code), side by side on one core: `calogen bench`
# alternating, each at batch 100 and batch 1; then one DDML call of each (both exported with
# today's code: the old code had no DDML flavour). Issue 15's speed bounds read "2.0 ms per
# shower at batch 100 and 3.0 ms at batch 1, i.e. no slower than today's normal-incidence
# default": this measures both halves in the same minutes.
# Usage: bash benchmarks/compare_defaults.sh [CORE (default 0)] [ROUNDS (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
CORE=${1:-0}; ROUNDS=${2:-3}
OLD=$(mktemp -d); trap 'git worktree remove --force "$OLD/tree" >/dev/null 2>&1; rm -rf "$OLD"' EXIT
git worktree add --detach "$OLD/tree" e9725aa^ >/dev/null 2>&1
ms() { python -c "import json,sys; d=json.load(sys.stdin); print(f\"{d['ms_per_shower_median']:.3f} ms ({d['mean_points_per_shower']:.0f} points)\")"; }
for r in $(seq "$ROUNDS"); do
  for b in 100 1; do
    n=$([ "$b" = 100 ] && echo 300 || echo 200)
    new=$(taskset -c "$CORE" calogen bench --model default --threads 1 --batch "$b" --num "$n" \
        --repeats 3 --theta 0 60 --phi 0 360 --json | ms)
    old=$(cd "$OLD" && PYTHONPATH="$OLD/tree/src" taskset -c "$CORE" python -m calogen bench \
        --model default --threads 1 --batch "$b" --num "$n" --repeats 3 --json | ms)
    echo "$(date +%H:%M:%S) round $r batch $b: default (theta 0-60 deg) $new | issue-15 default (0 deg, its code) $old"
  done
done
calogen export --model default --format ddml -o "$OLD/new.pt" --overwrite > /dev/null
calogen export --model "$OLD/tree/src/calogen/default_model" --format ddml -o "$OLD/old.pt" --overwrite > /dev/null
taskset -c "$CORE" python benchmarks/ddml_call.py "$OLD/new.pt" "$OLD/old.pt" --calls 500
