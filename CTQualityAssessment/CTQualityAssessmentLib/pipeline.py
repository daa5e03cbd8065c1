"""One assessment of one CT volume: maps, tables and summary, and writing them to a folder (the CLI contract)."""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, models
from .aggregate import ROI_COLUMNS, SLICE_COLUMNS, region_statistics, roi_table, slice_table
from .errors import InputError
from .io import write_map
from .models import DEFAULT_MODEL, PHYSICS_MODEL
from .noise import DEFAULT_WINDOW_MM, NOISE_SD50_HU, NoiseAnalysis, analyse_noise
from .rois import Roi
from .slabs import ProgressCallback
from .ssim import SSIM_WINDOW_HU, ssim_map
from .volume import CTVolume

PHYSICS_QUALITY_DEFINITION = (
    f"1 / (1 + (noise_sd / {NOISE_SD50_HU:g} HU)^2): expected SSIM of flat tissue against its noise-free self on the "
    f"{SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU window; NaN outside the body"
)
LEARNED_QUALITY_DEFINITION = (
    "predicted SSIM against the unseen full-dose image (Noise2Quality settings, "
    f"{SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU window); NaN outside the body"
)

OUTPUT_FILES = {
    "quality_map": "quality_map.nrrd",
    "noise_map": "noise_map.nrrd",
    "reference_ssim_map": "reference_ssim_map.nrrd",
    "slices": "slices.csv",
    "rois": "rois.csv",
    "summary": "summary.json",
    "preview": "preview.png",
}


@dataclass
class Assessment:
    """Everything one assessment produced; maps are float32 (z, y, x) on the grid of volume."""

    volume: CTVolume
    model: str
    quality: np.ndarray
    noise: NoiseAnalysis
    reference_ssim: np.ndarray | None
    slices: list[dict]
    rois: list[dict] | None
    summary: dict


@dataclass
class LearnedRun:
    """What a learned model added: its card, where it ran, and its dose estimate (None without a dose head)."""

    card: dict
    device: str
    precision: str
    fallback: str | None
    dose: dict | None


def _learned_quality(volume: CTVolume, model: str, device: str, progress, cancel) -> tuple[np.ndarray, LearnedRun]:
    """Predicted SSIM map (float32 (z, y, x)) of a learned model; torch is imported only here."""
    from .checkpoints import load
    from .inference import predict_volume, volume_dose_estimate

    network, card = load(models.resolve(model))
    prediction = predict_volume(network, volume.hu, device=device, progress=progress, cancel=cancel)
    run = LearnedRun(
        card, prediction.device_used, prediction.precision, prediction.fallback, volume_dose_estimate(prediction)
    )
    return prediction.quality, run


