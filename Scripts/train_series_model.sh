#!/usr/bin/env bash
# Reproduce the bundled series model (CTQualityAssessment/Resources/Models/series_default.*): simulate series of
# real anatomy from ../shared/data with the "acquire" noise model (one photon budget for every kernel), train the
# Chest CT-IQA multitask network on the CPU, fit its physics classifier and eq. 4 score, evaluate on held-out
# patients and export it with its manifest entry. Run from the repository root with the project's venv active.
# Usage: Scripts/train_series_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}

# Every chest_sbu slice is its own source (split by patient: three patients held out for the test, one for
# validation); both TotalSegmentator volumes train (all slices, so that neighbours are adjacent for 3D stacks).
SPLITS=()
for file in "$DATA"/chest_sbu/*.dcm; do
    name=$(basename "$file")
    case ${name%%_*} in
        A046441 | A067967 | A098752) SPLITS+=("$name=test") ;;
        A072894) SPLITS+=("$name=val") ;;
        *) SPLITS+=("$name=train") ;;
    esac
done
ctqa-train simulate --out "$WORK/series_acquire" \
    --input "$DATA"/chest_sbu/*.dcm "$DATA/totalseg/example_ct.nii.gz" "$DATA/totalseg/example_ct_dicom" \
    --doses 1 0.7 0.3 0.15 --kernels native smooth lung --slices-per-volume 200 --noise-model acquire --seed 10 \
    --split "${SPLITS[@]}" example_ct.nii=train example_ct_dicom=train
ctqa-train series --data "$WORK/series_acquire" --out "$WORK/runs/series_default" --steps 4000 --batch 24 --seed 0 --threads 1
ctqa-train export "$WORK/runs/series_default" --name series_default --default \
    --reproduce "Scripts/train_series_model.sh"
ctqa-train evaluate-series --data "$WORK/series_acquire" --model CTQualityAssessment/Resources/Models/series_default \
    --out docs/series_evaluation.md
# The window model of the physics classifier: refitted on real slices whose DICOM kernel names the class (issue 22).
ctqa-train series-real --data "$DATA" --card CTQualityAssessment/Resources/Models/series_default.json \
    --out docs/series_real.md --refit
