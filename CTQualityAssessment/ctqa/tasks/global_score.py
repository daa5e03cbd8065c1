"""Task global_score: the 0-4 image quality score of a CT volume on the LDCTIQAC2023 scale (4 = best).

A learned score network (``ctqa.models.score_network``: MD-IQA / TFKT family, registry task "global_score") scores
each axial slice in the challenge's display window W350/L40 (-135..215 HU, SCORE_WINDOW_HU), whatever the input's
scaling: an LDCTIQAC2023 image read with ``--scaling ldctiqac2023`` is that window already, an HU volume is clipped
to it. The network predicts multi-scale score distributions; a slice's score is their decoded peak and its SD their
spread (MD-IQA), both mapped through the model card's calibration when it has one.

Only slices that show the body (at least one body voxel of the physics pass) are scored; the volume's score is the
mean of their scores, the worst decile the mean of the worst 10 % of them (at least one slice), and the SD the mean
of their SDs: the typical uncertainty of one slice's score, not a confidence interval of the mean.

A physics-feature score model (``ctqa.models.feature_score``: card backbone "physics-features") measures noise and
noise texture per slice on a fixed physical grid instead and needs neither torch nor timm; it also says when an
input lies outside its domain (GlobalScore.domain_notes).

torch (and timm) are imported only when a network score model runs; without an installed model the score is skipped
with a note (``skipped_note``), never an error.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from ctqa.errors import InputError
from ctqa.models import registry
from ctqa.models.feature_score import domain_notes, is_feature_card, load_feature_model, slice_features
from ctqa.models.registry import DEFAULT_MODEL, ModelSpec
from ctqa.physics.noise import NoiseAnalysis
from ctqa.results import SCORE_SCALE, GlobalScore
from ctqa.slabs import ProgressCallback
from ctqa.volume import CTVolume

TASK = "global_score"
#: --score-model value that skips the score without a note.
NO_SCORE_MODEL = "none"
#: Share of the scored slices whose mean is the worst decile.
WORST_FRACTION = 0.1
#: What a score model needs beyond the core (pip install "ctqa[learned]"; in Slicer, the PyTorch extension and
#: Resources/requirements-learned.txt).
LEARNED_PACKAGES = ("torch", "timm", "safetensors")
NOT_INSTALLED_NOTE = (
    "no global-score model is installed: the 0-4 quality score is not reported (train one with "
    "`ctqa-train score`, pass a checkpoint with --score-model, or --score-model none to skip it silently)"
)
DEFINITION = (
    f"0-4 image quality score on the {SCORE_SCALE} scale (0 bad, 1 poor, 2 fair, 3 good, 4 excellent; in that "
    "challenge the mean of radiologists' ratings), predicted per slice by a learned model in the W350/L40 window "
    "(-135..215 HU); value: mean over the slices with body; worst_decile: mean of the worst 10 % of those slices "
    "(at least one); sd: mean of the slices' SDs, the spread of the predicted score distributions (a slice's "
    "uncertainty, not that of the mean; null for regression models); calibrated: mapped onto a user's "
    "radiologists by the model card's monotone calibration; trained_to: what the model's scores were fitted to - "
    '"surrogate" (the bundled model: mean SSIM against the full-dose image on simulated low-dose and sparse-view '
    'degradations, mapped to 0-4; an estimate of that measure, not a radiologist\'s rating), "radiologist scores" '
    'or "calibrated to radiologist ratings"'
)


@dataclass(frozen=True)
class SliceScores:
    """A volume's scores: per slice float64 (z,) score and sd (NaN for slices without body, sd NaN for regression
    models) and the summary block."""

    score: np.ndarray
    sd: np.ndarray
    summary: GlobalScore
    device_fallback: str | None = None


def is_skip(choice: str | os.PathLike | ModelSpec | None) -> bool:
    """True for the choices that skip the score silently: None and "none" (any case)."""
    return choice is None or (isinstance(choice, str) and choice.strip().lower() == NO_SCORE_MODEL)


def missing_packages(spec: ModelSpec | None = None) -> list[str]:
    """The packages spec needs (LEARNED_PACKAGES for a network, none for a physics-feature model; spec None: the
    default model) that cannot be imported here."""
    if spec is None and registry.default_model(TASK) is not None:
        spec = registry.resolve(TASK, DEFAULT_MODEL)
    if spec is not None and is_feature_card(spec.card):
        return []
    return registry.missing_packages(LEARNED_PACKAGES)


def _is_default(choice) -> bool:
    return isinstance(choice, str) and choice in (DEFAULT_MODEL, "")


def resolve(
    choice: str | os.PathLike | ModelSpec | None = DEFAULT_MODEL, require_packages: bool = True
) -> ModelSpec | None:
    """The score model a user's choice names: a ModelSpec passes through; None for "none"/None, and for "default"
    when no global_score model is installed or (require_packages) the packages it needs are missing: the score is
    then skipped with skipped_note. Else registry.resolve: InputError for unknown names and missing checkpoints, and
    for a model named explicitly whose packages are missing (require_packages)."""
    if isinstance(choice, ModelSpec):
        return choice
    if is_skip(choice):
        return None
    if _is_default(choice) and registry.default_model(TASK) is None:
        return None
    spec = registry.resolve(TASK, str(choice))
    missing = missing_packages(spec) if require_packages else []
    if missing and _is_default(choice):
        return None
    if missing:
        raise InputError(f"--score-model {choice}: needs {', '.join(missing)} (pip install 'ctqa[learned]')")
    return spec


def skipped_note(choice: str | os.PathLike | ModelSpec | None, spec: ModelSpec | None) -> str | None:
    """The summary note when the score was asked for (not "none") but left out: no model installed, or the
    default model's packages missing; None otherwise."""
    if spec is not None or is_skip(choice):
        return None
    missing = missing_packages()
    if _is_default(choice) and registry.default_model(TASK) is not None and missing:
        return (
            f"the 0-4 quality score model needs {', '.join(missing)}: the score is not reported "
            "(pip install 'ctqa[learned]', or --score-model none)"
        )
    return NOT_INSTALLED_NOTE


