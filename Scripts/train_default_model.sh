#!/usr/bin/env bash
# Reproduce the bundled default quality model (CTQualityAssessment/Resources/Models/n2q_default.*):
# simulate the training set from ../shared/data (real anatomy only, never the Mayo pairs), train N2Q on the CPU,
# export it with its manifest entry. Run from the repository root with the project's venv active.
# Usage: Scripts/train_default_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}
SHARP="$DATA/mayo_sharp/L067_FD_3_SHARP_1.CT.0001"
VAL=$(basename "$SHARP".0001.*.IMA)
TEST=$(basename "$SHARP".0002.*.IMA)

# Training: 2 TotalSegmentator volumes and 8 of the 10 chest_sbu patients (16 single chest/abdomen slices; a
# chest_sbu slice's group is its patient, the file name before "_"). Never trained on: chest_sbu patient A056642
# and Mayo L067's sharp slice 1 (validation), chest_sbu patient A098752 and L067's slice 2 (held-out test).
# The Mayo quarter/full-dose pairs are for evaluation only. Kernels: native + noise, sharp, smooth and lung.
ctqa-train simulate --out "$WORK/dataset" \
    --input "$DATA/totalseg/example_ct_dicom" "$DATA/totalseg/example_ct.nii.gz" "$DATA/chest_sbu" \
    "$SHARP".000[12].*.IMA \
    --doses 1 0.75 0.5 0.25 0.1 0.05 --kernels native sharp smooth lung --views 720 --slices-per-volume 10 \
    --seed 0 --split example_ct_dicom=train example_ct.nii=train A002304=train A027284=train A046441=train \
    A048383=train A058062=train A062055=train A067967=train A072894=train A056642=val A098752=test \
    "$VAL=val" "$TEST=test"
ctqa-train maps --data "$WORK/dataset" --out "$WORK/runs/n2q_default" --variant N2Q \
    --steps 6000 --batch 16 --patch 128 --seed 0 --checkpoint-every 1000 --noise-gain 0.5 2 --threads 1 --device cpu
ctqa-train export "$WORK/runs/n2q_default" --name n2q_default --default --reproduce "Scripts/train_default_model.sh"
