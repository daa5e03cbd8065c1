#!/usr/bin/env bash
# Reproduce the bundled global-score model (CTQualityAssessment/Resources/Models/score_default.*) and the ablation
# table (docs/score_ablation.md): build the score dataset from the real slices in ../shared/data (doses x view
# counts, surrogate 0-4 score, unlabelled pool), train the six ablation runs on the CPU (five supervised, then
# MD-IQA's semi-supervised step with the five as teachers), evaluate them on the held-out patients and export the
# supervised MD-IQA model (the semi-supervised one read half dose 0.03 above full dose on a held-out slice; see
# docs/score_ablation.md). Run from the repository root with the project's venv active.
# Usage: Scripts/train_score_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}

ctqa-train score-data --out "$WORK/score_data" \
    --input "$DATA/chest_sbu" "$DATA/mayo_pairs" "$DATA/mayo_sharp" "$DATA/totalseg/example_ct_dicom" \
    --unlabelled "$DATA/totalseg/example_ct.nii.gz"
ctqa-train score-ablation --data "$WORK/score_data" --runs "$WORK/score_runs" --steps 1500 --threads 1 \
    --out docs/score_ablation.md
ctqa-train export "$WORK/score_runs/mdiqa-distribution" --name score_default --default \
    --reproduce "Scripts/train_score_model.sh"
