#!/usr/bin/env bash
# More angled Geant4 photon showers for training (issues 15 and 16: the Shower Flow's depth
# spread and 40-60 deg are where the 6,000 shared angled showers are thinnest), made with the
# Geant4 tool beside the project (../shared/tools/geant4; needs `pip install calzone==1.2.2`):
# chunks of 500 showers, E uniform 10-90 GeV, theta uniform 0-60 deg, phi 0-360 deg, chunk k
# with seed 5001 + k (never used for the shared files, seed 301 for the angles file, or for
# the test sets, seeds 2001-2015); then joined into one file by `calogen merge`.
# Usage: bash scripts/angles_model/make_more_training.sh OUT_DIR FIRST LAST [CORE]
#   about 0.32 s per shower on one core of the development machine (9,400 showers an hour);
#   a killed run continues with the chunks not yet made when run again. Join:
#   calogen merge OUT_DIR/angles_more_*.h5 -o OUT_DIR/g4_photons_angles_more.h5
# Session s14 (2026-12-01) made chunks 0-23 and 60-65 (15,000 showers) this way into
# /work/g4data/train_more (g4_photons_angles_more.h5 joined; not in the repository).
set -euo pipefail
OUT=${1:?output folder}; FIRST=${2:?first chunk}; LAST=${3:?last chunk}; CORE=${4:-0}
TOOL=${CALOGEN_G4_TOOL:-$(dirname "$0")/../../../shared/tools/geant4}/make_dataset.py
mkdir -p "$OUT"
for c in $(seq "$FIRST" "$LAST"); do
  out=$OUT/angles_more_$(printf %03d "$c").h5
  [ -f "$out" ] && continue
  taskset -c "$CORE" python "$TOOL" -n 500 --emin 10 --emax 90 --theta-min 0 --theta-max 60 \
      --phi-min 0 --phi-max 360 --seed $((5001 + c)) -o "$out.partial.h5" \
      --note "500 photon showers, E uniform 10-90 GeV, theta uniform 0-60 deg, phi 0-360 deg, seed $((5001 + c)); for training"
  mv "$out.partial.h5" "$out"
  rm -rf "$out.partial.h5.parts"
done
