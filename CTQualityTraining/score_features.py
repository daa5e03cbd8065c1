"""Training of the physics-feature 0-4 score (``ctqa-train score-features``) on real dose pairs.

Data: the real Mayo quarter/full-dose DICOM pairs of ``mayo_ldct/pairs.csv`` (B30f and D45f), split by patient.
Each pair gives the full dose, the quarter dose, each of them smoothed by a Gaussian (sigma in mm,
BLUR_SIGMAS_MM: over-smoothing of the kind denoisers and soft kernels make) and, when a denoiser is given, the
denoised quarter dose. Target: the surrogate score of ``score_data`` (mean SSIM over the body in W350/L40 against the
pair's full dose, mapped linearly from SSIM 0.2 -> 0 to 1.0 -> 4), taken after both images are smoothed by a
Gaussian of TARGET_SMOOTHING_MM: the full dose reads 4, noise and lost structure cost score, but the full dose's own
pixel noise no longer counts as structure that smoothing destroys. Without that smoothing a full dose blurred by
0.6 mm scored 2.1 (of 4) against the quarter dose's 1.1, every smooth-kernel (B30f) full dose read about 2, since
it looks like a blurred sharp-kernel image, and the readers' ranking barely moved (docs/real_validation.md).
Features: ``ctqa.models.feature_score.slice_features``, the product's own code.
The fit is non-negative least squares of the targets' logit on the monotone design of ``feature_score`` (the
intercept free); feature ranges are those of the training rows. Fitted on the 0..4 scale itself with a clip at 4, the
sharp-kernel images of the validation patient tied at 4 (quarter and full dose alike); the logistic link keeps
them ordered.

Why monotone: fitted freely (linear, quadratic or cubic least squares), the surrogate's blurred variants teach
"less noise reads worse": a linear fit ranks the reader study's images against the radiologists (Spearman -0.4),
and the flexible fits make the demo's score rise as its dose falls. Why no denoised variants by default: with the
bundled denoiser's outputs added, the monotone fit lost most of the reader agreement (docs/score_features.md).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls
from scipy.stats import spearmanr

from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.models.feature_score import (
    BACKBONE,
    DESIGN_TERMS,
    FEATURES,
    GRID_MM,
    NPS_PATCH_MM,
    SCORE_MAX,
    FeatureScoreModel,
    design,
    slice_features,
)
from ctqa.models.plain_weights import write_safetensors
from ctqa.models.registry import checkpoint_files
from ctqa.volume import CTVolume

from .score_data import SCORE_SSIM_CEILING, SCORE_SSIM_FLOOR, SCORE_WINDOW_HU, mean_ssim, surrogate_score

BLUR_SIGMAS_MM = (0.6, 1.2, 2.0)
TARGET_SMOOTHING_MM = 0.6
#: Targets are kept this far (as a share of the scale) inside 0..4 before their logit is taken.
LOGIT_MARGIN = 0.03
#: A model whose predictions on the real validation images spread less than this (SD, score units) is refused: a
#: score that barely moves across real images is broken whatever its fit.
MIN_PREDICTION_SD = 0.25


@dataclass(frozen=True)
class PairFiles:
    """One real dose pair of pairs.csv: patient, kernel, z (mm), pixel size (mm), full- and quarter-dose files."""

    patient: str
    kernel: str
    z_mm: float
    pixel_mm: float
    thickness_mm: float
    full: Path
    quarter: Path


@dataclass(frozen=True)
class TrainingRow:
    """One image: its pair, variant name, features (len(FEATURES),) and surrogate target (0..4)."""

    pair: PairFiles
    variant: str
    features: np.ndarray
    target: float


def read_pairs_csv(folder: str | Path) -> list[PairFiles]:
    """The pairs of folder/pairs.csv (columns patient, kernel, dose, file, z_mm, pixel_mm, thickness_mm)."""
    folder = Path(folder)
    try:
        rows = list(csv.DictReader((folder / "pairs.csv").open(encoding="utf-8")))
    except OSError as error:
        raise InputError(f"{folder}: no readable pairs.csv ({error.strerror})") from None
    full = {(r["patient"], r["kernel"], r["z_mm"]): r for r in rows if r["dose"] == "full"}
    pairs = []
    for row in rows:
        key = (row["patient"], row["kernel"], row["z_mm"])
        if row["dose"] != "quarter" or key not in full:
            continue
        pairs.append(
            PairFiles(
                row["patient"], row["kernel"], float(row["z_mm"]), float(row["pixel_mm"]),
                float(row["thickness_mm"]), folder / full[key]["file"], folder / row["file"],
            )
        )
    return pairs


def read_slice(path: Path) -> np.ndarray:
    """float32 (y, x) HU of a one-slice DICOM file."""
    return read_volume(str(path)).hu[0]


def pair_variants(full: np.ndarray, quarter: np.ndarray, pixel_mm: float, denoise_spec=None) -> dict[str, np.ndarray]:
    """{variant: (y, x) HU}: full, quarter, their Gaussian blurs (BLUR_SIGMAS_MM) and the denoised quarter dose."""
    variants = {"full": full, "quarter": quarter}
    for sigma in BLUR_SIGMAS_MM:
        variants[f"full blur {sigma:g} mm"] = ndimage.gaussian_filter(full, sigma / pixel_mm)
        variants[f"quarter blur {sigma:g} mm"] = ndimage.gaussian_filter(quarter, sigma / pixel_mm)
    if denoise_spec is not None:
        from ctqa.tasks import denoise

        volume = CTVolume(quarter[None], (pixel_mm, pixel_mm, 3.0))
        variants["quarter denoised"] = denoise.run(volume, denoise_spec, "cpu").volume.hu[0]
    return variants


def surrogate_targets(variants: dict[str, np.ndarray], full: np.ndarray, pixel_mm: float, source: str) -> np.ndarray:
    """(n,) surrogate scores of the variants (y, x) HU against full, both smoothed by TARGET_SMOOTHING_MM first."""
    sigma = TARGET_SMOOTHING_MM / pixel_mm
    smoothed = np.stack([ndimage.gaussian_filter(hu, sigma) for hu in variants.values()])
    return surrogate_score(mean_ssim(smoothed, ndimage.gaussian_filter(full, sigma), source))


def training_rows(pairs: list[PairFiles], denoise_spec=None, log=print) -> list[TrainingRow]:
    """Features and surrogate targets of every variant of every pair (module docstring)."""
    rows = []
    for index, pair in enumerate(pairs, 1):
        full, quarter = read_slice(pair.full), read_slice(pair.quarter)
        variants = pair_variants(full, quarter, pair.pixel_mm, denoise_spec)
        targets = surrogate_targets(variants, full, pair.pixel_mm, str(pair.full))
        for (name, hu), target in zip(variants.items(), targets):
            volume = CTVolume(hu[None], (pair.pixel_mm, pair.pixel_mm, pair.thickness_mm), source=str(pair.full))
            rows.append(TrainingRow(pair, name, slice_features(volume).values[0], float(target)))
        log(f"  pair {index}/{len(pairs)}: {pair.patient} {pair.kernel} z {pair.z_mm:g} mm")
    return [row for row in rows if np.isfinite(row.features).all()]


def fit(rows: list[TrainingRow]) -> FeatureScoreModel:
    """Non-negative least squares of logit(target / 4) (targets kept LOGIT_MARGIN inside 0..4) on the monotone
    design, the intercept free."""
    features = np.stack([row.features for row in rows])
    share = np.clip(np.array([row.target for row in rows]) / SCORE_MAX, LOGIT_MARGIN, 1.0 - LOGIT_MARGIN)
    logits = np.log(share / (1.0 - share))
    low, high = features.min(axis=0), features.max(axis=0)
    matrix = design(features, low, high)
    centre = matrix[:, 1:].mean(axis=0)
    weights, _ = nnls(matrix[:, 1:] - centre, logits - logits.mean())
    return FeatureScoreModel(np.concatenate([[logits.mean() - centre @ weights], weights]), low, high)


def check_spread(model: FeatureScoreModel, rows: list[TrainingRow]) -> float:
    """The SD of the model's predictions on rows; InputError when it is below MIN_PREDICTION_SD."""
    from ctqa.models.feature_score import SliceFeatures

    predicted, _ = model.predict(SliceFeatures(np.stack([row.features for row in rows])))
    spread = float(np.nanstd(predicted))
    if not spread >= MIN_PREDICTION_SD:
        raise InputError(
            f"refusing to write the model: its scores of {len(rows)} real validation images spread by SD {spread:.2f} "
            f"< {MIN_PREDICTION_SD} (a near-constant score)"
        )
    return spread


