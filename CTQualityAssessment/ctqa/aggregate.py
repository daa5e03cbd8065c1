"""Aggregation of per-voxel maps into typed rows: per slice, per ROI, and over the whole body.

Voxels whose quality is not finite (outside the body) are left out everywhere. The maps may be staging.SlabMaps
(the pipeline's): they are read a slab or an ROI's box at a time. The whole-body statistics are
accumulated slice by slice (histograms for the percentiles), so they need no copy of the body's voxels.

Windows: slices and the whole body use the composed quality map (each voxel in the window of its tissue). An ROI is
read in one window, that of its tissue: the lung window when most of its assessed voxels lie in the lung mask (and
the model has a lung window), else the soft-tissue window; its row says which.
"""

from __future__ import annotations

import math

import numpy as np

from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.results import LungQuality, RegionStats, RoiRow, SliceRow
from ctqa.rois import Roi
from ctqa.slabs import SLAB_SLICES
from ctqa.volume import CTVolume

#: Histogram resolution of the whole-body percentiles: quality in [0, 1], noise SD in HU.
QUALITY_BINS = 10_000
NOISE_BIN_HU = 0.01
NOISE_MAX_HU = 2_000.0


def region_statistics(quality: np.ndarray, noise_sd: np.ndarray, hu: np.ndarray) -> RegionStats:
    """Statistics over the voxels given (1D arrays of one region); see RegionStats."""
    assessed = np.isfinite(quality)
    if not assessed.any():
        return RegionStats()
    values = quality[assessed]
    p10, median = np.percentile(values, (10, 50))
    noise = noise_sd[assessed]
    noise = noise[np.isfinite(noise)]
    return RegionStats(
        quality_mean=float(values.mean(dtype=np.float64)),
        quality_median=float(median),
        quality_p10=float(p10),
        noise_sd_hu=float(np.median(noise)) if noise.size else math.nan,
        hu_mean=float(hu[assessed].mean(dtype=np.float64)),
    )


def slice_table(
    volume: CTVolume,
    quality: np.ndarray,
    noise_sd: np.ndarray,
    score: np.ndarray | None = None,
    score_sd: np.ndarray | None = None,
) -> list[SliceRow]:
    """One row per slice: statistics over the slice's assessed (finite-quality) voxels, and the slice's 0-4 score
    and its SD when given (float (z,), NaN where not scored)."""
    positions = volume.slice_positions_mm()
    missing = np.full(volume.shape[0], np.nan)
    score = missing if score is None else score
    score_sd = missing if score_sd is None else score_sd
    rows = []
    for start in range(0, volume.shape[0], SLAB_SLICES):  # maps may be staging.SlabMaps: read a slab at a time
        stop = min(start + SLAB_SLICES, volume.shape[0])
        slab_quality, slab_noise, slab_hu = quality[start:stop], noise_sd[start:stop], volume.hu[start:stop]
        for offset, index in enumerate(range(start, stop)):
            rows.append(
                SliceRow(
                    index,
                    float(positions[index]),
                    int(np.isfinite(slab_quality[offset]).sum()),
                    region_statistics(
                        slab_quality[offset].ravel(), slab_noise[offset].ravel(), slab_hu[offset].ravel()
                    ),
                    float(score[index]),
                    float(score_sd[index]),
                )
            )
    return rows


def roi_window(windows: dict[str, np.ndarray], lung: np.ndarray, roi: Roi) -> str:
    """ "lung" when windows has a lung map and most of the ROI's assessed voxels lie in the lung mask (z, y, x), else
    "soft_tissue"."""
    if "lung" not in windows:
        return "soft_tissue"
    assessed = roi.mask & np.isfinite(windows["soft_tissue"][roi.box])
    in_lung = np.count_nonzero(lung[roi.box][assessed])
    return "lung" if 2 * in_lung > np.count_nonzero(assessed) else "soft_tissue"


def roi_table(
    volume: CTVolume, windows: dict[str, np.ndarray], lung: np.ndarray, noise_sd: np.ndarray, rois: list[Roi]
) -> list[RoiRow]:
    """One row per ROI, in the order given, each read in the window of its tissue (``roi_window``).

    windows: {"soft_tissue": map, optional "lung": map}, float32 (z, y, x), NaN outside the body; lung: bool
    (z, y, x) lung mask.
    """
    rows = []
    for roi in rois:
        if roi.voxel_count == 0:
            rows.append(RoiRow(roi.value, roi.name, 0, "empty", "", RegionStats()))
            continue
        window = roi_window(windows, lung, roi)
        quality = windows[window][roi.box][roi.mask]
        stats = region_statistics(quality, noise_sd[roi.box][roi.mask], volume.hu[roi.box][roi.mask])
        status = "ok" if math.isfinite(stats.quality_mean) else "outside body"
        rows.append(RoiRow(roi.value, roi.name, roi.voxel_count, status, window if status == "ok" else "", stats))
    return rows


