#!/usr/bin/env bash
# Angle-aware CaloClouds II (CM), 'small-angles' recipe, trained from a training cache, then its
# corrections fitted on the shared shower files (docs/angles.md, "Also tried"). Resumable.
#   CACHE=/work/runs/s3/data/merged_21600.npz OUT=/work/runs/s3/more_data FIT=1000 bash more_data.sh
#     (shared 9k normal + 6k angled, plus the 6,600 angled showers made on the GPU machine's CPUs)
#   CACHE=/work/runs/s3/data/merged_gt40.npz OUT=/work/runs/s3/more_gt40 FIT=3000 bash more_data.sh
#     (the same shared showers plus the 2,161 of those with theta > 40 deg: select
#     features['theta_deg'] > 40 from each read_training_cache, write with training_cache._save,
#     then merge_training_caches with the shared cache)
#   CONFIG=scripts/angles_model/narrow.yaml ...: another teacher config (default small-angles)
#   EDGES="0.5 23.4 40.9 52.4" ...: the angle classes of the corrections (fit-occupancy --angle-edges)
set -e
cd "$(dirname "$0")/../.."
C=${CACHE:?training cache}; R=${OUT:?output folder}; N=${FIT:-1000}; K=${CONFIG:-small-angles}
D=${CALOGEN_SHARED_DATA:-/work/shared/data}
mkdir -p "$R"
[ -f "$R/teacher.done" ] || { calogen train caloclouds2 --config "$K" --data "$C" -o "$R/teacher" --seed 7 --threads 1 --no-corrections --quiet $( [ -d "$R/teacher/checkpoints" ] && echo --resume ) && touch "$R/teacher.done"; }
[ -f "$R/student.done" ] || { calogen distill --teacher "$R/teacher" --config small-angles --data "$C" -o "$R/student" --seed 7 --threads 1 --no-corrections --quiet $( [ -d "$R/student/checkpoints" ] && echo --resume ) && touch "$R/student.done"; }
calogen fit-occupancy --model "$R/student" --data "$D/g4_photons_10-90GeV_train.h5" "$D/g4_photons_angles_train.h5" -n "$N" --seed 7 --quiet ${EDGES:+--angle-edges $EDGES}
touch "$R/all.done"
