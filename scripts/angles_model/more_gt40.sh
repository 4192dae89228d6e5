#!/usr/bin/env bash
# angle-aware CC2 (CM), small-angles recipe, on the shared 15k showers + the GPU-machine angled showers with theta > 40 deg
set -e
cd /work/main
C=/work/runs/s3/data/merged_gt40.npz; R=/work/runs/s3/more_gt40; D=/work/shared/data
mkdir -p $R
[ -f $R/teacher.done ] || { calogen train caloclouds2 --config small-angles --data $C -o $R/teacher --seed 7 --threads 1 --no-corrections --quiet $( [ -d $R/teacher/checkpoints ] && echo --resume ) && touch $R/teacher.done; }
[ -f $R/student.done ] || { calogen distill --teacher $R/teacher --config small-angles --data $C -o $R/student --seed 7 --threads 1 --no-corrections --quiet $( [ -d $R/student/checkpoints ] && echo --resume ) && touch $R/student.done; }
calogen fit-occupancy --model $R/student --data $D/g4_photons_10-90GeV_train.h5 $D/g4_photons_angles_train.h5 -n 3000 --seed 7 --quiet
touch $R/all.done
# The cache was made from the shared cache and the GPU-machine caches (theta > 40 deg selected):
#   python -c "see docs/angles.md: read_training_cache, select features['theta_deg'] > 40,
#   training_cache._save, then merge_training_caches([shared_9k_6k.npz, angled_gt40_*.npz])"
