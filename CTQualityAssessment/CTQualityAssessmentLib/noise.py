"""Physics quality measures that need no training: local noise SD map, GNL, body mask, quality map, SNR/CNR.

How the noise map is made (cost O(voxels), independent of the window size):
1. Each slice is cut into cells of about half the window (at least 3x3 voxels, so a window has at least 36); one
   strided pass sums HU and HU^2 per cell.
2. A window is 2x2 adjacent cells (window size = 2 cells, stride 1 cell). Its local variance comes from the four
   cell sums. A window is *flat* when its mean is tissue (NOISE_TISSUE_HU) and two tests at FLATNESS_ALPHA find no
   structure in it: an F test of the spread between the four cell means against the spread within them (a step
   edge through the window), and Cochran's test of the largest cell variance (an edge or vessel inside one cell).
   Only flat windows whose eight neighbours are flat too are kept, which drops windows clipping an edge.
3. Variances of kept windows are averaged over neighbouring kept windows (Gaussian normalised convolution,
   sigma 1 window); windows with none nearby take wider averages (sigma 4 windows), then the slice median, then
   the volume median. Edges never enter the estimate; regions next to them inherit it from flat neighbours.
4. The noise SD on the window grid is interpolated (bilinear, in-plane) to every voxel; voxels outside the body
   are NaN.

Quality map (1 = best): q = C2 / (C2 + (sd / W)^2) = 1 / (1 + (sd / sd50)^2), the SSIM (Noise2Quality settings,
ssim.py) that a flat region with noise SD `sd` has against its noise-free self: C2 = (K2 * 1)^2 and W the width of
SSIM_WINDOW_HU, so sd50 = K2 * W = 12 HU with the default 400 HU window. It therefore reads on the same scale as
the reference SSIM map and the learned maps.

GNL (Christianson et al. 2015): mode of the histogram of local SDs of all windows whose mean is soft tissue
(SOFT_TISSUE_HU), edges included as in the paper (they sit in the tail, away from the mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from .errors import InputError
from .slabs import ProgressCallback, run_over_slabs
from .ssim import SSIM_K2, SSIM_WINDOW_HU
from .volume import CTVolume

SOFT_TISSUE_HU = (0.0, 150.0)  # Christianson's soft-tissue range for the GNL
FAT_HU = (-150.0, -50.0)  # fat, the low side of the CNR
NOISE_TISSUE_HU = (-200.0, 300.0)  # window means that may feed the noise map: fat to enhanced organs
BODY_THRESHOLD_HU = -500.0
DEFAULT_WINDOW_MM = 6.0
MIN_CELL_VOXELS = 3
FLATNESS_ALPHA = 0.01
NOISE_SD50_HU = SSIM_K2 * (SSIM_WINDOW_HU[1] - SSIM_WINDOW_HU[0])


@dataclass
class NoiseAnalysis:
    """Results of the physics pass over one volume.

    noise_sd: float32 (z, y, x) local noise SD in HU, NaN outside the body.
    quality: float32 (z, y, x) quality in [0, 1], 1 = best, NaN outside the body.
    slice_noise_sd: (z,) median noise SD (HU) of the slice's flat tissue windows, NaN where it has none.
    gnl: global noise level in HU (NaN without soft tissue); snr, cnr: see physics_summary().
    window_voxels: (y, x) window size in voxels.
    """

    noise_sd: np.ndarray
    quality: np.ndarray
    slice_noise_sd: np.ndarray
    gnl: float
    snr: float
    cnr: float
    soft_tissue_hu: float
    fat_hu: float
    window_voxels: tuple[int, int]

    @property
    def body_mask(self) -> np.ndarray:
        """bool (z, y, x): voxels inside the body (where the maps are defined)."""
        return np.isfinite(self.quality)


def quality_from_noise(noise_sd: np.ndarray, sd50: float = NOISE_SD50_HU, out: np.ndarray | None = None) -> np.ndarray:
    """Quality in [0, 1] from noise SD in HU: 1 / (1 + (sd / sd50)^2), float32; NaN stays NaN."""
    quality = np.divide(np.asarray(noise_sd, dtype=np.float32), np.float32(sd50), out=out)
    np.multiply(quality, quality, out=quality)
    quality += np.float32(1.0)
    return np.reciprocal(quality, out=quality)


def _cell_sums(slab: np.ndarray, cell: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sums of HU and HU^2 over cells of (cy, cx) voxels: two float64 arrays (z, ny, nx)."""
    cy, cx = cell
    depth, height, width = slab.shape
    ny, nx = height // cy, width // cx
    cropped = slab[:, : ny * cy, : nx * cx]
    squared = cropped * cropped
    sums = []
    for values in (cropped, squared):
        # Strided adds beat reshape().sum() and einsum here: each pass reads 1/c of the array in order.
        by_column = values.reshape(depth, ny * cy, nx, cx)
        row_sums = by_column[..., 0].copy()
        for k in range(1, cx):
            row_sums += by_column[..., k]
        by_row = row_sums.reshape(depth, ny, cy, nx)
        cell_sums = by_row[:, :, 0].astype(np.float64)
        for k in range(1, cy):
            cell_sums += by_row[:, :, k]
        sums.append(cell_sums)
    return sums[0], sums[1]


