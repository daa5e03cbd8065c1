"""Per-series physics measures that need no training: water-equivalent diameter, an NPS kernel index, and the
noise normalised for patient size and slice thickness.

- Water-equivalent diameter (AAPM TG-220), per slice from the image itself:
  D_w = 2 sqrt((mean_HU / 1000 + 1) A / pi) over the patient region (the body mask, inner air included), A in mm^2.
- Kernel index: the mean spatial frequency (cycles/mm) of the noise power spectrum (NPS) of flat soft-tissue patches
  of 12 mm (``feature_score.flat_patch_spectrum``: quadratic detrend, Hann taper, flat = detrended SD at most 1.3x
  the slice's median, so that a smooth kernel's correlated noise finds its patches as a sharp one's does), pooled over
  up to KERNEL_INDEX_SLICES slices spread over the volume. Sharp (lung, bone) kernels keep noise power at high
  frequencies and score higher than smooth (soft-tissue) kernels; it hardly moves with the noise level.
- Size-normalised noise: the GNL a 300 mm water-equivalent patient at 3 mm slices would show at the same exposure:
  GNL * exp(-mu_w (D_w - 300 mm) / 2) * sqrt(thickness / 3 mm), with mu_w = 0.0194 /mm (water at ~70 keV): noise
  grows with the attenuation of the path through the patient, and falls as 1/sqrt of the slice thickness.
  Approximate (one effective energy, no bow-tie or tube-current modulation), for comparing series, not for dosimetry.
- Unknown pixel size (a file without geometry, ``CTVolume.pixel_size_assumed``): D_w and the kernel index need mm.
  The pixel size is then estimated as the one that gives the body a water-equivalent diameter of TYPICAL_WED_MM (an
  adult trunk), instead of trusting the reader's placeholder, and the panel says so.
- Physics classifier (``PhysicsClassifier``): a logistic regression per class on named features (FEATURES). The
  window is read from the kernel index in cycles/mm alone, fitted on real slices whose DICOM kernel names the class
  (``ctqa-train series-real``): the noise level is not a property of the kernel, and a thin or low-dose soft-kernel
  slice is as noisy as a lung-kernel one. The dose is read from the kernel index in cycles per pixel and ln(normalised
  noise), fitted on simulated series (``ctqa-train series``). Coefficients are stored in the series model's card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctqa.models.feature_score import flat_patch_spectrum
from ctqa.physics.noise import NoiseAnalysis
from ctqa.results import ClassCall, SeriesClasses
from ctqa.volume import CTVolume

WATER_MU_PER_MM = 0.0194  # linear attenuation of water at about 70 keV effective energy
REFERENCE_WED_MM = 300.0
REFERENCE_THICKNESS_MM = 3.0
KERNEL_INDEX_SLICES = 48  # slices (evenly spread) the kernel index pools its patches over
TYPICAL_WED_MM = 280.0  # water-equivalent diameter of an adult trunk, for files without a pixel size
#: Share of a slice's edge pixels inside the body above which the field of view cuts the body (its size is unknown).
CUT_BODY_EDGE_SHARE = 0.02
WINDOW_LABELS = ("soft_tissue", "lung")  # class 0, class 1 (the series network's order too)
DOSE_LABELS = ("standard", "low")


@dataclass(frozen=True)
class SeriesPhysics:
    """Physics measures of a series (see the module docstring); NaN where they cannot be measured.

    wed_mm: mean water-equivalent diameter over slices showing the body; kernel_index_per_mm: NPS mean frequency
    (cycles/mm); nps_patches: flat patches it was measured in; noise_normalised_hu: size- and thickness-normalised
    GNL (HU); slice_thickness_mm: the thickness used, None when unknown (then 3 mm is assumed); pixel_mm: the in-plane
    pixel size the measures used; pixel_mm_estimated: True when the file had none and pixel_mm was estimated from the
    body (module docstring); size_unknown: why the patient's size (and so, without a pixel size, the pixel size)
    cannot be measured, else None.
    """

    wed_mm: float
    kernel_index_per_mm: float
    nps_patches: int
    noise_normalised_hu: float
    slice_thickness_mm: float | None
    pixel_mm: float
    pixel_mm_estimated: bool = False
    size_unknown: str | None = None


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


def sampled_slices(depth: int) -> np.ndarray:
    """Indices of up to KERNEL_INDEX_SLICES slices evenly spread over depth slices."""
    return np.unique(np.linspace(0, depth - 1, min(depth, KERNEL_INDEX_SLICES)).round().astype(int))


def body_cut_by_field_of_view(volume: CTVolume, body) -> bool:
    """Whether more than CUT_BODY_EDGE_SHARE of the edge pixels of the volume's slices (up to KERNEL_INDEX_SLICES,
    evenly spread) are body: the body (bool (z, y, x), an array or a staging.SlabMap) runs off the image."""
    shares = []
    for z in sampled_slices(volume.shape[0]):
        plane = np.asarray(body[z : z + 1][0], bool)
        edges = np.concatenate([plane[0], plane[-1], plane[1:-1, 0], plane[1:-1, -1]])
        shares.append(edges.mean())
    return bool(np.mean(shares) > CUT_BODY_EDGE_SHARE)


def kernel_index(volume: CTVolume, pixel_mm: float | None = None) -> tuple[float, int]:
    """(NPS mean frequency in cycles/mm, number of flat patches) pooled over up to KERNEL_INDEX_SLICES slices of
    volume (module docstring), with pixels of pixel_mm (default: the volume's); (NaN, 0) without flat patches."""
    pixel_mm = volume.spacing[0] if pixel_mm is None else pixel_mm
    power, radius, patches = None, None, 0
    for z in sampled_slices(volume.shape[0]):
        spectrum = flat_patch_spectrum(volume.hu_slab(z, z + 1)[0], pixel_mm)
        if spectrum is None:
            continue
        count = len(spectrum.residuals)
        power = spectrum.power * count if power is None else power + spectrum.power * count
        radius, patches = spectrum.radius, patches + count
    if power is None:
        return math.nan, 0
    return float((radius * power).sum() / power.sum()), patches


def slice_thickness_mm(volume: CTVolume) -> float | None:
    """DICOM SliceThickness, else the slice spacing of a 3D volume, else None (a single slice, or a file without
    geometry, whose spacing is a placeholder, has no known thickness)."""
    tagged = volume.acquisition.slice_thickness_mm if volume.acquisition is not None else None
    if tagged:
        return float(tagged)
    return float(volume.spacing[2]) if volume.shape[0] > 1 and not volume.pixel_size_assumed else None


def series_physics(volume: CTVolume, noise: NoiseAnalysis) -> SeriesPhysics:
    """All per-series physics measures of a volume from its noise analysis."""
    diameters = water_equivalent_diameters(volume, noise.body_mask)
    wed = float(np.nanmean(diameters)) if np.isfinite(diameters).any() else math.nan
    pixel_mm = volume.spacing[0]
    estimated = volume.pixel_size_assumed and math.isfinite(wed)
    size_unknown = None
    if estimated and body_cut_by_field_of_view(volume, noise.body_mask):
        estimated, wed = False, math.nan
        size_unknown = "no pixel size in the file and the field of view cuts the body, so neither can be estimated"
    if estimated:  # D_w scales with the pixel size: choose the one that makes it TYPICAL_WED_MM
        pixel_mm *= TYPICAL_WED_MM / wed
        wed = TYPICAL_WED_MM
    index, patches = kernel_index(volume, pixel_mm)
    thickness = slice_thickness_mm(volume)
    normalised = noise.gnl * math.exp(-WATER_MU_PER_MM * (wed - REFERENCE_WED_MM) / 2.0)
    normalised *= math.sqrt((thickness or REFERENCE_THICKNESS_MM) / REFERENCE_THICKNESS_MM)
    return SeriesPhysics(wed, index, patches, normalised, thickness, pixel_mm, estimated, size_unknown)


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


#: The classifier's features by name: a function of the series measures.
FEATURES = {
    "kernel_index_per_mm": lambda measured: measured.kernel_index_per_mm,
    "kernel_index_per_pixel": lambda measured: measured.kernel_index_per_mm * measured.pixel_mm,
    "ln_noise_normalised": lambda measured: (
        math.log(measured.noise_normalised_hu) if measured.noise_normalised_hu > 0 else math.nan
    ),
}
#: Features of a card's model that names none (cards before the window was read from the kernel index alone).
LEGACY_FEATURES = ("kernel_index_per_pixel", "ln_noise_normalised")


def feature_values(model: dict, measured: SeriesPhysics) -> list[float]:
    """The values of model's features ({"features": [names]}, else LEGACY_FEATURES) for measured; NaN where
    unmeasured."""
    return [float(FEATURES[name](measured)) for name in model.get("features", LEGACY_FEATURES)]


@dataclass(frozen=True)
class PhysicsClassifier:
    """Window and dose logistic regressions on physics measures (module docstring); dicts as in the model card:
    {"features": [names of FEATURES], "mean", "sd", "coefficients"}."""

    window: dict
    dose: dict

    def to_dict(self) -> dict:
        return {"window": self.window, "dose": self.dose}

    @classmethod
    def from_dict(cls, data: dict) -> PhysicsClassifier:
        return cls(data["window"], data["dose"])

    def probabilities(self, measured: SeriesPhysics) -> tuple[float, float]:
        """(P(lung window), P(low dose)); NaN where a measure is missing."""
        return (
            _logistic(self.window, feature_values(self.window, measured)),
            _logistic(self.dose, feature_values(self.dose, measured)),
        )

    def classify(self, measured: SeriesPhysics) -> SeriesClasses | None:
        """Window ("soft_tissue"/"lung") and dose ("standard"/"low") calls; None when a measure is missing."""
        p_lung, p_low = self.probabilities(measured)
        if not (math.isfinite(p_lung) and math.isfinite(p_low)):
            return None
        return SeriesClasses(class_call(WINDOW_LABELS, p_lung), class_call(DOSE_LABELS, p_low), "physics")