def lung_quality(windows: dict[str, np.ndarray], lung: np.ndarray) -> LungQuality:
    """Mean quality of the lung (lung mask) in the lung window and of the rest of the body in the soft-tissue
    window, one slice at a time; the lung mean is NaN without lung or without a lung-window map."""
    soft, lung_map = windows["soft_tissue"], windows.get("lung")
    lung_sum = rest_sum = 0.0
    lung_voxels = rest_voxels = 0
    for start in range(0, soft.shape[0], SLAB_SLICES):  # maps may be staging.SlabMaps: read a slab at a time
        soft_slab, lung_slab = soft[start : start + SLAB_SLICES], lung[start : start + SLAB_SLICES]
        lung_window = lung_map[start : start + SLAB_SLICES] if lung_map is not None else None
        for offset in range(len(soft_slab)):
            assessed = np.isfinite(soft_slab[offset])
            inside = lung_slab[offset] & assessed
            rest = assessed & ~lung_slab[offset]
            lung_voxels += int(np.count_nonzero(inside))
            rest_voxels += int(np.count_nonzero(rest))
            rest_sum += float(soft_slab[offset][rest].sum(dtype=np.float64))
            if lung_window is not None:
                lung_sum += float(lung_window[offset][inside].sum(dtype=np.float64))
    return LungQuality(
        lung_voxels=lung_voxels,
        lung_quality_mean=lung_sum / lung_voxels if lung_voxels and lung_map is not None else math.nan,
        soft_tissue_quality_mean=rest_sum / rest_voxels if rest_voxels else math.nan,
        lung_window_hu=QUALITY_WINDOWS_HU["lung"],
        soft_tissue_window_hu=QUALITY_WINDOWS_HU["soft_tissue"],
    )


def _histogram_quantile(counts: np.ndarray, edges_step: float, fraction: float) -> float:
    """The value below which `fraction` of a histogram's mass lies (bin centre), bins of width edges_step from 0."""
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    return (index + 0.5) * edges_step


def body_statistics(volume: CTVolume, quality: np.ndarray, noise_sd: np.ndarray) -> RegionStats:
    """Statistics over every assessed voxel of the volume, one slice at a time (no body-sized copies).

    Means are exact; the quality percentiles are exact to 1/QUALITY_BINS and the noise median to NOISE_BIN_HU.
    """
    quality_counts = np.zeros(QUALITY_BINS, dtype=np.int64)
    noise_counts = np.zeros(int(NOISE_MAX_HU / NOISE_BIN_HU) + 1, dtype=np.int64)
    quality_sum = hu_sum = 0.0
    voxels = 0
    for q, sd, hu in zip(quality, noise_sd, volume.hu):
        assessed = np.isfinite(q)
        if not assessed.any():
            continue
        values = q[assessed]
        voxels += values.size
        quality_sum += float(values.sum(dtype=np.float64))
        hu_sum += float(hu[assessed].sum(dtype=np.float64))
        bins = np.clip((values * QUALITY_BINS).astype(np.int64), 0, QUALITY_BINS - 1)
        quality_counts += np.bincount(bins, minlength=QUALITY_BINS)
        noise = sd[assessed]
        noise = noise[np.isfinite(noise)]
        noise_bins = np.clip((noise / NOISE_BIN_HU).astype(np.int64), 0, noise_counts.size - 1)
        noise_counts += np.bincount(noise_bins, minlength=noise_counts.size)
    if voxels == 0:
        return RegionStats()
    step = 1.0 / QUALITY_BINS
    return RegionStats(
        quality_mean=quality_sum / voxels,
        quality_median=_histogram_quantile(quality_counts, step, 0.5),
        quality_p10=_histogram_quantile(quality_counts, step, 0.1),
        noise_sd_hu=_histogram_quantile(noise_counts, NOISE_BIN_HU, 0.5) if noise_counts.any() else math.nan,
        hu_mean=hu_sum / voxels,
    )