def _sum_2x2(cells: np.ndarray) -> np.ndarray:
    """Sum over each 2x2 block of adjacent cells: (z, ny, nx) -> (z, ny-1, nx-1)."""
    return cells[:, :-1, :-1] + cells[:, 1:, :-1] + cells[:, :-1, 1:] + cells[:, 1:, 1:]


def _max_2x2(cells: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(cells[:, :-1, :-1], cells[:, 1:, :-1]), np.maximum(cells[:, :-1, 1:], cells[:, 1:, 1:]))


def _flatness_limits(cell_voxels: int) -> tuple[float, float]:
    """Critical values (F ratio, Cochran's C) above which a 2x2-cell window holds structure, not just noise."""
    window_voxels = 4 * cell_voxels
    f_limit = stats.f.ppf(1 - FLATNESS_ALPHA, 3, window_voxels - 4)
    df = cell_voxels - 1
    f_cochran = stats.f.ppf(1 - FLATNESS_ALPHA / 4, df, 3 * df)
    return float(f_limit), float(1.0 / (1.0 + 3.0 / f_cochran))


@dataclass
class _WindowStats:
    """Per-window statistics of one slab on the window grid (z, ny-1, nx-1)."""

    mean: np.ndarray
    variance: np.ndarray
    flat: np.ndarray


