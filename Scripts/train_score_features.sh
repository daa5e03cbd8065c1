#!/usr/bin/env bash
# The bundled physics-feature 0-4 score (score_features): fitted on the real Mayo dose pairs of ../shared/data
# (train L096, L143, L192; validation L286), about a minute on 2 CPU cores; then the real-data table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
MODELS=CTQualityAssessment/Resources/Models
ctqa-train score-features --mayo "$DATA/mayo_ldct" --val-patients L286 --out "$MODELS/score_features"
python - <<'PY'
import json
from CTQualityTraining.export import register
from ctqa.models.registry import MODELS_DIR
card = json.loads((MODELS_DIR / "score_features.json").read_text())
register(MODELS_DIR, "score_features", card, default=True)
PY
# the old whole-slice MD-IQA (bundled as score_default until December 2026) beside them, when a copy is at hand:
# git show 3617127:CTQualityAssessment/Resources/Models/score_default.json (and .safetensors) into .work/old_score_default/
OLD=.work/old_score_default/score_default.json
ctqa-train validate-real --data "$DATA" --score-model score_features score_mdiqa $( [ -f $OLD ] && echo $OLD ) \
    --hybrid --out docs/real_validation.md
