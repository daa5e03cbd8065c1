#!/usr/bin/env bash
# Train the seven Noise2Quality ablations with one equal budget each (same data, steps, batch, patch, seed, one CPU
# thread); docs/n2q_evaluation.md names the evaluate-maps command that made its table from these runs.
# Needs the dataset of Scripts/train_default_model.sh in WORK_DIR/dataset. Run from the repository root.
# Usage: Scripts/evaluate_variants.sh [WORK_DIR (default .work)] [STEPS (default 1000)]
set -euo pipefail
WORK=${1:-.work}
STEPS=${2:-1000}
for VARIANT in AE RED-CNN U-Net U-HPF U-Con U-SSL N2Q; do
    RUN="$WORK/runs/variants/$VARIANT"
    ctqa-train maps --data "$WORK/dataset" --out "$RUN" --variant "$VARIANT" \
        --steps "$STEPS" --batch 16 --patch 128 --seed 0 --checkpoint-every 500 --threads 1 --device cpu
done