def check_output_folder(path: str | os.PathLike) -> Path:
    """The output folder, refused when it is an existing file (nothing is written before this check)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: output path is an existing file, not a folder")
    return folder


def check_model(model: str | None) -> str:
    """What to run for a user's model choice: "physics", a bundled model's name, or a checkpoint card path.

    "default" (or nothing) is the bundled default learned model, or the physics model when none is bundled.
    InputError for an unknown name or a checkpoint path without its model card.
    """
    if model in (None, "", DEFAULT_MODEL):
        return models.default_learned_model() or PHYSICS_MODEL
    if model == PHYSICS_MODEL or model in models.bundled_models():
        return model
    if os.path.splitext(model)[1] or os.sep in model:
        return str(models.resolve(model))
    raise InputError(f"{model}: unknown model; available: {', '.join(models.available_models())} or a checkpoint file")


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _summary(
    volume, model, noise: NoiseAnalysis, quality, reference_ssim, window_mm, learned: LearnedRun | None
) -> dict:
    body = noise.body_mask
    overall = region_statistics(quality[body], noise.noise_sd[body], volume.hu[body]) if body.any() else {}
    summary = {
        "tool": f"ctqa {__version__}",
        "input": volume.source,
        "shape_zyx": list(volume.shape),
        "spacing_mm_xyz": list(volume.spacing),
        "model": model if learned is None else learned.card.get("name", model),
        "global_quality_score": _finite_or_none(overall.get("quality_mean", math.nan)),
        "quality_median": _finite_or_none(overall.get("quality_median", math.nan)),
        "quality_p10": _finite_or_none(overall.get("quality_p10", math.nan)),
        "gnl_hu": _finite_or_none(noise.gnl),
        "snr": _finite_or_none(noise.snr),
        "cnr": _finite_or_none(noise.cnr),
        "soft_tissue_hu_mean": _finite_or_none(noise.soft_tissue_hu),
        "fat_hu_mean": _finite_or_none(noise.fat_hu),
        "body_voxels": int(body.sum()),
        "noise_window_mm": window_mm,
        "noise_window_voxels_yx": list(noise.window_voxels),
        "quality_definition": PHYSICS_QUALITY_DEFINITION if learned is None else LEARNED_QUALITY_DEFINITION,
        "snr_definition": "(soft-tissue mean HU + 1000) / GNL",
        "cnr_definition": "(soft-tissue mean HU - fat mean HU) / GNL",
    }
    if learned is None:
        summary["device"] = "cpu"
    else:
        summary.update(
            device=learned.device,
            precision=learned.precision,
            device_fallback=learned.fallback,
            dose_estimate=learned.dose,
        )
    if reference_ssim is not None:
        summary["reference_ssim_mean_body"] = _finite_or_none(float(reference_ssim[body].mean(dtype=np.float64)))
        summary["reference_ssim_mean"] = float(reference_ssim.mean(dtype=np.float64))
    return summary


def check_reference(volume: CTVolume, reference: CTVolume) -> None:
    """Refuse a reference volume that is not on the grid of the volume."""
    if reference.shape != volume.shape or not np.allclose(reference.spacing, volume.spacing, atol=1e-4):
        raise InputError(
            f"{reference.source}: reference grid {reference.shape} at {reference.spacing} mm differs from "
            f"{volume.shape} at {volume.spacing} mm"
        )


def assess(
    volume: CTVolume,
    reference: CTVolume | None = None,
    rois: list[Roi] | None = None,
    model: str | None = DEFAULT_MODEL,
    window_mm: float = DEFAULT_WINDOW_MM,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Assessment:
    """Assess one CT volume: quality and noise maps, optional reference SSIM map, per-slice and per-ROI tables.

    model: see check_model; a learned model's map replaces the physics quality map (the noise map, GNL and body
    mask always come from the physics pass). device: where a learned model runs ("auto", "cpu", "cuda").
    cancel: stops a learned model between batches (inference.Cancelled).
    """
    model = check_model(model)
    if reference is not None:
        check_reference(volume, reference)

    def stage(low: float, high: float) -> ProgressCallback | None:
        return (
            None if progress is None else (lambda fraction, message: progress(low + (high - low) * fraction, message))
        )

    learned_model = model != PHYSICS_MODEL
    physics_end = 0.3 if learned_model else (0.6 if reference is not None else 0.9)
    noise = analyse_noise(volume, window_mm, progress=stage(0.0, physics_end))
    quality, learned = noise.quality, None
    if learned_model:
        quality, learned = _learned_quality(volume, model, device, stage(physics_end, 0.75), cancel)
        quality[~noise.body_mask] = np.nan
    reference_ssim = None
    if reference is not None:
        reference_ssim = ssim_map(volume.hu, reference.hu, progress=stage(0.75 if learned_model else 0.6, 0.9))
    slices = slice_table(volume, quality, noise.noise_sd)
    roi_rows = roi_table(volume, quality, noise.noise_sd, rois) if rois is not None else None
    if progress is not None:
        progress(1.0, "tables")
    summary = _summary(volume, model, noise, quality, reference_ssim, window_mm, learned)
    return Assessment(volume, model, quality, noise, reference_ssim, slices, roi_rows, summary)


def _write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})


def write_outputs(assessment: Assessment, folder: str | os.PathLike) -> dict[str, Path]:
    """Write the CLI outputs (OUTPUT_FILES) into folder; returns the written paths by role."""
    from .preview import save_preview  # matplotlib is imported only when a preview is drawn

    out = check_output_folder(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in OUTPUT_FILES.items()}
    volume = assessment.volume
    write_map(assessment.quality, volume, paths["quality_map"])
    write_map(assessment.noise.noise_sd, volume, paths["noise_map"])
    if assessment.reference_ssim is not None:
        write_map(assessment.reference_ssim, volume, paths["reference_ssim_map"])
    else:
        del paths["reference_ssim_map"]
    _write_csv(assessment.slices, SLICE_COLUMNS, paths["slices"])
    if assessment.rois is not None:
        _write_csv(assessment.rois, ROI_COLUMNS, paths["rois"])
    else:
        del paths["rois"]
    paths["summary"].write_text(json.dumps(assessment.summary, indent=2) + "\n", encoding="utf-8")
    save_preview(assessment, paths["preview"])
    return paths