def worst_decile(scores: np.ndarray) -> float:
    """Mean of the lowest 10 % of scores (rounded up, at least one); NaN for none."""
    scores = np.sort(np.asarray(scores, np.float64))
    if scores.size == 0:
        return math.nan
    count = max(1, (scores.size + 9) // 10)  # integer ceil(n / 10): no float rounding at n = 30
    return float(scores[:count].mean())


def body_runs(body: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive True slices in body (z,) bool."""
    edges = np.diff(np.concatenate(([0], body.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _share(progress: ProgressCallback | None, offset: float, width: float) -> ProgressCallback | None:
    """progress for one part of the work: its fractions 0..1 mapped onto offset..offset + width."""
    if progress is None:
        return None
    return lambda fraction, message: progress(offset + width * fraction, message)


def trained_to(card: dict) -> str:
    """What a score model card's scores were fitted to (GlobalScore.trained_to): a calibration to a user's ratings,
    radiologists' LDCTIQAC2023 scores among the training sources, else the surrogate of the simulated dataset."""
    if "calibration" in card:
        return "calibrated to radiologist ratings"
    kinds = {source.get("kind") for source in card.get("training", {}).get("dataset_sources", [])}
    return "radiologist scores" if "ldctiqac" in kinds else "surrogate"


def summarise(
    score: np.ndarray, sd: np.ndarray, model: str, card: dict, device: str = "cpu", notes: tuple[str, ...] = ()
) -> GlobalScore | None:
    """The summary block of per-slice scores (z,) (NaN = slice not scored) with the out-of-domain notes; None when
    no slice was scored."""
    scored = np.isfinite(score)
    if not scored.any():
        return None
    sds = sd[scored]
    return GlobalScore(
        value=float(score[scored].mean()),
        sd=float(sds.mean()) if np.isfinite(sds).all() else math.nan,
        worst_decile=worst_decile(score[scored]),
        scale=SCORE_SCALE,
        model=model,
        slices_scored=int(scored.sum()),
        calibrated="calibration" in card,
        device=device,
        trained_to=trained_to(card),
        domain_notes=notes,
    )


def unscored_notes(volume: CTVolume, spec: ModelSpec, body_slices: int) -> tuple[str, ...]:
    """Why the score of volume was asked for but not reported (run returned None), with the domain notes that
    explain it (a display window narrower than soft tissue, a pixel size outside the validated range)."""
    if body_slices == 0:
        reason = "no slice shows the body"
    elif is_feature_card(spec.card):
        reason = "no slice has flat soft tissue (-100..150 HU) to measure noise in"
    else:
        reason = "no slice could be scored"
    return (f"{reason}: the 0-4 quality score is not reported", *domain_notes(volume, 0.0))


def _feature_scores(
    volume: CTVolume,
    spec: ModelSpec,
    body: np.ndarray,
    noise: NoiseAnalysis | None,
    progress: ProgressCallback | None,
) -> SliceScores | None:
    """SliceScores of a physics-feature model (no SD: a regression) over the body slices, with its domain notes;
    noise: the volume's physics pass, reused where it fits (feature_score.slice_features)."""
    model, card = load_feature_model(spec.card_path)
    score, out_of_range = model.predict(slice_features(volume, noise, progress))
    score[~body] = np.nan
    sd = np.full_like(score, np.nan)
    scored = np.isfinite(score)
    share = float(out_of_range[scored].mean()) if scored.any() else 0.0
    summary = summarise(score, sd, spec.name, card, "cpu", domain_notes(volume, share))
    return SliceScores(score, sd, summary) if summary is not None else None


def run(
    volume: CTVolume,
    spec: ModelSpec | None,
    body_voxels_per_slice: np.ndarray,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    noise: NoiseAnalysis | None = None,
) -> SliceScores | None:
    """Score the slices of volume that show the body (body_voxels_per_slice (z,) > 0) with the score model spec.

    None when spec is None or no slice shows the body. device: "auto", "cpu" or "cuda" (a missing CUDA falls back
    to the CPU, reported in device_fallback); cancel stops between batches (ctqa.models.inference.Cancelled).
    noise: the volume's physics pass (physics.noise.analyse_noise), which a physics-feature model reuses instead of
    its own when it was made on the model's grid and window.
    """
    body = np.asarray(body_voxels_per_slice) > 0
    if spec is None or not body.any():
        return None
    if is_feature_card(spec.card):
        return _feature_scores(volume, spec, body, noise, progress)
    from ctqa.models.inference import resolve_device
    from ctqa.models.score_network import load_score_model, predict_scores

    torch_device, fallback = resolve_device(device)
    model, card = load_score_model(spec.card_path, torch_device)
    score = np.full(volume.shape[0], np.nan)
    sd = np.full(volume.shape[0], np.nan)
    total, done = int(body.sum()), 0
    for start, stop in body_runs(body):  # views of the volume, no copy of the body slices
        part = _share(progress, done / total, (stop - start) / total)
        score[start:stop], sd[start:stop] = predict_scores(
            model, card, volume.hu[start:stop], torch_device, progress=part, cancel=cancel,
            pixel_yx_mm=(volume.spacing[1], volume.spacing[0]),
        )
        done += stop - start
    summary = summarise(score, sd, spec.name, card, str(torch_device), domain_notes(volume, 0.0))
    return SliceScores(score, sd, summary, fallback) if summary is not None else None
