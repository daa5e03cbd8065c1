#!/usr/bin/env bash
# Reproduce the bundled denoiser (CTQualityAssessment/Resources/Models/denoise_default.*), the self-supervised
# comparison model and the evaluation table (docs/denoise_evaluation.md): build the simulated-pair dataset from the
# real slices in ../shared/data (doses 5-50 %, native and sharp kernels; the Mayo L506 pairs are kept out for the
# evaluation), train the supervised RED-CNN (3000 steps on patches that show the body, then 1500 steps from there
# on patches drawn anywhere, air around the patient included; the second schedule was kept because its val PSNR
# gain was higher, 3.42 against 3.20 dB) and the Neighbor2Neighbor one (which reads no full-dose image) on the CPU,
# evaluate them on the real Mayo quarter/full-dose pairs beside non-local means and BM3D, and export the supervised
# model. Run from the repository root with the project's venv active.
# Usage: Scripts/train_denoise_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}

ctqa-train denoise-data --out "$WORK/denoise_data" --slices-per-volume 10 \
    --input "$DATA/chest_sbu" "$DATA/totalseg/example_ct_dicom" "$DATA/mayo_sharp"
ctqa-train denoise --data "$WORK/denoise_data" --out "$WORK/denoise_runs/supervised" --steps 3000 --threads 2
ctqa-train denoise --data "$WORK/denoise_data" --out "$WORK/denoise_runs/supervised_air" --steps 1500 --lr 2.5e-4 \
    --min-body 0 --init "$WORK/denoise_runs/supervised/model" --threads 1
ctqa-train denoise --data "$WORK/denoise_data" --out "$WORK/denoise_runs/neighbor2neighbor" \
    --method neighbor2neighbor --steps 3000 --min-body 0.2 --threads 1
ctqa-train denoise-eval --pairs "$DATA/mayo_pairs" --threads 2 \
    --model "$WORK/denoise_runs/supervised_air/model" "$WORK/denoise_runs/supervised/model" \
    "$WORK/denoise_runs/neighbor2neighbor/model" \
    --label "RED-CNN, supervised (bundled)" "RED-CNN, supervised, first schedule only" \
    "RED-CNN, Neighbor2Neighbor (no full-dose data)" --out docs/denoise_evaluation.md
ctqa-train export "$WORK/denoise_runs/supervised_air" --name denoise_default --default \
    --reproduce "Scripts/train_denoise_model.sh"
