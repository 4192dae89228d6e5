#!/usr/bin/env bash
# Rebuild, ship and evaluate the default model: the angle-aware CaloClouds II (CM), small
# widths, one network evaluation per shower (issue 15; docs/default_model.md, docs/angles.md).
# Usage: bash scripts/default_model/build.sh [RUNS_DIR]
#   about 45 min of training on one CPU core; run again after a kill, it continues.
# The model of 2026-11-23 (normal incidence only) was built by this script's earlier version
# (git log -- scripts/default_model/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${CALOGEN_SHARED_DATA:-../shared/data}
DATA=$SHARED/g4_photons_10-90GeV_train.h5
ANGLES=$SHARED/g4_photons_angles_train.h5
RUNS=${1:-runs}
mkdir -p "$RUNS"

# 1.-2. the README's "Train your own" command, as written (seed 0): the angle-aware teacher
#    (EDM, 25,000 iterations), its consistency distillation (40,000 iterations) and the
#    corrections (radial map by layers relative to each shower's depth, occupancy fitted in
#    logarithms, axis shift, each layer's core spread evenly in azimuth, the halo in clumps
#    of two, the random axis tilt correlated with the centre of gravity (since 2026-12-01),
#    and first of all the depth stretch of the Shower Flow's profiles (2026-12-01, later);
#    four polar-angle classes equal in tan theta, interpolated in theta; fitted on
#    the first 3,000 showers of each file) on showers 0-8,999 of the
#    normal-incidence file and the 6,000 of the angles file; about 45 min of one core.
#    The default of 2026-11-30 morning (17,161 showers incl. 2,161 made with the Geant4
#    tool above 40 deg, 80,000 distillation iterations): this script's earlier version
#    (git log -- scripts/default_model/build.sh).
R=$RUNS/default_angles
calogen train caloclouds2-cm --config small-angles --data "$DATA" "$ANGLES" -n 9000 \
    -o "$R/cm" --seed 0 --threads 1

# 3. ship it: the model folder's files go into the package
cp "$R/cm/model.json" "$R/cm/model.safetensors" "$R/cm/occupancy.json" src/calogen/default_model/

# 4. held-out test split (showers 9000-9999) and the evaluation beside GFlash
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
# the fixed-energy and fixed-angle Geant4 test sets (docs/angles.md):
#   WHICH=model bash scripts/angles_model/evaluate.sh default "default" OUT split g4_10GeV_t0 ...
