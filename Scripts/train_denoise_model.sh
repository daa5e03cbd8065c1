#!/usr/bin/env bash
# Reproduce the bundled denoiser (CTQualityAssessment/Resources/Models/denoise_default.*), the comparison models and
# the evaluation table (docs/denoise_evaluation.md): build the simulated-pair dataset from the real slices in
# ../shared/data (doses 5-50 %, native and sharp kernels; the Mayo L506 pairs are kept out for the evaluation), train
# the supervised RED-CNN in a chain of schedules, each started from the last (3000 steps on patches that show the
# body; 1500 steps on patches drawn anywhere, air around the patient included; 5000 more at lr 2.5e-4; 4000 more at
# lr 1.25e-4; each was kept because its val PSNR gain was higher), the same with a non-local block from the second
# schedule (the comparison), and the Neighbor2Neighbor one (which reads no full-dose image), all on the CPU; evaluate
# them on the real Mayo quarter/full-dose pairs beside non-local means and BM3D, and export the supervised model.
# Run from the repository root with the project's venv active. About 4 h on a 2-core CPU.
# Usage: Scripts/train_denoise_model.sh [WORK_DIR (default .work)] [DATA_DIR (default ../shared/data)]
set -euo pipefail
WORK=${1:-.work}
DATA=${2:-../shared/data}
RUNS="$WORK/denoise_runs"

ctqa-train denoise-data --out "$WORK/denoise_data" --slices-per-volume 10 \
    --input "$DATA/chest_sbu" "$DATA/totalseg/example_ct_dicom" "$DATA/mayo_sharp"
train() { ctqa-train denoise --data "$WORK/denoise_data" "$@"; }
train --out "$RUNS/supervised" --steps 3000 --threads 2
train --out "$RUNS/supervised_air" --steps 1500 --lr 2.5e-4 --min-body 0 --init "$RUNS/supervised/model" --threads 1
train --out "$RUNS/supervised_long" --steps 5000 --lr 2.5e-4 --min-body 0 --init "$RUNS/supervised_air/model" \
    --threads 1 --checkpoint-every 1000
train --out "$RUNS/nonlocal_long" --steps 5000 --lr 2.5e-4 --min-body 0 --init "$RUNS/supervised_air/model" \
    --nonlocal-window 8 --threads 1 --checkpoint-every 1000
train --out "$RUNS/supervised_longer" --steps 4000 --lr 1.25e-4 --min-body 0 --init "$RUNS/supervised_long/model" \
    --threads 2 --checkpoint-every 1000
train --out "$RUNS/neighbor2neighbor" --method neighbor2neighbor --steps 3000 --min-body 0.2 --threads 1
ctqa-train denoise-eval --pairs "$DATA/mayo_pairs" --threads 2 --val-data "$WORK/denoise_data" --self-ensemble \
    --model "$RUNS/supervised_longer/model" "$RUNS/nonlocal_long/model" "$RUNS/supervised_long/model" \
    "$RUNS/supervised_air/model" "$RUNS/neighbor2neighbor/model" \
    --label "RED-CNN, supervised (bundled)" "RED-CNN + non-local, supervised (5000 steps less)" \
    "RED-CNN, supervised, 4000 steps less" "RED-CNN, supervised, earlier bundle (9000 steps less)" \
    "RED-CNN, Neighbor2Neighbor (no full-dose data)" --out docs/denoise_evaluation.md
ctqa-train export "$RUNS/supervised_longer" --name denoise_default --default \
    --reproduce "Scripts/train_denoise_model.sh"
