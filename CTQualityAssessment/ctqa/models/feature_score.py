"""The physics-feature 0-4 score: an interpretable model on two noise measures taken on a fixed physical grid.

Why: a network that sees a whole slice reads the field of view and the pixel size as much as the image's quality
(docs/real_validation.md). This model cannot: every axial slice is resampled to GRID_MM pixels (Gaussian
anti-aliasing when its own pixels are smaller, linear interpolation), and on that grid two measures are taken from
the body's flat soft tissue only, so neither the field of view nor the padding around the body enters:

- ``noise_sd``: the slice's noise SD in HU (``physics.noise.analyse_noise``: median local SD of its noise-only
  soft-tissue windows), used as ln(noise_sd);
- ``nps_frequency``: the mean radial frequency (cycles/mm) of the noise power spectrum of flat soft-tissue patches
  (NPS_PATCH_MM side, detrended by a quadratic surface, Hann-tapered). It falls when an image is smoothed (denoising,
  soft kernels) and rises with sharp kernels: with the noise level it tells "quiet because smoothed" from "quiet
  because well exposed".

The score is monotone by construction: it falls with the noise level and rises with the NPS frequency, so a
smoother texture never reads better at the same noise. Smoothing lowers both features, so its net effect depends on
how noisy the image was (a mild smoothing of a noisy sharp-kernel image can raise the score), and the kernel moves
the score as much as the dose: compare within one kernel. With a = ln(noise_sd) and b = nps_frequency, each scaled
to 0..1 over the range seen in training, score = 4 / (1 + exp(-(c0 - c1 a - c2 a^2 + c3 b - c4 (1 - b)^2))) with
c1..c4 >= 0 (``design``; fitted by non-negative least squares on the logit of score / 4, ``ctqa-train
score-features``; the card says which target). The logistic link keeps the scale within 0..4 without a clip that
would tie the best images at 4. Features outside the trained range are clipped to it (nothing is extrapolated), and such
slices are counted for the out-of-domain note.

numpy and scipy only: this score needs neither torch nor the safetensors package (its weights file is read by
``plain_weights``, a few lines, so that a physics-only install can run it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft

from ctqa.errors import InputError
from ctqa.models.grid import on_model_grid
from ctqa.models.plain_weights import load_verified
from ctqa.models.registry import checkpoint_files
from ctqa.physics.noise import DEFAULT_WINDOW_MM, NoiseAnalysis, analyse_noise, cell_size
from ctqa.slabs import ProgressCallback, run_over_slabs
from ctqa.volume import CTVolume

#: Backbone name of feature-score model cards (card["architecture"]["backbone"]).
BACKBONE = "physics-features"
#: In-plane pixel size (mm) every slice is resampled to before its features are measured.
GRID_MM = 0.7
#: Side (mm) of the square soft-tissue patches of the noise power spectrum.
NPS_PATCH_MM = 12.0
#: Patch means (HU) that count as soft tissue; patches with any voxel further than NPS_MAX_SPREAD_HU from their mean
#: hold an edge. A patch is flat when its detrended SD is at most NPS_FLAT_RATIO times the slice's median.
NPS_TISSUE_HU = (-100.0, 150.0)
NPS_MAX_SPREAD_HU = 400.0
NPS_FLAT_RATIO = 1.3
#: Fewer flat patches in a slice: its NPS frequency is not measured (NaN) and the slice is not scored.
NPS_MIN_PATCHES = 5
FEATURES = ("ln_noise_sd", "nps_frequency")
#: Top of the 0-4 scale (the logistic link's asymptote).
SCORE_MAX = 4.0
#: Pixel sizes (mm) the score is validated for; outside, the summary says the score is out of domain. Coarser slices
#: are resampled up to GRID_MM, which smooths their noise (a finer reconstruction would show more): not validated.
PIXEL_RANGE_MM = (0.5, 0.8)
#: A display-window export must keep at least this HU range for the soft-tissue noise to be measurable.
MIN_CLIP_RANGE_HU = (-100.0, 150.0)
#: Share of scored slices with a feature outside the trained range above which the out-of-domain note is given.
OUT_OF_RANGE_SHARE = 0.5


@dataclass(frozen=True)
class SliceFeatures:
    """Per-slice features (z, len(FEATURES)) float64, NaN for a slice without measurable soft tissue."""

    values: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        """bool (z,): slices whose every feature was measured."""
        return np.isfinite(self.values).all(axis=1)


@dataclass(frozen=True)
class FeatureScoreModel:
    """Coefficients of the design (``design``; the logit of score / SCORE_MAX), and the trained range of each
    feature (low, high)."""

    coefficients: np.ndarray
    feature_low: np.ndarray
    feature_high: np.ndarray

    def predict(self, features: SliceFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(score (z,) float64 on 0..4, NaN where a feature is missing; out_of_range (z,) bool)."""
        values = features.values
        clipped = np.clip(values, self.feature_low, self.feature_high)
        out_of_range = features.measured & (clipped != values).any(axis=1)
        logit = design(clipped, self.feature_low, self.feature_high) @ self.coefficients
        score = SCORE_MAX / (1.0 + np.exp(-logit))
        score[~features.measured] = np.nan
        return score, out_of_range

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coefficients": self.coefficients, "feature_low": self.feature_low, "feature_high": self.feature_high}


