"""Physics quality measures that need no training: local noise SD map, GNL, body mask, quality map, SNR/CNR.

How the noise map is made (cost O(voxels), independent of the window size):
1. Each slice is cut into cells of about half the window (at least 3x3 voxels, so a window has at least 36); one
   strided pass sums HU and HU^2 per cell.
2. A window is 2x2 adjacent cells (window size = 2 cells, stride 1 cell); its mean and local variance come from
   the four cell sums. Structure (edges, vessels, texture) only ever adds to a window's variance, so a window counts
   as noise-only when its mean is tissue (NOISE_TISSUE_HU) and its SD is below NOISE_ONLY_RATIO times its slice's
   GNL (the mode of the slice's soft-tissue window SDs, which edges cannot move). Only noise-only windows whose
   eight neighbours are noise-only too are kept, which drops windows that clip an edge. Local noise is therefore
   resolved up to NOISE_ONLY_RATIO times the slice's GNL.
3. Variances of kept windows are averaged over neighbouring kept windows (Gaussian normalised convolution,
   sigma 1 window); windows with none nearby take wider averages (sigma 4 windows), then the slice median, then
   the volume median. Edges never enter the estimate; regions next to them inherit it from noise-only
   neighbours.
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
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import ndimage

from ctqa.errors import InputError
from ctqa.physics.components import SlabComponents
from ctqa.physics.ssim import SSIM_K2, SSIM_WINDOW_HU
from ctqa.slabs import SLAB_SLICES, ProgressCallback, run_over_slabs
from ctqa.staging import ComputedMap, PackedMask, SlabMap
from ctqa.volume import CTVolume

SOFT_TISSUE_HU = (0.0, 150.0)  # Christianson's soft-tissue range for the GNL
FAT_HU = (-150.0, -50.0)  # fat, the low side of the CNR
NOISE_TISSUE_HU = (-200.0, 300.0)  # window means that may feed the noise map: fat to enhanced organs
BODY_THRESHOLD_HU = -500.0
DEFAULT_WINDOW_MM = 6.0
MIN_CELL_VOXELS = 3
NOISE_ONLY_RATIO = 1.5
MIN_MODE_WINDOWS = 50  # fewer soft-tissue windows in a slice: its GNL is the volume's
CLIP_MARGIN_HU = 50.0  # noise windows keep this far from the ends of a display window's clip range
CLIPPED_BODY_FRACTION = 0.02  # body threshold of clipped data: this fraction of the clip range above its low end
MIN_GNL_HU = 0.5  # below: no acquired CT (quantum noise is never this low); figures per GNL are meaningless
NOISE_SD50_HU = SSIM_K2 * (SSIM_WINDOW_HU[1] - SSIM_WINDOW_HU[0])


@dataclass
class NoiseAnalysis:
    """Results of the physics pass over one volume.

    noise_sd: float32 (z, y, x) local noise SD in HU, NaN outside the body: a staging.SlabMap computed slab by slab
        from the window grid on each read (about 1.5 ms per 512 x 512 slice), indexable and iterable like an array,
        np.asarray(noise_sd) for the whole map.
    slice_noise_sd: (z,) median noise SD (HU) of the slice's kept noise-only windows, NaN where it has none.
    gnl: global noise level in HU (NaN without soft tissue); snr, cnr: see physics_summary().
    window_voxels: (y, x) window size in voxels.
    notes: one-line remarks for the user (why a figure is not reported).
    body: the bool (z, y, x) body mask kept bit-packed (``with_packed_body``), None: read from noise_sd.
    """

    noise_sd: np.ndarray
    slice_noise_sd: np.ndarray
    gnl: float
    snr: float
    cnr: float
    soft_tissue_hu: float
    fat_hu: float
    window_voxels: tuple[int, int]
    notes: tuple[str, ...] = ()
    body: SlabMap | None = None

    @property
    def body_mask(self) -> SlabMap:
        """bool (z, y, x): voxels inside the body (where noise_sd is finite, the maps are defined): the packed mask
        of ``with_packed_body``, else read slab by slab from noise_sd."""
        if self.body is not None:
            return self.body
        noise_sd = self.noise_sd
        return ComputedMap(noise_sd.shape, bool, lambda start, stop: np.isfinite(noise_sd[start:stop]))

    def physics_quality(self, sd50: float = NOISE_SD50_HU) -> SlabMap:
        """float32 (z, y, x) physics quality map 1 / (1 + (sd / sd50)^2) (see module docstring), NaN outside; read
        slab by slab from noise_sd."""
        return quality_from_noise(self.noise_sd, sd50)

    def body_voxels(self) -> np.ndarray:
        """(z,) int64 number of body voxels of each slice."""
        counts = np.zeros(self.noise_sd.shape[0], dtype=np.int64)
        for start, slab in self.body_mask.slabs(SLAB_SLICES):
            counts[start : start + len(slab)] = np.count_nonzero(slab.reshape(len(slab), -1), axis=1)
        return counts

    def with_packed_body(self, progress: ProgressCallback | None = None) -> NoiseAnalysis:
        """This analysis with its body mask computed once, slab by slab in threads, and kept bit-packed
        (staging.PackedMask, 1/8 byte per voxel): the passes that need only the body then read it without
        interpolating the noise map. The noise map itself stays computed on read: an assessment reads it twice (the
        tables, the output file), and a staging file of it cost more than that to write (measured for 300 slices of
        512 x 512: 2.5 s of CPU, a computed pass 0.5 s)."""
        if self.body is not None:
            return self
        body = PackedMask(self.noise_sd.shape)

        def pack(start: int, stop: int) -> None:
            body.write(start, np.isfinite(self.noise_sd[start:stop]))

        run_over_slabs(pack, body.shape[0], progress, message="body mask")
        return replace(self, body=body)


def quality_from_noise(noise_sd: np.ndarray, sd50: float = NOISE_SD50_HU, out: np.ndarray | None = None) -> np.ndarray:
    """Quality in [0, 1] from noise SD in HU: 1 / (1 + (sd / sd50)^2), float32; NaN stays NaN. A staging.SlabMap
    gives a SlabMap computed slab by slab (out must then be None)."""
    if isinstance(noise_sd, SlabMap) and out is None:

        def quality(start: int, stop: int) -> np.ndarray:
            return quality_from_noise(noise_sd[start:stop], sd50)

        return ComputedMap(noise_sd.shape, np.float32, quality)
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


@dataclass
class _WindowStats:
    """Per-window mean (HU) and variance (HU^2) of one slab on the window grid (z, ny-1, nx-1)."""

    mean: np.ndarray
    variance: np.ndarray


def _window_stats(sum_hu: np.ndarray, sum_sq: np.ndarray, cell_voxels: int) -> _WindowStats:
    window_voxels = 4 * cell_voxels
    window_sum = _sum_2x2(sum_hu)
    window_ss = np.maximum(_sum_2x2(sum_sq) - window_sum * window_sum / window_voxels, 0.0)
    return _WindowStats(
        (window_sum / window_voxels).astype(np.float32), (window_ss / (window_voxels - 1)).astype(np.float32)
    )


def _away_from_structure(noise_only: np.ndarray) -> np.ndarray:
    """Noise-only windows whose 8 in-plane neighbours are noise-only too: drops windows that clip an edge."""
    _, height, width = noise_only.shape
    padded = np.pad(noise_only, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    kept = noise_only.copy()
    for dy in range(3):
        for dx in range(3):
            kept &= padded[:, dy : dy + height, dx : dx + width]
    return kept


def _blur_planes(stack: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian blur (sigma in grid steps, truncated at 2 sigma, zeros outside) of each plane of (z, h, w)."""
    size = 2 * int(round(2.0 * sigma)) + 1
    out = np.empty_like(stack)
    for plane, blurred in zip(stack, out):
        cv2.GaussianBlur(plane, (size, size), sigma, dst=blurred, borderType=cv2.BORDER_CONSTANT)
    return out


