#!/usr/bin/env bash
# Evaluate a model folder (default: the shipped model) and GFlash against the Geant4 test sets
# at normal incidence and at angles (1,000 showers each, seeds never used for training).
# Usage: bash scripts/angles_model/evaluate.sh MODEL_DIR|default LABEL OUT_DIR [SETS...]
# SETS: names of /work/g4data files without .h5 (default: the 50 GeV sets of issue 15) or
# 'split' (showers 9000-9999 of g4_photons_10-90GeV_train.h5, E uniform 10-90 GeV).
# WHICH=both (default) | model | gflash: evaluate both candidates in one report, or one alone
# (reports OUT/SET, OUT/SET.model or OUT/SET.gflash; same seed, so the same floor).
set -euo pipefail
MODEL=$1; LABEL=$2; OUT=$3; shift 3
G4=${CALOGEN_G4DATA:-/work/g4data}
SETS=${*:-g4_50GeV_t0 g4_50GeV_t30_p0 g4_50GeV_t30_p90 g4_50GeV_t60_p0 g4_50GeV_t60_p135}
mkdir -p "$OUT"
for SET in $SETS; do
  if [ "$SET" = split ]; then
    REF=$OUT/g4_test_split.h5
    [ -f "$REF" ] || calogen merge "${CALOGEN_SHARED_DATA:-/work/shared/data}/g4_photons_10-90GeV_train.h5" \
        --range 9000 10000 -o "$REF" --quiet
    ENERGY=(10 90); ANGLES=()
  else
    REF=$G4/$SET.h5
    [ -f "$REF" ] || { echo "skip $SET (no $REF yet)"; continue; }
    E=$(echo "$SET" | sed -E 's/g4_([0-9]+)GeV.*/\1/'); ENERGY=($E)
    T=$(echo "$SET" | sed -nE 's/.*_t([0-9]+).*/\1/p'); P=$(echo "$SET" | sed -nE 's/.*_p([0-9]+).*/\1/p')
    ANGLES=(--theta "${T:-0}" --phi "${P:-0}")
  fi
  WHICH=${WHICH:-both}
  # same energies as the reference for the 10-90 split; fixed energy and angles otherwise
  [ "$WHICH" = gflash ] || [ -f "$OUT/$SET.model.h5" ] || calogen generate --model "$MODEL" --energy "${ENERGY[@]}" "${ANGLES[@]}" \
      -n 1000 --seed 11 -o "$OUT/$SET.model.h5" --quiet --threads 1
  [ "$WHICH" = model ] || [ -f "$OUT/$SET.gflash.h5" ] || calogen simulate gflash --energy "${ENERGY[@]}" "${ANGLES[@]}" \
      -n 1000 --seed 11 -o "$OUT/$SET.gflash.h5" --quiet
  CANDIDATES=(); DIR=$OUT/$SET
  [ "$WHICH" = gflash ] || CANDIDATES+=(--candidate "$OUT/$SET.model.h5" --label "$LABEL")
  [ "$WHICH" = model ] || CANDIDATES+=(--candidate "$OUT/$SET.gflash.h5" --label GFlash)
  [ "$WHICH" = both ] || DIR=$OUT/$SET.$WHICH
  calogen evaluate --reference "$REF" --reference-label "Geant4 ($SET)" "${CANDIDATES[@]}" \
      --no-fpd-kpd -o "$DIR" --overwrite --quiet
done