def metrics(model: FeatureScoreModel, rows: list[TrainingRow]) -> dict[str, float]:
    """RMSE and Spearman of the model against the targets of rows, and how often quarter < full within a pair."""
    from ctqa.models.feature_score import SliceFeatures

    predicted, _ = model.predict(SliceFeatures(np.stack([row.features for row in rows])))
    targets = np.array([row.target for row in rows])
    by_pair: dict = {}
    for row, value in zip(rows, predicted):
        by_pair.setdefault(row.pair, {})[row.variant] = value
    ordered = [v["quarter"] < v["full"] for v in by_pair.values() if "quarter" in v and "full" in v]
    return {
        "rmse": float(np.sqrt(np.mean((predicted - targets) ** 2))),
        "srocc": float(spearmanr(predicted, targets)[0]),
        "quarter_below_full": f"{sum(ordered)}/{len(ordered)}",
        "images": len(rows),
    }


def save_model(model: FeatureScoreModel, card: dict, path: str | Path) -> Path:
    """Write X.safetensors and the card X.json (its sha256 filled in); returns the card's path."""
    import hashlib

    card_path, weights_path = checkpoint_files(path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(model.tensors(), weights_path)
    card = {**card, "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest()}
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card_path


def train(
    mayo: str | Path, out: str | Path, val_patients: tuple[str, ...], denoise_model: str | None = None, log=print
) -> Path:
    """Build the rows, fit, measure on the validation patients and save the model as out (.json/.safetensors)."""
    started = time.time()
    pairs = read_pairs_csv(mayo)
    denoise_spec = None
    if denoise_model:
        from ctqa.tasks import denoise

        denoise_spec = denoise.resolve(denoise_model)
    train_pairs = [p for p in pairs if p.patient not in val_patients]
    val_pairs = [p for p in pairs if p.patient in val_patients]
    if not train_pairs or not val_pairs:
        raise InputError(f"{mayo}: need pairs of training and of validation patients ({', '.join(val_patients)})")
    log(f"training rows from {len(train_pairs)} pairs")
    train_rows = training_rows(train_pairs, denoise_spec, log)
    log(f"validation rows from {len(val_pairs)} pairs")
    val_rows = training_rows(val_pairs, denoise_spec, log)
    model = fit(train_rows)
    spread = check_spread(model, val_rows)
    card = {
        "name": Path(out).name,
        "format_version": 1,
        "task": "global_score",
        "architecture": {
            "backbone": BACKBONE,
            "features": list(FEATURES),
            "design": list(DESIGN_TERMS),
            "link": "score = 4 / (1 + exp(-design @ coefficients))",
        },
        "input": {
            "grid_mm": GRID_MM,
            "nps_patch_mm": NPS_PATCH_MM,
            "field_of_view": "independent: features from the body's flat soft tissue only",
            "normalisation": "slices resampled to grid_mm pixels (anti-aliased); ln(slice noise SD, HU) and NPS mean "
            "frequency (cycles/mm) of flat soft-tissue patches",
        },
        "scale": "0-4 LDCTIQAC2023",
        "training": {
            "target": f"surrogate: mean SSIM over the body in {list(SCORE_WINDOW_HU)} HU against the full dose, both "
            f"smoothed by a Gaussian of sigma {TARGET_SMOOTHING_MM} mm, linear from {SCORE_SSIM_FLOOR} (0) to "
            f"{SCORE_SSIM_CEILING} (4)",
            "data": str(mayo),
            "train_patients": sorted({p.patient for p in train_pairs}),
            "val_patients": sorted(val_patients),
            "variants": sorted({row.variant for row in train_rows}),
            "denoise_model": denoise_model,
            "dataset_sources": [{"kind": "mayo-pair", "id": p.full.name, "group": p.patient} for p in pairs],
            "seconds": round(time.time() - started, 1),
        },
        "metrics": {
            "train": metrics(model, train_rows),
            "val": {**metrics(model, val_rows), "prediction_sd": spread},
        },
        "reproduce": "Scripts/train_score_features.sh",
    }
    path = save_model(model, card, out)
    log(f"train {card['metrics']['train']}\nval   {card['metrics']['val']}")
    log(f"coefficients {np.round(model.coefficients, 4).tolist()}, feature range {model.feature_low} .. "
        f"{model.feature_high}")
    return path
