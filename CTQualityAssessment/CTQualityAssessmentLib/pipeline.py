"""One assessment of one CT volume: maps, tables and summary, and writing them to a folder (the CLI contract)."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .aggregate import ROI_COLUMNS, SLICE_COLUMNS, region_statistics, roi_table, slice_table
from .errors import InputError
from .io import write_map
from .noise import DEFAULT_WINDOW_MM, NOISE_SD50_HU, NoiseAnalysis, analyse_noise
from .rois import Roi
from .slabs import ProgressCallback
from .ssim import SSIM_WINDOW_HU, ssim_map
from .volume import CTVolume

#: Models the assessment can run; learned models join this list when their weights are bundled.
AVAILABLE_MODELS = ("physics",)
DEFAULT_MODEL = "physics"

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


def check_output_folder(path: str | os.PathLike) -> Path:
    """The output folder, refused when it is an existing file (nothing is written before this check)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: output path is an existing file, not a folder")
    return folder


def check_model(model: str | None) -> str:
    """The model to run for a user's choice: "default" (or nothing) is DEFAULT_MODEL; anything unknown is refused."""
    if model in (None, "", "default"):
        return DEFAULT_MODEL
    if model in AVAILABLE_MODELS:
        return model
    if os.path.splitext(model)[1] or os.sep in model:
        raise InputError(
            f"{model}: checkpoint files cannot be loaded yet (no learned model is available in this version); "
            f"choose one of: {', '.join(AVAILABLE_MODELS)}"
        )
    raise InputError(f"{model}: unknown model; available: {', '.join(AVAILABLE_MODELS)}")


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _summary(volume: CTVolume, model: str, noise: NoiseAnalysis, quality: np.ndarray, reference_ssim, window_mm) -> dict:
    body = noise.body_mask
    overall = region_statistics(quality[body], noise.noise_sd[body], volume.hu[body]) if body.any() else {}
    summary = {
        "tool": f"ctqa {__version__}",
        "input": volume.source,
        "shape_zyx": list(volume.shape),
        "spacing_mm_xyz": list(volume.spacing),
        "model": model,
        "device": "cpu",
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
        "quality_definition": (
            f"1 / (1 + (noise_sd / {NOISE_SD50_HU:g} HU)^2): expected SSIM of flat tissue against its noise-free "
            f"self on the {SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU window; NaN outside the body"
        ),
        "snr_definition": "(soft-tissue mean HU + 1000) / GNL",
        "cnr_definition": "(soft-tissue mean HU - fat mean HU) / GNL",
    }
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
    model: str = DEFAULT_MODEL,
    window_mm: float = DEFAULT_WINDOW_MM,
    progress: ProgressCallback | None = None,
) -> Assessment:
    """Assess one CT volume: quality and noise maps, optional reference SSIM map, per-slice and per-ROI tables."""
    model = check_model(model)
    if reference is not None:
        check_reference(volume, reference)

    def stage(low: float, high: float) -> ProgressCallback | None:
        return None if progress is None else (lambda fraction, message: progress(low + (high - low) * fraction, message))

    has_reference = reference is not None
    noise = analyse_noise(volume, window_mm, progress=stage(0.0, 0.6 if has_reference else 0.9))
    reference_ssim = ssim_map(volume.hu, reference.hu, progress=stage(0.6, 0.9)) if has_reference else None
    quality = noise.quality
    slices = slice_table(volume, quality, noise.noise_sd)
    roi_rows = roi_table(volume, quality, noise.noise_sd, rois) if rois is not None else None
    if progress is not None:
        progress(1.0, "tables")
    summary = _summary(volume, model, noise, quality, reference_ssim, window_mm)
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
