"""Aggregation of per-voxel maps: per-slice table, per-ROI table, global summary figures."""

from __future__ import annotations

import math

import numpy as np

from .rois import Roi
from .volume import CTVolume

SLICE_COLUMNS = ("slice", "z_mm", "voxels", "quality_mean", "quality_median", "quality_p10", "noise_sd_hu", "hu_mean")
ROI_COLUMNS = (
    "label", "name", "voxels", "status", "quality_mean", "quality_median", "quality_p10", "noise_sd_hu", "hu_mean",
)  # fmt: skip


def region_statistics(quality: np.ndarray, noise_sd: np.ndarray, hu: np.ndarray) -> dict[str, float]:
    """Quality mean / median / 10th percentile, median noise SD (HU) and HU mean over the voxels given (1D).

    Voxels whose quality is not finite (outside the body) are left out; all NaN when none is left.
    """
    assessed = np.isfinite(quality)
    if not assessed.any():
        return dict.fromkeys(("quality_mean", "quality_median", "quality_p10", "noise_sd_hu", "hu_mean"), math.nan)
    values = quality[assessed]
    p10, median = np.percentile(values, (10, 50))
    noise = noise_sd[assessed]
    noise = noise[np.isfinite(noise)]
    return {
        "quality_mean": float(values.mean(dtype=np.float64)),
        "quality_median": float(median),
        "quality_p10": float(p10),
        "noise_sd_hu": float(np.median(noise)) if noise.size else math.nan,
        "hu_mean": float(hu[assessed].mean(dtype=np.float64)),
    }


def slice_table(volume: CTVolume, quality: np.ndarray, noise_sd: np.ndarray) -> list[dict]:
    """One row per slice (SLICE_COLUMNS): statistics over the slice's assessed (finite-quality) voxels."""
    positions = volume.slice_positions_mm()
    rows = []
    for index in range(volume.shape[0]):
        row = {"slice": index, "z_mm": float(positions[index]), "voxels": int(np.isfinite(quality[index]).sum())}
        row.update(region_statistics(quality[index].ravel(), noise_sd[index].ravel(), volume.hu[index].ravel()))
        rows.append(row)
    return rows


def roi_table(volume: CTVolume, quality: np.ndarray, noise_sd: np.ndarray, rois: list[Roi]) -> list[dict]:
    """One row per ROI (ROI_COLUMNS); status is "ok", "empty" (no voxels) or "outside body" (none assessed)."""
    rows = []
    for roi in rois:
        row = {"label": roi.value, "name": roi.name, "voxels": roi.voxel_count}
        if roi.voxel_count == 0:
            row["status"] = "empty"
            row.update(region_statistics(np.empty(0), np.empty(0), np.empty(0)))
        else:
            stats = region_statistics(
                quality[roi.box][roi.mask], noise_sd[roi.box][roi.mask], volume.hu[roi.box][roi.mask]
            )
            row["status"] = "ok" if math.isfinite(stats["quality_mean"]) else "outside body"
            row.update(stats)
        rows.append(row)
    return rows