def _window_stats(sum_hu: np.ndarray, sum_sq: np.ndarray, cell_voxels: int, limits: tuple[float, float]) -> _WindowStats:
    n = cell_voxels
    cell_ss = np.maximum(sum_sq - sum_hu * sum_hu / n, 0.0)  # within-cell sum of squared deviations
    window_sum = _sum_2x2(sum_hu)
    window_ss = np.maximum(_sum_2x2(sum_sq) - window_sum * window_sum / (4 * n), 0.0)
    within_ss = _sum_2x2(cell_ss)
    between_ss = np.maximum(window_ss - within_ss, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_ratio = (between_ss / 3.0) / (within_ss / (4 * n - 4))
        cochran = _max_2x2(cell_ss) / within_ss
    mean = window_sum / (4 * n)
    f_limit, cochran_limit = limits
    flat = (f_ratio < f_limit) & (cochran < cochran_limit) & (mean >= NOISE_TISSUE_HU[0]) & (mean <= NOISE_TISSUE_HU[1])
    return _WindowStats(mean.astype(np.float32), (window_ss / (4 * n - 1)).astype(np.float32), flat)


def _away_from_structure(flat: np.ndarray) -> np.ndarray:
    """Flat windows whose 8 in-plane neighbours are flat too: drops windows that clip an edge by a few voxels."""
    _, height, width = flat.shape
    padded = np.pad(flat, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    kept = flat.copy()
    for dy in range(3):
        for dx in range(3):
            kept &= padded[:, dy : dy + height, dx : dx + width]
    return kept


def _fill_variance(variance: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise variance on the window grid (z, gy, gx) from flat windows only, filled into the rest (step 3).

    Returns (variance map, per-slice median variance of flat windows with NaN where a slice has none).
    """
    weights = flat.astype(np.float32)
    weighted = variance * weights
    estimate = np.full(variance.shape, np.nan, dtype=np.float32)
    for sigma in (1.0, 4.0):
        numerator = ndimage.gaussian_filter(weighted, (0, sigma, sigma), mode="constant", truncate=2.0)
        support = ndimage.gaussian_filter(weights, (0, sigma, sigma), mode="constant", truncate=2.0)
        usable = np.isnan(estimate) & (support > 1e-3)
        estimate[usable] = numerator[usable] / support[usable]
    per_slice = np.array([np.median(v[f]) if f.any() else np.nan for v, f in zip(variance, flat)], dtype=np.float32)
    if np.isnan(per_slice).all():
        return estimate, per_slice  # no flat tissue anywhere: the map stays undefined
    fallback = np.where(np.isnan(per_slice), np.nanmedian(per_slice), per_slice)
    return np.where(np.isnan(estimate), fallback[:, None, None], estimate), per_slice


def _body_cells(cell_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body on the cell grid (z, ny, nx): largest 3D component above BODY_THRESHOLD_HU, holes filled per slice.

    Returns (body, interior) where interior is the body eroded in-plane by one cell (lungs and bowel gas stay in).
    """
    dense = cell_mean > BODY_THRESHOLD_HU
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense, dense
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == sizes.argmax()
    # Holes: background components (in-plane connectivity) that do not touch the slice border.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    background, _ = ndimage.label(~body, structure=in_plane)
    border = np.concatenate([background[:, [0, -1], :].ravel(), background[:, :, [0, -1]].ravel()])
    body |= ~np.isin(background, np.unique(border))
    interior = body.copy()
    interior[:, 1:] &= body[:, :-1]
    interior[:, :-1] &= body[:, 1:]
    interior[:, :, 1:] &= body[:, :, :-1]
    interior[:, :, :-1] &= body[:, :, 1:]
    return body, interior


def _interpolate_columns(grid: np.ndarray, cell: int, width: int, out: np.ndarray) -> None:
    """Linear interpolation along x of a window grid (z, h, g) (centres at (j+1)*cell - 0.5) into out (z, h, width).

    The voxel at x = m*cell + k lies between grid points m-1 and m (clamped at the ends) with weight (k+0.5)/cell
    on the upper one, so each phase k is one vectorised multiply-add over all cells.
    """
    cells = width // cell
    padded = np.concatenate([grid[..., :1], grid, np.repeat(grid[..., -1:], cells + 1 - grid.shape[-1], axis=-1)], -1)
    lower, upper = padded[..., :cells], padded[..., 1 : cells + 1]
    by_phase = out[..., : cells * cell].reshape(*out.shape[:-1], cells, cell)
    for k in range(cell):
        weight = np.float32((k + 0.5) / cell)
        np.multiply(lower, np.float32(1.0) - weight, out=by_phase[..., k])
        by_phase[..., k] += upper * weight
    out[..., cells * cell :] = padded[..., cells : cells + 1]


def _interpolate_rows(grid: np.ndarray, cell: int, height: int) -> np.ndarray:
    """Linear interpolation along y of a window grid (z, g, w) to (z, height, w); small, so plain indexing."""
    position = (np.arange(height) + 0.5) / cell - 1.0
    lower = np.clip(np.floor(position).astype(int), 0, grid.shape[1] - 1)
    upper = np.minimum(lower + 1, grid.shape[1] - 1)
    weight = np.clip(position - lower, 0.0, 1.0).astype(np.float32)[None, :, None]
    return grid[:, lower] * (1 - weight) + grid[:, upper] * weight


def _outside_body(hu: np.ndarray, body_code: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """bool (z, y, x): voxels outside the body.

    body_code is per cell (z, ny, nx): 0 outside, 1 body border, 2 body interior. Border cells keep only voxels
    denser than BODY_THRESHOLD_HU; interior cells keep everything (lungs, bowel gas).
    """
    depth, height, width = hu.shape
    codes = np.repeat(np.repeat(body_code, cell[0], axis=1), cell[1], axis=2)
    codes = np.pad(codes, ((0, 0), (0, height - codes.shape[1]), (0, width - codes.shape[2])), mode="edge")
    return (codes == 0) | ((codes == 1) & (hu <= BODY_THRESHOLD_HU))


def _physics_summary(stats_mean: np.ndarray, variance: np.ndarray) -> tuple[float, float, float]:
    """(GNL in HU, soft-tissue mean HU, fat mean HU) from all windows; see module docstring for GNL."""
    soft = (stats_mean >= SOFT_TISSUE_HU[0]) & (stats_mean <= SOFT_TISSUE_HU[1])
    fat = (stats_mean >= FAT_HU[0]) & (stats_mean <= FAT_HU[1])
    soft_sd = np.sqrt(variance[soft])
    gnl = histogram_mode(soft_sd) if soft_sd.size else math.nan
    soft_mean = float(stats_mean[soft].mean()) if soft.any() else math.nan
    fat_mean = float(stats_mean[fat].mean()) if fat.any() else math.nan
    return gnl, soft_mean, fat_mean


def histogram_mode(values: np.ndarray) -> float:
    """Mode of a sample of positive values: peak of a 0.1-HU-resolution histogram smoothed over 1 HU."""
    top = float(np.percentile(values, 99.0))
    if top <= 0:
        return 0.0
    bin_width = max(top / 1000.0, 1e-3)
    counts, edges = np.histogram(values, bins=int(math.ceil(top / bin_width)), range=(0.0, top))
    smoothed = ndimage.gaussian_filter1d(counts.astype(np.float64), sigma=max(1.0, top / 100.0 / bin_width))
    peak = int(smoothed.argmax())
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def cell_size(spacing_xy: tuple[float, float], window_mm: float) -> tuple[int, int]:
    """Cell size (cy, cx) in voxels: half the window, at least MIN_CELL_VOXELS."""
    return tuple(max(MIN_CELL_VOXELS, int(round(window_mm / 2.0 / s))) for s in spacing_xy[::-1])


def analyse_noise(
    volume: CTVolume, window_mm: float = DEFAULT_WINDOW_MM, progress: ProgressCallback | None = None
) -> NoiseAnalysis:
    """Noise SD map, quality map, GNL, SNR and CNR of a CT volume (see module docstring)."""
    hu = volume.hu
    depth, height, width = hu.shape
    cy, cx = cell_size(volume.spacing[:2], window_mm)
    ny, nx = height // cy, width // cx
    if ny < 2 or nx < 2:
        raise InputError(
            f"{volume.source}: slice of {height}x{width} voxels is smaller than one {2 * cy}x{2 * cx}-voxel noise window"
        )
    limits = _flatness_limits(cy * cx)
    cell_mean = np.empty((depth, ny, nx), dtype=np.float32)
    window_mean = np.empty((depth, ny - 1, nx - 1), dtype=np.float32)
    window_var = np.empty_like(window_mean)
    flat = np.empty(window_mean.shape, dtype=bool)

    def gather_statistics(start: int, stop: int) -> None:
        sum_hu, sum_sq = _cell_sums(hu[start:stop], (cy, cx))
        cell_mean[start:stop] = sum_hu / (cy * cx)
        found = _window_stats(sum_hu, sum_sq, cy * cx, limits)
        window_mean[start:stop], window_var[start:stop], flat[start:stop] = found.mean, found.variance, found.flat

    run_over_slabs(gather_statistics, depth, progress, (0.0, 0.5), "noise statistics")
    variance_grid, slice_variance = _fill_variance(window_var, _away_from_structure(flat))
    noise_grid = np.sqrt(variance_grid)
    body, interior = _body_cells(cell_mean)
    body_code = body.astype(np.uint8) + interior
    noise_sd = np.empty(hu.shape, dtype=np.float32)
    quality = np.empty(hu.shape, dtype=np.float32)

    def write_maps(start: int, stop: int) -> None:
        out = noise_sd[start:stop]
        _interpolate_columns(_interpolate_rows(noise_grid[start:stop], cy, height), cx, width, out)
        out[_outside_body(hu[start:stop], body_code[start:stop], (cy, cx))] = np.nan
        quality_from_noise(out, out=quality[start:stop])

    run_over_slabs(write_maps, depth, progress, (0.5, 1.0), "noise and quality maps")
    gnl, soft_mean, fat_mean = _physics_summary(window_mean, window_var)
    snr = (soft_mean + 1000.0) / gnl if gnl > 0 else math.nan
    cnr = (soft_mean - fat_mean) / gnl if gnl > 0 else math.nan
    return NoiseAnalysis(noise_sd, quality, np.sqrt(slice_variance), gnl, snr, cnr, soft_mean, fat_mean, (2 * cy, 2 * cx))
