"""Aggregation of per-voxel maps into typed rows: per slice, per ROI, and over the whole body.

Voxels whose quality is not finite (outside the body) are left out everywhere. The maps may be staging.SlabMaps
(the pipeline's): they are read a slab or an ROI's box at a time, the slabs in the slab threads. The whole-body
statistics are accumulated slice by slice (histograms for the percentiles), so they need no copy of the body's
voxels; their sums are added in slice order, as one pass over the slices would add them.

Windows: slices and the whole body use the composed quality map (each voxel in the window of its tissue). An ROI is
read in one window, that of its tissue: the lung window when most of its assessed voxels lie in the lung mask (and
the model has a lung window), else the soft-tissue window; its row says which.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.results import LungQuality, RegionStats, RoiRow, SliceRow
from ctqa.rois import Roi
from ctqa.slabs import run_over_slabs
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


def _sum_in_order(values: np.ndarray) -> float:
    """The sum of values (float64) added one by one in their order: per-slice sums made in threads add up exactly as
    one pass over the slices would add them."""
    total = 0.0
    for value in values.tolist():
        total += value
    return total


def lung_quality(windows: dict[str, np.ndarray], lung: np.ndarray) -> LungQuality:
    """Mean quality of the lung (lung mask) in the lung window and of the rest of the body in the soft-tissue
    window, slab by slab in the slab threads; the lung mean is NaN without lung or without a lung-window map."""
    soft, lung_map = windows["soft_tissue"], windows.get("lung")
    sums = np.zeros((soft.shape[0], 2))  # per slice: lung, rest
    counts = np.zeros((soft.shape[0], 2), dtype=np.int64)

    def add(start: int, stop: int) -> None:  # maps may be staging.SlabMaps: read a slab at a time
        soft_slab, lung_slab = soft[start:stop], lung[start:stop]
        lung_window = lung_map[start:stop] if lung_map is not None else None
        for offset, index in enumerate(range(start, stop)):
            assessed = np.isfinite(soft_slab[offset])
            inside = lung_slab[offset] & assessed
            rest = assessed & ~lung_slab[offset]
            counts[index] = np.count_nonzero(inside), np.count_nonzero(rest)
            sums[index, 1] = soft_slab[offset][rest].sum(dtype=np.float64)
            if lung_window is not None:
                sums[index, 0] = lung_window[offset][inside].sum(dtype=np.float64)

    run_over_slabs(add, soft.shape[0])
    lung_voxels, rest_voxels = (int(n) for n in counts.sum(axis=0))
    return LungQuality(
        lung_voxels=lung_voxels,
        lung_quality_mean=_sum_in_order(sums[:, 0]) / lung_voxels if lung_voxels and lung_map is not None else math.nan,
        soft_tissue_quality_mean=_sum_in_order(sums[:, 1]) / rest_voxels if rest_voxels else math.nan,
        lung_window_hu=QUALITY_WINDOWS_HU["lung"],
        soft_tissue_window_hu=QUALITY_WINDOWS_HU["soft_tissue"],
    )


def _histogram_quantile(counts: np.ndarray, edges_step: float, fraction: float) -> float:
    """The value below which `fraction` of a histogram's mass lies (bin centre), bins of width edges_step from 0."""
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    return (index + 0.5) * edges_step


@dataclass(frozen=True)
class Tables:
    """The slice table of a volume's maps (one SliceRow per slice) and the statistics over its whole body."""

    slices: list[SliceRow]
    body: RegionStats


def tabulate(
    volume: CTVolume,
    quality: np.ndarray,
    noise_sd: np.ndarray,
    score: np.ndarray | None = None,
    score_sd: np.ndarray | None = None,
) -> Tables:
    """One pass over the maps, slab by slab in the slab threads, one slice at a time (no body-sized copies):

    - slices: per slice, statistics over its assessed (finite-quality) voxels, and its 0-4 score and that score's
      SD when given (float (z,), NaN where not scored);
    - body: statistics over every assessed voxel of the volume. Means are exact; the quality percentiles are exact
      to 1/QUALITY_BINS and the noise median to NOISE_BIN_HU (histograms).
    """
    depth = volume.shape[0]
    positions = volume.slice_positions_mm()
    missing = np.full(depth, np.nan)
    score = missing if score is None else score
    score_sd = missing if score_sd is None else score_sd
    rows: list[SliceRow | None] = [None] * depth
    quality_counts = np.zeros(QUALITY_BINS, dtype=np.int64)
    noise_counts = np.zeros(int(NOISE_MAX_HU / NOISE_BIN_HU) + 1, dtype=np.int64)
    sums = np.zeros((depth, 2))  # per slice: quality, HU
    lock = threading.Lock()

    def add(start: int, stop: int) -> None:  # maps may be staging.SlabMaps: read a slab at a time
        slab_quality, slab_noise, slab_hu = quality[start:stop], noise_sd[start:stop], volume.hu[start:stop]
        for offset, index in enumerate(range(start, stop)):
            assessed = np.isfinite(slab_quality[offset])
            values, noise, hu = slab_quality[offset][assessed], slab_noise[offset][assessed], slab_hu[offset][assessed]
            rows[index] = SliceRow(
                index,
                float(positions[index]),
                values.size,
                region_statistics(values, noise, hu),
                float(score[index]),
                float(score_sd[index]),
            )
            if not values.size:
                continue
            sums[index] = values.sum(dtype=np.float64), hu.sum(dtype=np.float64)
            bins = np.clip((values * QUALITY_BINS).astype(np.int64), 0, QUALITY_BINS - 1)
            noise = noise[np.isfinite(noise)]
            noise_bins = np.clip((noise / NOISE_BIN_HU).astype(np.int64), 0, noise_counts.size - 1)
            found = np.bincount(bins, minlength=QUALITY_BINS), np.bincount(noise_bins, minlength=noise_counts.size)
            with lock:
                quality_counts[:] += found[0]
                noise_counts[:] += found[1]

    run_over_slabs(add, depth)
    voxels = sum(row.voxels for row in rows)
    if voxels == 0:
        return Tables(rows, RegionStats())
    step = 1.0 / QUALITY_BINS
    body = RegionStats(
        quality_mean=_sum_in_order(sums[:, 0]) / voxels,
        quality_median=_histogram_quantile(quality_counts, step, 0.5),
        quality_p10=_histogram_quantile(quality_counts, step, 0.1),
        noise_sd_hu=_histogram_quantile(noise_counts, NOISE_BIN_HU, 0.5) if noise_counts.any() else math.nan,
        hu_mean=_sum_in_order(sums[:, 1]) / voxels,
    )
    return Tables(rows, body)
