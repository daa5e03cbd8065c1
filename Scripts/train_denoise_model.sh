#!/usr/bin/env bash
# Reproduce the bundled denoiser (CTQualityAssessment/Resources/Models/denoise_default.*), the self-supervised
# comparison model and the evaluation table (docs/denoise_evaluation.md): build the simulated-pair dataset from the
# real slices in ../shared/data (doses 5-50 %, native and sharp kernels; the Mayo L506 pairs are kept out for the
# evaluation), train the supervised RED-CNN and the Neighbor2Neighbor one (which reads no full-dose image) on the
# CPU, evaluate both on the real Mayo quarter/full-dose pairs beside non-local means and BM3D, and export the
# supervised model. Run from the repository root with the project's venv active.
# Usage: Scripts/train_denoise_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}

ctqa-train denoise-data --out "$WORK/denoise_data" --slices-per-volume 10 \
    --input "$DATA/chest_sbu" "$DATA/totalseg/example_ct_dicom" "$DATA/mayo_sharp"
for method in supervised neighbor2neighbor; do
    ctqa-train denoise --data "$WORK/denoise_data" --out "$WORK/denoise_runs/$method" --method "$method" \
        --steps 3000 --threads 1 --device cpu
done
ctqa-train denoise-eval --pairs "$DATA/mayo_pairs" --threads 1 \
    --model "$WORK/denoise_runs/supervised/model" "$WORK/denoise_runs/neighbor2neighbor/model" \
    --label "RED-CNN, supervised" "RED-CNN, Neighbor2Neighbor" --out docs/denoise_evaluation.md
ctqa-train export "$WORK/denoise_runs/supervised" --name denoise_default --default \
    --reproduce "Scripts/train_denoise_model.sh"