#: Terms of the design in (a, b), the two features scaled to 0..1 over their trained range; every coefficient but
#: the first (the intercept) is >= 0, which makes the score fall with noise and rise with the NPS frequency.
DESIGN_TERMS = ("1", "-a", "-a^2", "b", "-(1-b)^2")


def design(features: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(n, len(DESIGN_TERMS)) design of (n, 2) features, each scaled by (x - low) / (high - low)."""
    a, b = ((features - low) / (high - low)).T
    return np.stack([np.ones_like(a), -a, -a * a, b, -((1.0 - b) ** 2)], axis=1)


def to_grid(volume: CTVolume, grid_mm: float = GRID_MM) -> CTVolume:
    """volume with each axial slice resampled to grid_mm square pixels (``grid.on_model_grid``); z unchanged."""
    pixel_yx = (volume.spacing[1], volume.spacing[0])
    if all(abs(pixel / grid_mm - 1.0) < 1e-3 for pixel in pixel_yx):
        return volume
    hu = on_model_grid(volume.hu, pixel_yx, grid_mm)
    spacing = (volume.spacing[0] * volume.shape[2] / hu.shape[2], volume.spacing[1] * volume.shape[1] / hu.shape[1])
    return replace(volume, hu=hu, spacing=(*spacing, volume.spacing[2]))


@functools.cache
def _quadratic_basis(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(surfaces, inverse), both (6, size^2): the quadratic surfaces of a size x size patch (what detrending
    removes) and their pseudo-inverse; a patch p's fit is (inverse @ p) @ surfaces."""
    y, x = np.mgrid[:size, :size].reshape(2, -1).astype(np.float64)
    surfaces = np.stack([np.ones_like(y), y, x, y * y, x * x, y * x])
    return surfaces, np.ascontiguousarray(np.linalg.pinv(surfaces.T))


def _full_spectrum(half: np.ndarray, size: int) -> np.ndarray:
    """(size, size) spectrum of a real signal from its rfft2 half (size, size // 2 + 1): |X(-k)| = |X(k)|."""
    columns = half.shape[1]
    full = np.empty((size, size), dtype=half.dtype)
    full[:, :columns] = half
    full[:, columns:] = half[-np.arange(size) % size][:, size - np.arange(columns, size)]
    return full


@dataclass(frozen=True)
class FlatPatchSpectrum:
    """The noise power spectrum of a slice's flat soft-tissue patches: their detrended residuals (n, size^2) in HU,
    the mean power (size, size) of the Hann-tapered residuals (zero frequency removed) and the radial frequency
    (size, size) in cycles/mm."""

    residuals: np.ndarray
    power: np.ndarray
    radius: np.ndarray


def flat_patch_spectrum(hu: np.ndarray, pixel_mm: float) -> FlatPatchSpectrum | None:
    """FlatPatchSpectrum of one slice (y, x) in HU with square pixels of pixel_mm, patches of NPS_PATCH_MM chosen
    as the module docstring says; None with fewer than NPS_MIN_PATCHES flat patches or no power."""
    size = max(8, int(round(NPS_PATCH_MM / pixel_mm)))
    stride = size // 2
    height, width = hu.shape
    if height < size or width < size:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(hu, (size, size))[::stride, ::stride]
    patches = windows.reshape(-1, size * size)  # in hu's own dtype: the float64 copy is made of candidates only
    means = patches.mean(axis=1, dtype=np.float64)
    candidate = (means >= NPS_TISSUE_HU[0]) & (means <= NPS_TISSUE_HU[1])
    # the largest |HU - mean| of a patch, from its extremes (rounding is monotone: the same as voxel by voxel)
    candidate &= np.maximum(patches.max(axis=1) - means, means - patches.min(axis=1)) < NPS_MAX_SPREAD_HU
    if candidate.sum() < NPS_MIN_PATCHES:
        return None
    patches = patches[candidate].astype(np.float64)
    surfaces, inverse = _quadratic_basis(size)
    # einsum, not BLAS (@): OpenBLAS's own threads would keep spinning on the cores the slab threads need
    residual = patches - np.einsum("pc,ck->pk", np.einsum("pk,ck->pc", patches, inverse), surfaces)
    spread = residual.std(axis=1)
    flat = spread <= NPS_FLAT_RATIO * np.median(spread)
    if flat.sum() < NPS_MIN_PATCHES:
        return None
    taper = np.outer(np.hanning(size), np.hanning(size)).ravel()
    half = scipy.fft.rfft2((residual[flat] * taper).reshape(-1, size, size))  # a real signal: half the spectrum
    parts = half.view(np.float64).reshape(len(half), -1)  # each patch's real and imaginary parts, interleaved
    power = np.einsum("pk,pk->k", parts, parts).reshape(*half.shape[1:], 2).sum(axis=-1) / len(half)
    power = _full_spectrum(power, size)
    power[0, 0] = 0.0
    if power.sum() <= 0:
        return None
    frequency = np.fft.fftfreq(size, d=pixel_mm)
    return FlatPatchSpectrum(residual[flat], power, np.hypot(*np.meshgrid(frequency, frequency, indexing="ij")))


def nps_frequency(hu: np.ndarray, pixel_mm: float) -> float:
    """Mean radial frequency (cycles/mm) of the NPS of the flat soft-tissue patches of one slice (y, x) in HU with
    square pixels of pixel_mm; NaN with fewer than NPS_MIN_PATCHES flat patches (module docstring)."""
    spectrum = flat_patch_spectrum(hu, pixel_mm)
    if spectrum is None:
        return math.nan
    return float((spectrum.radius * spectrum.power).sum() / spectrum.power.sum())


def slice_features(
    volume: CTVolume, noise: NoiseAnalysis | None = None, progress: ProgressCallback | None = None
) -> SliceFeatures:
    """The FEATURES of every axial slice of volume, measured on its GRID_MM resampling (module docstring).

    noise: the physics pass of volume (``analyse_noise``), reused when it is the pass the features need (volume
    already on the grid, windows of DEFAULT_WINDOW_MM); else that pass is made here. The NPS of the slices is
    measured a slab at a time in threads (ctqa.slabs), progress(fraction, message) as slabs finish.
    """
    gridded = to_grid(volume)
    default_window = tuple(2 * cells for cells in cell_size(gridded.spacing[:2], DEFAULT_WINDOW_MM))
    if noise is None or gridded is not volume or noise.window_voxels != default_window:
        try:
            noise = analyse_noise(gridded)
        except InputError:  # a slice too small for one noise window on the grid: nothing to measure
            return SliceFeatures(np.full((volume.shape[0], len(FEATURES)), np.nan))
    pixel_mm = float(gridded.spacing[0])
    values = np.full((volume.shape[0], len(FEATURES)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        values[:, 0] = np.log(np.where(noise.slice_noise_sd > 0, noise.slice_noise_sd, np.nan))

    def measure(start: int, stop: int) -> None:
        for z in range(start, stop):
            if np.isfinite(values[z, 0]):
                values[z, 1] = nps_frequency(gridded.hu[z], pixel_mm)

    run_over_slabs(measure, volume.shape[0], progress, message="noise texture")
    return SliceFeatures(values)


def domain_notes(volume: CTVolume, out_of_range_share: float) -> tuple[str, ...]:
    """Why a feature score of volume may not mean what its label says: pixel size outside PIXEL_RANGE_MM, a
    display-window export too narrow for soft-tissue noise (a brain window), features outside the trained range on
    more than OUT_OF_RANGE_SHARE of the scored slices; () when none applies."""
    notes = []
    outside = [pixel for pixel in volume.spacing[:2] if not PIXEL_RANGE_MM[0] <= pixel <= PIXEL_RANGE_MM[1]]
    if outside:
        notes.append(
            f"pixel size {outside[0]:.2f} mm is outside the {PIXEL_RANGE_MM[0]:g}-{PIXEL_RANGE_MM[1]:g} mm the score "
            "was validated for"
        )
    if volume.clipped_hu is not None:
        low, high = volume.clipped_hu
        if low > MIN_CLIP_RANGE_HU[0] or high < MIN_CLIP_RANGE_HU[1]:
            notes.append(
                f"the input is a display window ({low:g}..{high:g} HU) narrower than soft tissue "
                f"({MIN_CLIP_RANGE_HU[0]:g}..{MIN_CLIP_RANGE_HU[1]:g} HU): noise is censored, the score is not reliable"
            )
    if out_of_range_share > OUT_OF_RANGE_SHARE:
        notes.append(
            f"{100 * out_of_range_share:.0f} % of the scored slices have noise or texture outside the range the score "
            "was trained on (another body region, kernel or dose): read it as a rough estimate"
        )
    return tuple(notes)


def is_feature_card(card: dict) -> bool:
    return card.get("architecture", {}).get("backbone") == BACKBONE


def load_feature_model(card_path: Path) -> tuple[FeatureScoreModel, dict]:
    """The model of a feature-score card and its weights, sha256 checked against the card and, for bundled
    models, the manifest (InputError naming the file otherwise)."""
    tensors, card = load_verified(card_path)
    weights_path = checkpoint_files(card_path)[1]
    try:
        model = FeatureScoreModel(tensors["coefficients"], tensors["feature_low"], tensors["feature_high"])
    except KeyError as error:
        raise InputError(f"{weights_path}: no tensor {error} in a feature-score model") from None
    shapes = (model.coefficients.shape, model.feature_low.shape, model.feature_high.shape)
    if shapes != ((len(DESIGN_TERMS),), (len(FEATURES),), (len(FEATURES),)):
        raise InputError(f"{weights_path}: tensor shapes {shapes} do not fit a feature-score model")
    if not (np.isfinite(model.tensors()["coefficients"]).all() and (model.feature_high > model.feature_low).all()):
        raise InputError(f"{weights_path}: a feature-score model needs finite coefficients and low < high ranges")
    if (model.coefficients[1:] < 0).any():
        raise InputError(f"{weights_path}: negative coefficients would break the score's monotone design")
    return model, card
