#!/usr/bin/env bash
# BIB-AE at angles against Geant4 (issue 18, item 4; docs/bibae_l2lflows.md): showers of a
# model (trained with benchmarks/bibae_g4angles_small.yaml) and of GFlash at the conditions of
# the Geant4 test sets (50 GeV at 0/15/30/45/60 deg, 20 and 90 GeV at 60 deg, phi 0), then one
# 'calogen evaluate' of all of them against the concatenated Geant4 sets, which draws the two
# figures of 2303.18150 (angle_response.png: fitted axis angle per requested angle at 50 GeV;
# visible_energy_60deg.png: visible energy at 60 deg for 20, 50, 90 GeV) and the condition
# table, also with Geant4 put through the model's axis-frame grid (--reference-grid MODEL).
# Usage: bash benchmarks/bibae_g4angles.sh MODEL_DIR OUT_DIR [N]   (N showers per set, 1000)
# Every heavy step runs on core 1 (taskset -c 1, one thread). Files already made are kept.
# Runs the calogen of the current Python (set PYTHONPATH=src to use a checkout's).
set -euo pipefail
MODEL=$1; OUT=$2; N=${3:-1000}
G4=${CALOGEN_G4DATA:-/work/g4data}
RUN=(taskset -c 1 python -m calogen)
mkdir -p "$OUT"
REFS=(); MODELS=(); GFLASH=()
# set name, energy (GeV), theta, phi (deg)
while read -r SET E T P; do
  REFS+=("$G4/$SET.h5"); MODELS+=("$OUT/$SET.bibae.h5"); GFLASH+=("$OUT/$SET.gflash.h5")
  [ -f "$OUT/$SET.bibae.h5" ] || /usr/bin/time -f "$SET bibae: %e s wall, %U s user" \
      "${RUN[@]}" generate --model "$MODEL" --energy "$E" --theta "$T" --phi "$P" \
      -n "$N" --seed 11 -o "$OUT/$SET.bibae.h5" --quiet --threads 1
  [ -f "$OUT/$SET.gflash.h5" ] || "${RUN[@]}" simulate gflash --energy "$E" \
      --theta "$T" --phi "$P" -n "$N" --seed 11 -o "$OUT/$SET.gflash.h5" --quiet
done <<'SETS'
g4_50GeV_t0 50 0 0
g4_50GeV_t15_p0 50 15 0
g4_50GeV_t30_p0 50 30 0
g4_50GeV_t45_p0 50 45 0
g4_50GeV_t60_p0 50 60 0
g4_20GeV_t60_p0 20 60 0
g4_90GeV_t60_p0 90 60 0
SETS
/usr/bin/time -f "evaluate: %e s wall" "${RUN[@]}" evaluate --reference "${REFS[@]}" \
    --reference-label Geant4 --reference-grid "$MODEL" \
    --candidate "${MODELS[@]}" --label "BIB-AE (axis frame)" \
    --candidate "${GFLASH[@]}" --label GFlash -n "$N" --no-fpd-kpd \
    -o "$OUT/report" --overwrite --quiet
python benchmarks/bibae_angles.py g4-table "$OUT/report/metrics.json"
# W1 table and classifier AUC at one condition (50 GeV, 30 deg, phi 0), as
# scripts/angles_model/evaluate.sh does for the CaloClouds II models (docs/angles.md)
/usr/bin/time -f "evaluate 30 deg: %e s wall" "${RUN[@]}" evaluate \
    --reference "$G4/g4_50GeV_t30_p0.h5" --reference-label "Geant4 (g4_50GeV_t30_p0)" \
    --candidate "$OUT/g4_50GeV_t30_p0.bibae.h5" --label "BIB-AE (axis frame)" \
    --candidate "$OUT/g4_50GeV_t30_p0.gflash.h5" --label GFlash -n "$N" --no-fpd-kpd \
    -o "$OUT/g4_50GeV_t30_p0" --overwrite --quiet
