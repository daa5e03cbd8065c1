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

# 2 TotalSegmentator volumes for training; the 2 sharp-kernel slices of Mayo patient L067 (never trained on):
# one for validation, one for the held-out test split.
ctqa-train simulate --out "$WORK/dataset" \
    --input "$DATA/totalseg/example_ct_dicom" "$DATA/totalseg/example_ct.nii.gz" "$SHARP".000[12].*.IMA \
    --doses 1 0.75 0.5 0.25 0.1 0.05 --kernels native sharp smooth --views 720 --slices-per-volume 20 --seed 0 \
    --split example_ct_dicom=train example_ct.nii=train "$VAL=val" "$TEST=test"
ctqa-train maps --data "$WORK/dataset" --out "$WORK/runs/n2q_default" --variant N2Q \
    --steps 6000 --batch 16 --patch 128 --seed 0 --checkpoint-every 1000 --noise-gain 0.5 2 --threads 1 --device cpu
ctqa-train export "$WORK/runs/n2q_default" --name n2q_default --default --reproduce "Scripts/train_default_model.sh"
