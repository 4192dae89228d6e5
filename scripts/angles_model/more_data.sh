#!/usr/bin/env bash
# angle-aware CC2 (CM), 'small-angles' recipe, on 21,600 showers (training cache: shared 9k normal
# + 6k angled, plus 6,600 angled showers made on the GPU machine's CPUs, seeds 5001-19005)
set -e
cd /work/main
C=/work/runs/s3/data/merged_21600.npz; R=/work/runs/s3/more_data; D=/work/shared/data
mkdir -p $R
[ -f $R/teacher.done ] || { calogen train caloclouds2 --config small-angles --data $C -o $R/teacher --seed 7 --threads 1 --no-corrections --quiet $( [ -d $R/teacher/checkpoints ] && echo --resume ) && touch $R/teacher.done; }
[ -f $R/student.done ] || { calogen distill --teacher $R/teacher --config small-angles --data $C -o $R/student --seed 7 --threads 1 --no-corrections --quiet $( [ -d $R/student/checkpoints ] && echo --resume ) && touch $R/student.done; }
calogen fit-occupancy --model $R/student --data $D/g4_photons_10-90GeV_train.h5 $D/g4_photons_angles_train.h5 -n 1000 --seed 7 --quiet
touch $R/all.done
