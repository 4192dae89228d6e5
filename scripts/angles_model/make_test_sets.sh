#!/usr/bin/env bash
# The fixed-energy, fixed-angle Geant4 test sets of docs/angles.md and docs/default_model.md
# (1,000 photon showers each, seeds never used for training), made with the Geant4 tool beside
# the project (../shared/tools/geant4; needs `pip install calzone==1.2.2`). The same command
# and seed give the same file: a set lost with a machine is remade bit for bit (checked on
# 2026-11-30 for all seven: the first 500 showers' mean visible energy equals docs/gflash.md's,
# and the default's evaluation reproduces docs/default_model.md's numbers).
# Usage: bash scripts/angles_model/make_test_sets.sh [OUT_DIR (default /work/g4data)] [CORE]
#   about 45 min of one core in all (0.07 / 0.36 / 0.6 s per shower at 10 / 50 / 90 GeV);
#   run two copies with different CORE and SETS to share the work, e.g.
#   SETS="g4_50GeV_t0 g4_50GeV_t30_p0 g4_50GeV_t60_p0" bash ... /work/g4data 1
#   a killed run continues where it stopped when run again.
set -euo pipefail
OUT=${1:-/work/g4data}; CORE=${2:-0}
TOOL=${CALOGEN_G4_TOOL:-$(dirname "$0")/../../../shared/tools/geant4}/make_dataset.py
mkdir -p "$OUT"
# name: energy (GeV), theta (deg), phi (deg), seed
ALL="g4_10GeV_t0:10:0:0:2011 g4_50GeV_t0:50:0:0:2002 g4_90GeV_t0:90:0:0:2012
g4_50GeV_t30_p0:50:30:0:2001 g4_50GeV_t30_p90:50:30:90:2013
g4_50GeV_t60_p0:50:60:0:2005 g4_50GeV_t60_p135:50:60:135:2015"
for entry in $ALL; do
  IFS=: read -r name e t p seed <<<"$entry"
  if [ -n "${SETS:-}" ] && [[ " $SETS " != *" $name "* ]]; then continue; fi
  [ -f "$OUT/$name.h5" ] && continue
  taskset -c "$CORE" python "$TOOL" -n 1000 --emin "$e" --emax "$e" --theta-min "$t" \
      --theta-max "$t" --phi-min "$p" --phi-max "$p" --seed "$seed" -o "$OUT/$name.h5"
done
