#!/usr/bin/env bash
# Rebuild, ship and evaluate the default model (CaloClouds II (CM), small widths).
# Usage: bash scripts/default_model/build.sh [RUNS_DIR]   (about 45 min on one CPU core)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${CALOGEN_SHARED_DATA:-../shared/data}/g4_photons_10-90GeV_train.h5
RUNS=${1:-runs}
mkdir -p "$RUNS"

# 1. teacher (EDM) on showers 0-8999, then consistency distillation to one step
#    (--no-corrections: the shipped model's corrections were fitted by the separate command
#    below with seed 0; 'calogen train caloclouds2-cm --config small -n 9000 --seed 7' runs
#    the same recipe in one command, fitting them with the run's seed)
calogen train caloclouds2 --config scripts/default_model/teacher.yaml --data "$DATA" \
    --out "$RUNS/default_teacher" --seed 7 --threads 1 --no-corrections
calogen distill --teacher "$RUNS/default_teacher" --config scripts/default_model/distill.yaml \
    --data "$DATA" --out "$RUNS/default_student" --seed 7 --threads 1 --no-corrections
# radial quantile correction, then the occupancy correction (CaloClouds section 3.3, refined in
# closed loop), both from the first 1,000 training showers
calogen fit-occupancy --model "$RUNS/default_student" --data "$DATA" --showers 1000 --seed 0 \
    --threads 1

# 2. ship it: the model folder's two files go into the package
cp "$RUNS/default_student/model.json" "$RUNS/default_student/model.safetensors" \
    "$RUNS/default_student/occupancy.json" src/calogen/default_model/

# 3. held-out test split (showers 9000-9999) and the evaluation beside GFlash
python - "$DATA" "$RUNS/g4_test_split.h5" <<'PY'
import sys
from calogen.data.io import read_showers, write_showers
write_showers(sys.argv[2], read_showers(sys.argv[1], 9000, 10000), overwrite=True,
              attrs={"content": "showers 9000-9999 of g4_photons_10-90GeV_train.h5 (test split)"})
PY
calogen generate --energy 10 90 --num 1000 --seed 11 -o "$RUNS/default_1000.h5" --overwrite
calogen simulate gflash --energy 10 90 --num 1000 --seed 11 -o "$RUNS/gflash_1000.h5" --overwrite
calogen evaluate --reference "$RUNS/g4_test_split.h5" --reference-label "Geant4 (test split)" \
    --candidate "$RUNS/default_1000.h5" --label "default (CaloClouds II CM)" \
    --candidate "$RUNS/gflash_1000.h5" --label GFlash \
    -o docs/default_model_evaluation --overwrite
