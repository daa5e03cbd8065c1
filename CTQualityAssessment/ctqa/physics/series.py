"""Per-series physics measures that need no training: water-equivalent diameter, an NPS kernel index, and the
noise normalised for patient size and slice thickness.

- Water-equivalent diameter (AAPM TG-220), per slice from the image itself:
  D_w = 2 sqrt((mean_HU / 1000 + 1) A / pi) over the patient region (the body mask, inner air included), A in mm^2.
- Kernel index: the mean spatial frequency (cycles/mm) of the noise power spectrum (NPS) measured in flat
  soft-tissue patches (plane-detrended, 2D FFT, radially weighted). Sharp (lung, bone) kernels keep noise power at high
  frequencies and score higher than smooth (soft-tissue) kernels; it is independent of the noise level.
- Size-normalised noise: the GNL a 300 mm water-equivalent patient at 3 mm slices would show at the same exposure:
  GNL * exp(-mu_w (D_w - 300 mm) / 2) * sqrt(thickness / 3 mm), with mu_w = 0.0194 /mm (water at ~70 keV): noise
  grows with the attenuation of the path through the patient, and falls as 1/sqrt of the slice thickness.
  Approximate (one effective energy, no bow-tie or tube-current modulation), for comparing series, not for dosimetry.
- Physics classifier (``PhysicsClassifier``): two logistic regressions fitted on simulated series (ctqa-train
  series), of the window and of the dose class, each on the kernel index in cycles per pixel and ln(normalised
  noise): both move with either class (a lung kernel has ~3x the noise of a soft one at the same exposure). Its
  coefficients are stored in the series model's card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctqa.physics.noise import NoiseAnalysis
from ctqa.results import ClassCall, SeriesClasses
from ctqa.volume import CTVolume

WATER_MU_PER_MM = 0.0194  # linear attenuation of water at about 70 keV effective energy
REFERENCE_WED_MM = 300.0
REFERENCE_THICKNESS_MM = 3.0
NPS_PATCH = 32  # voxels, side of the square patches the NPS is measured in
NPS_TISSUE_HU = (-100.0, 150.0)  # patch means that count as flat soft tissue
NPS_FLAT_RATIO = 1.3  # a patch is flat when its detrended SD is at most this times the local noise map
NPS_MAX_PATCHES = 400
WINDOW_LABELS = ("soft_tissue", "lung")  # class 0, class 1 (the series network's order too)
DOSE_LABELS = ("standard", "low")


@dataclass(frozen=True)
class SeriesPhysics:
    """Physics measures of a series (see the module docstring); NaN where they cannot be measured.

    wed_mm: mean water-equivalent diameter over slices showing the body; kernel_index_per_mm: NPS mean frequency
    (cycles/mm); nps_patches: flat patches it was measured in; noise_normalised_hu: size- and thickness-normalised
    GNL (HU); slice_thickness_mm: the thickness used, None when unknown (then 3 mm is assumed).
    """

    wed_mm: float
    kernel_index_per_mm: float
    nps_patches: int
    noise_normalised_hu: float
    slice_thickness_mm: float | None


def water_equivalent_diameters(volume: CTVolume, body: np.ndarray) -> np.ndarray:
    """(z,) D_w in mm per slice (TG-220) over the body mask (bool (z, y, x), an array or a staging.SlabMap read
    slice by slice); NaN for slices without body."""
    pixel_mm2 = volume.spacing[0] * volume.spacing[1]
    diameters = np.full(volume.shape[0], np.nan)
    for index, (hu, inside) in enumerate(zip(volume.hu, body)):
        count = int(np.count_nonzero(inside))
        if count:
            mean_hu = float(hu[inside].mean(dtype=np.float64))
            diameters[index] = 2.0 * math.sqrt(max(mean_hu / 1000.0 + 1.0, 0.0) * count * pixel_mm2 / math.pi)
    return diameters


def _detrended(patch: np.ndarray) -> np.ndarray:
    """A patch minus its least-squares plane (removes slow anatomy that would add low-frequency power)."""
    size = patch.shape[0]
    y, x = np.mgrid[:size, :size]
    design = np.stack([np.ones(size * size), y.ravel(), x.ravel()], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, patch.ravel().astype(np.float64), rcond=None)
    return patch - (design @ coefficients).reshape(size, size)


def kernel_index(volume: CTVolume, noise: NoiseAnalysis) -> tuple[float, int]:
    """(NPS mean frequency in cycles/mm, number of patches) from flat soft-tissue patches; (NaN, 0) without any.

    Patches overlap by half on a regular grid of every slice (at most NPS_MAX_PATCHES candidates used, evenly
    spread over the volume).
    """
    size = NPS_PATCH
    depth, height, width = volume.shape
    if height < size or width < size:
        return math.nan, 0
    stride = size // 2  # overlapping patches: more of the few flat regions a slice has
    step = max(1, depth * (height // stride) * (width // stride) // NPS_MAX_PATCHES)
    frequency_y = np.fft.fftfreq(size, d=volume.spacing[1])
    frequency_x = np.fft.fftfreq(size, d=volume.spacing[0])
    radius = np.hypot(*np.meshgrid(frequency_y, frequency_x, indexing="ij"))
    power = np.zeros((size, size))
    used = 0
    candidate = 0
    for z in range(depth):
        noise_plane = None  # read when the slice's first patch is used (noise_sd may be a staging.SlabMap)
        for top in range(0, height - size + 1, stride):
            for left in range(0, width - size + 1, stride):
                candidate += 1
                if candidate % step:
                    continue
                if noise_plane is None:
                    noise_plane = noise.noise_sd[z]
                local = noise_plane[top : top + size, left : left + size]
                patch = volume.hu[z, top : top + size, left : left + size]
                if not np.isfinite(local).all() or not NPS_TISSUE_HU[0] <= patch.mean() <= NPS_TISSUE_HU[1]:
                    continue
                residual = _detrended(patch)
                if residual.std() > NPS_FLAT_RATIO * float(np.median(local)):
                    continue  # an edge or texture, not noise
                power += np.abs(np.fft.fft2(residual)) ** 2
                used += 1
    if used == 0 or power.sum() == 0:
        return math.nan, 0
    power[0, 0] = 0.0
    return float((radius * power).sum() / power.sum()), used


def slice_thickness_mm(volume: CTVolume) -> float | None:
    """DICOM SliceThickness, else the slice spacing of a 3D volume, else None (a single slice from a file without
    geometry has no known thickness)."""
    tagged = volume.acquisition.slice_thickness_mm if volume.acquisition is not None else None
    if tagged:
        return float(tagged)
    return float(volume.spacing[2]) if volume.shape[0] > 1 else None


def series_physics(volume: CTVolume, noise: NoiseAnalysis) -> SeriesPhysics:
    """All per-series physics measures of a volume from its noise analysis."""
    diameters = water_equivalent_diameters(volume, noise.body_mask)
    wed = float(np.nanmean(diameters)) if np.isfinite(diameters).any() else math.nan
    index, patches = kernel_index(volume, noise)
    thickness = slice_thickness_mm(volume)
    normalised = noise.gnl * math.exp(-WATER_MU_PER_MM * (wed - REFERENCE_WED_MM) / 2.0)
    normalised *= math.sqrt((thickness or REFERENCE_THICKNESS_MM) / REFERENCE_THICKNESS_MM)
    return SeriesPhysics(wed, index, patches, normalised, thickness)


def _logistic(model: dict, features: list[float]) -> float:
    """P(class 1) of a fitted logistic regression {"mean", "sd", "coefficients"} at features; NaN if one is NaN."""
    x = (np.asarray(features, np.float64) - model["mean"]) / model["sd"]
    if not np.isfinite(x).all():
        return math.nan
    logit = model["coefficients"][0] + float(np.dot(model["coefficients"][1:], x))
    return 1.0 / (1.0 + math.exp(-min(max(logit, -50.0), 50.0)))


def class_call(labels: tuple[str, str], probability_second: float) -> ClassCall:
    """The call of a two-class probability: the second label when its probability is >= 0.5, with the probability
    of the label called."""
    second = probability_second >= 0.5
    return ClassCall(labels[int(second)], probability_second if second else 1.0 - probability_second)


@dataclass(frozen=True)
class PhysicsClassifier:
    """Window and dose logistic regressions on physics measures (module docstring); dicts as in the model card."""

    window: dict
    dose: dict

    def to_dict(self) -> dict:
        return {"window": self.window, "dose": self.dose}

    @classmethod
    def from_dict(cls, data: dict) -> PhysicsClassifier:
        return cls(data["window"], data["dose"])

    @staticmethod
    def features(measured: SeriesPhysics, pixel_mm: float) -> list[float]:
        """[kernel index in cycles per pixel, ln(size/thickness-normalised noise in HU)]; NaN where unmeasured."""
        noise = math.log(measured.noise_normalised_hu) if measured.noise_normalised_hu > 0 else math.nan
        return [measured.kernel_index_per_mm * pixel_mm, noise]

    def probabilities(self, measured: SeriesPhysics, pixel_mm: float) -> tuple[float, float]:
        """(P(lung window), P(low dose)); NaN where a measure is missing."""
        features = self.features(measured, pixel_mm)
        return _logistic(self.window, features), _logistic(self.dose, features)

    def classify(self, measured: SeriesPhysics, pixel_mm: float) -> SeriesClasses | None:
        """Window ("soft_tissue"/"lung") and dose ("standard"/"low") calls; None when a measure is missing."""
        p_lung, p_low = self.probabilities(measured, pixel_mm)
        if not (math.isfinite(p_lung) and math.isfinite(p_low)):
            return None
        return SeriesClasses(class_call(WINDOW_LABELS, p_lung), class_call(DOSE_LABELS, p_low), "physics")
