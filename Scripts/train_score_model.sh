#!/usr/bin/env bash
# Reproduce the bundled MD-IQA score network on the physical grid (CTQualityAssessment/Resources/Models/score_mdiqa.*):
# the score dataset simulated on 0.7 mm canvases centred on the body (chest_sbu, Mayo L067, the TotalSegmentator
# DICOM series; not L506, the reader study's patient), 1500 steps of MD-IQA with the distribution head, 3000 more at
# half the learning rate, then the export (not as the default: the physics-feature score won the real-data table).
# About 30 minutes on 2 CPU cores. The ablation of docs/score_ablation.md was made on the old whole-slice convention
# (git history before December 2026). Run from the repository root with the project's venv active.
# Usage: Scripts/train_score_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}

ctqa-train score-data --grid-mm 0.7 --out "$WORK/score_grid_data" \
    --input "$DATA/chest_sbu" "$DATA/mayo_sharp" "$DATA/totalseg/example_ct_dicom"
ctqa-train score --data "$WORK/score_grid_data" --out "$WORK/score_runs/mdiqa-grid" --backbone mdiqa \
    --head distribution --steps 1500 --threads 2
ctqa-train score --data "$WORK/score_grid_data" --out "$WORK/score_runs/mdiqa-grid-long" --backbone mdiqa \
    --head distribution --steps 3000 --lr 5e-4 --init "$WORK/score_runs/mdiqa-grid/model" --threads 2
ctqa-train export "$WORK/score_runs/mdiqa-grid-long" --name score_mdiqa --reproduce "Scripts/train_score_model.sh"