def _fill_variance(variance: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise variance on the window grid (z, gy, gx) of a slab from kept windows only (step 3), NaN where no kept
    window lies within reach (``_fill_missing`` fills those from the volume).

    Returns (variance map, per-slice median variance of kept windows with NaN where a slice has none).
    """
    weights = kept.astype(np.float32)
    weighted = variance * weights
    estimate = np.full(variance.shape, np.nan, dtype=np.float32)
    for sigma in (1.0, 4.0):
        numerator, support = _blur_planes(weighted, sigma), _blur_planes(weights, sigma)
        usable = np.isnan(estimate) & (support > 1e-3)
        estimate[usable] = numerator[usable] / support[usable]
    per_slice = np.array([np.median(v[k]) if k.any() else np.nan for v, k in zip(variance, kept)], dtype=np.float32)
    return estimate, per_slice


def _fill_missing(variance: np.ndarray, per_slice: np.ndarray) -> None:
    """Fill the NaN windows of a volume's variance grid (z, gy, gx) in place: with their slice's median variance,
    else the median over slices. Left as it is when no slice has noise-only tissue (the map stays undefined)."""
    if np.isnan(per_slice).all():
        return
    fallback = np.where(np.isnan(per_slice), np.nanmedian(per_slice), per_slice)
    for start in range(0, len(variance), SLAB_SLICES):
        part = variance[start : start + SLAB_SLICES]
        missing = np.isnan(part)
        part[missing] = np.broadcast_to(fallback[start : start + SLAB_SLICES, None, None], part.shape)[missing]


def _fill_body_holes(body: np.ndarray) -> np.ndarray:
    """body (z, ny, nx) with its in-plane holes filled: background components (in-plane connectivity) that do not
    touch the slice border."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    background, _ = ndimage.label(~body, structure=in_plane)
    border = np.concatenate([background[:, [0, -1], :].ravel(), background[:, :, [0, -1]].ravel()])
    return body | ~np.isin(background, np.unique(border))


def _body_code(dense: np.ndarray) -> np.ndarray:
    """uint8 (z, ny, nx) body code of the cell grid from the cells denser than the body threshold (dense): 0 outside,
    1 body, 2 body interior. The body is the largest 3D component of dense (labelled a slab at a time, as one
    labelling of the volume would: physics.components), holes filled per slice; the interior is the body eroded
    in-plane by one cell (lungs and bowel gas stay in)."""
    slabs = [(start, min(start + BODY_SLAB_SLICES, len(dense))) for start in range(0, len(dense), BODY_SLAB_SLICES)]
    components = SlabComponents()
    for start, stop in slabs:
        components.add(*ndimage.label(dense[start:stop]))
    component, sizes, _ = components.finish()
    code = np.zeros(dense.shape, dtype=np.uint8)
    if len(sizes) <= 1:
        return code
    sizes[0] = 0
    largest = int(sizes.argmax())
    for (start, stop), offset in zip(slabs, components.offsets):
        labels, _ = ndimage.label(dense[start:stop])
        body = (component[np.where(labels > 0, labels + offset, 0)] == largest) & (labels > 0)
        body = _fill_body_holes(body)
        interior = body.copy()
        interior[:, 1:] &= body[:, :-1]
        interior[:, :-1] &= body[:, 1:]
        interior[:, :, 1:] &= body[:, :, :-1]
        interior[:, :, :-1] &= body[:, :, 1:]
        code[start:stop] = body.astype(np.uint8) + interior
    return code


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


def _outside_body(hu: np.ndarray, body_code: np.ndarray, cell: tuple[int, int], body_hu: float) -> np.ndarray:
    """bool (z, y, x): voxels outside the body.

    body_code is per cell (z, ny, nx): 0 outside, 1 body border, 2 body interior. Border cells keep only voxels
    denser than body_hu; interior cells keep everything (lungs, bowel gas).
    """
    depth, height, width = hu.shape
    codes = np.repeat(np.repeat(body_code, cell[0], axis=1), cell[1], axis=2)
    codes = np.pad(codes, ((0, 0), (0, height - codes.shape[1]), (0, width - codes.shape[2])), mode="edge")
    return (codes == 0) | ((codes == 1) & (hu <= body_hu))


#: Window-grid slices taken at a time by the volume-wide reductions (GNL, soft-tissue and fat means).
SUMMARY_SLICES = 64
#: Cell-grid slices labelled at a time when the body is found (_body_code).
BODY_SLAB_SLICES = 64
#: Values binned at a time by the histogram modes.
HISTOGRAM_CHUNK = 1 << 20


def _physics_summary(window_mean: np.ndarray, window_var: np.ndarray) -> tuple[float, float, float, float]:
    """(GNL in HU, histogram top of the soft-tissue window SDs, soft-tissue mean HU, fat mean HU) from all windows
    of the volume (z, gy, gx), a few slices at a time; see module docstring for GNL. The top (99th percentile, NaN
    without soft tissue) sets the bins of every slice's GNL (``_slice_gnl``)."""
    chunks = range(0, len(window_mean), SUMMARY_SLICES)

    def masks(start: int) -> tuple[np.ndarray, np.ndarray]:
        mean = window_mean[start : start + SUMMARY_SLICES]
        return (mean >= SOFT_TISSUE_HU[0]) & (mean <= SOFT_TISSUE_HU[1]), (mean >= FAT_HU[0]) & (mean <= FAT_HU[1])

    counts = np.array([[np.count_nonzero(mask) for mask in masks(start)] for start in chunks], dtype=np.int64)
    # Filled in place, in the order boolean indexing of the whole grid gives (the means are float32 sums over the
    # same array in the same order), without the list of parts beside the joined array.
    soft_sd = np.empty(int(counts[:, 0].sum()), dtype=np.float32)
    soft_means = np.empty_like(soft_sd)
    fat_means = np.empty(int(counts[:, 1].sum()), dtype=np.float32)
    soft_at = fat_at = 0
    for start, (soft_count, fat_count) in zip(chunks, counts):
        soft, fat = masks(start)
        mean = window_mean[start : start + SUMMARY_SLICES]
        soft_means[soft_at : soft_at + soft_count] = mean[soft]
        soft_sd[soft_at : soft_at + soft_count] = np.sqrt(window_var[start : start + SUMMARY_SLICES][soft])
        fat_means[fat_at : fat_at + fat_count] = mean[fat]
        soft_at, fat_at = soft_at + soft_count, fat_at + fat_count
    soft_mean = float(soft_means.mean()) if soft_means.size else math.nan
    fat_mean = float(fat_means.mean()) if fat_means.size else math.nan
    del soft_means, fat_means
    # soft_sd is ours: the percentile may partition it in place (the GNL's histogram does not depend on the order)
    top = float(np.percentile(soft_sd, 99.0, overwrite_input=True)) if soft_sd.size else math.nan
    gnl = float(histogram_modes(soft_sd, None, 1, top)[0]) if soft_sd.size >= MIN_MODE_WINDOWS else math.nan
    return gnl, top, soft_mean, fat_mean


def histogram_modes(
    values: np.ndarray, groups: np.ndarray | None, group_count: int, top: float | None = None
) -> np.ndarray:
    """Mode of positive values per group (groups: int array like values, 0..group_count-1; None: one group);
    NaN for empty groups.

    Peak of a histogram at 1/1000 of top (default: the 99th percentile of values), smoothed over 1/100 of it.
    """
    modes = np.full(group_count, np.nan)
    if values.size == 0:
        return modes
    if groups is None:
        groups = np.zeros(values.shape, dtype=np.int64) if group_count != 1 else None
    if top is None:
        top = float(np.percentile(values, 99.0))
    if top <= 0:
        if groups is None:
            return np.zeros(1)
        return np.where(np.bincount(groups, minlength=group_count) > 0, 0.0, np.nan)
    bins = 1000
    counts = np.zeros((group_count, bins), dtype=np.int64)
    for start in range(0, values.size, HISTOGRAM_CHUNK):  # a chunk at a time: no int64 copy of all values
        index = np.minimum((values[start : start + HISTOGRAM_CHUNK] * (bins / top)).astype(np.int64), bins - 1)
        if groups is not None:
            index += groups[start : start + HISTOGRAM_CHUNK] * bins
        counts += np.bincount(index, minlength=group_count * bins).reshape(group_count, bins)
    smoothed = ndimage.gaussian_filter1d(counts.astype(np.float64), sigma=bins / 100, axis=1, mode="constant")
    found = counts.sum(axis=1) > 0
    modes[found] = (smoothed[found].argmax(axis=1) + 0.5) * (top / bins)
    return modes


def histogram_mode(values: np.ndarray) -> float:
    """Mode of a sample of positive values (see histogram_modes)."""
    return float(histogram_modes(values, None, 1)[0])


def _slice_gnl(window_mean: np.ndarray, window_sd: np.ndarray, volume_gnl: float, top: float) -> np.ndarray:
    """(z,) GNL of each slice of a slab from its soft-tissue windows, on the volume's histogram bins (top); the
    volume's GNL where a slice has too few."""
    soft = (window_mean >= SOFT_TISSUE_HU[0]) & (window_mean <= SOFT_TISSUE_HU[1])
    slice_index = np.broadcast_to(np.arange(len(window_mean))[:, None, None], window_mean.shape)
    modes = histogram_modes(window_sd[soft], slice_index[soft], len(window_mean), top)
    enough = soft.sum(axis=(1, 2)) >= MIN_MODE_WINDOWS
    return np.where(enough, modes, volume_gnl)


def _thresholds(volume: CTVolume) -> tuple[float, tuple[float, float]]:
    """(body threshold HU, HU range of window means that may feed the noise map) for this volume.

    Values clipped by a display window (volume.clipped_hu) are censored: the body threshold moves just above the
    lower clip (air there reads as the clip value), and noise windows keep CLIP_MARGIN_HU away from both ends,
    where clipping would shrink the measured SD.
    """
    if volume.clipped_hu is None:
        return BODY_THRESHOLD_HU, NOISE_TISSUE_HU
    low, high = volume.clipped_hu
    body_hu = max(BODY_THRESHOLD_HU, low + CLIPPED_BODY_FRACTION * (high - low))
    tissue = (max(NOISE_TISSUE_HU[0], low + CLIP_MARGIN_HU), min(NOISE_TISSUE_HU[1], high - CLIP_MARGIN_HU))
    return body_hu, tissue


def cell_size(spacing_xy: tuple[float, float], window_mm: float) -> tuple[int, int]:
    """Cell size (cy, cx) in voxels: half the window, at least MIN_CELL_VOXELS."""
    return tuple(max(MIN_CELL_VOXELS, int(round(window_mm / 2.0 / s))) for s in spacing_xy[::-1])


def analyse_noise(
    volume: CTVolume, window_mm: float = DEFAULT_WINDOW_MM, progress: ProgressCallback | None = None
) -> NoiseAnalysis:
    """Noise SD map, GNL, SNR and CNR of a CT volume (see module docstring); the body is where noise_sd is finite.

    Only the window grid (about 1/16 of the voxels) is held: the volume is read in float32 slabs (its int16 HU
    converted per slab), and noise_sd is computed slab by slab when read.
    """
    depth, height, width = volume.shape
    body_hu, tissue_hu = _thresholds(volume)
    cy, cx = cell_size(volume.spacing[:2], window_mm)
    ny, nx = height // cy, width // cx
    if ny < 2 or nx < 2:
        raise InputError(
            f"{volume.source}: slice of {height}x{width} voxels is smaller than one "
            f"{2 * cy}x{2 * cx}-voxel noise window"
        )
    dense = np.empty((depth, ny, nx), dtype=bool)
    window_mean = np.empty((depth, ny - 1, nx - 1), dtype=np.float32)
    window_var = np.empty_like(window_mean)

    def gather_statistics(start: int, stop: int) -> None:
        sum_hu, sum_sq = _cell_sums(volume.hu_slab(start, stop), (cy, cx))
        dense[start:stop] = (sum_hu / (cy * cx)).astype(np.float32) > body_hu
        found = _window_stats(sum_hu, sum_sq, cy * cx)
        window_mean[start:stop], window_var[start:stop] = found.mean, found.variance

    run_over_slabs(gather_statistics, depth, progress, (0.0, 0.8), "noise statistics")
    gnl, top, soft_mean, fat_mean = _physics_summary(window_mean, window_var)
    slice_variance = np.empty(depth, dtype=np.float32)

    def estimate_variance(start: int, stop: int) -> None:  # window_var becomes the variance estimate, in place
        mean, variance = window_mean[start:stop], window_var[start:stop]
        window_sd = np.sqrt(variance)
        slice_gnl = _slice_gnl(mean, window_sd, gnl, top)
        tissue = (mean >= tissue_hu[0]) & (mean <= tissue_hu[1])
        noise_only = tissue & (window_sd < NOISE_ONLY_RATIO * slice_gnl[:, None, None])
        variance[:], slice_variance[start:stop] = _fill_variance(variance, _away_from_structure(noise_only))

    run_over_slabs(estimate_variance, depth, progress, (0.8, 1.0), "noise estimate")
    window_mean = None  # freed before the body is labelled
    _fill_missing(window_var, slice_variance)
    noise_grid = np.sqrt(window_var, out=window_var)
    body_code = _body_code(dense)
    dense = None
    hu = volume.hu

    def noise_slab(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, height, width), dtype=np.float32)
        _interpolate_columns(_interpolate_rows(noise_grid[start:stop], cy, height), cx, width, out)
        out[_outside_body(hu[start:stop], body_code[start:stop], (cy, cx), body_hu)] = np.nan
        return out

    notes = ()
    if math.isnan(gnl):
        notes = (f"fewer than {MIN_MODE_WINDOWS} soft-tissue windows (0..150 HU): GNL, SNR and CNR not reported",)
    elif gnl < MIN_GNL_HU:  # NaN compares False: "no soft tissue" keeps its NaN without a note
        notes = (
            f"no measurable noise (GNL {gnl:.2f} HU < {MIN_GNL_HU:g} HU): not an acquired CT, or heavily "
            "processed; GNL, SNR and CNR not reported",
        )
        gnl = math.nan
    snr = (soft_mean + 1000.0) / gnl
    cnr = (soft_mean - fat_mean) / gnl
    return NoiseAnalysis(
        ComputedMap(volume.shape, np.float32, noise_slab),
        np.sqrt(slice_variance),
        gnl,
        snr,
        cnr,
        soft_mean,
        fat_mean,
        (2 * cy, 2 * cx),
        notes,
    )
