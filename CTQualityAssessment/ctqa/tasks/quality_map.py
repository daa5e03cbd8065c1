"""Task quality_map: a per-voxel quality map (1 = best) from the physics noise map or a learned model.

Both read on the scale of the reference SSIM map (Noise2Quality settings), in two HU windows: the lung window
(-1350..150 HU) inside the lung mask (``lung.lung_mask``) and the soft-tissue window (-160..240 HU) everywhere else
in the body. In the soft-tissue window lung parenchyma is clipped to 0 and would always read about 1.

- Learned: the network predicts the SSIM against the unseen full-dose image in each window (one map channel per
  window). A model without a lung channel (format-1 cards) is shown in the soft-tissue window everywhere, with a
  note.
- Denoised SSIM (``denoised_ssim``): the SSIM of the input against the default denoiser's estimate of its
  noise-free self in each window, the soft-tissue one calibrated (DENOISED_CALIBRATION) to read as the SSIM
  against a real full dose. It follows the input's own noise realisation voxel by voxel, which a network that sees
  4 x 4 blocks cannot, and needs no training of its own; it costs one denoiser pass (slow on a CPU) and holds the
  denoised CT. Where the denoiser leaves noise in its estimate, the map reads too high (a note says so,
  ``removed_noise_share``).
- Median SSIM (``median_ssim``): the SSIM of the input against its own 5 x 5 median filter, a cheap estimate of its
  noise-free self, in each window, calibrated per window (MEDIAN_CALIBRATION) to read as the SSIM against a real
  full dose. Like the denoised SSIM it follows the noise realisation voxel by voxel; on the real quarter-dose pairs it
  agrees with the true soft-tissue map as well (docs/real_validation.md; the lung less well) at a hundredth of the
  cost, slab by slab. Calibrated at quarter dose only: with 2-3x that noise it reads 0.15-0.2 too high, with half of
  it 0.16 too low (README, "Quality maps").
- Physics: the SSIM that flat tissue with the measured local noise SD has against its noise-free self,
  1 / (1 + (sd / sd50)^2) with sd50 = K2 x window width: 12 HU in the soft-tissue window, 45 HU in the lung window
  (the same noise weighs 3.75x less in a window 3.75x wider).

torch is imported only when a learned model runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from ctqa.models.grid import place_slabs
from ctqa.models.registry import MEDIAN_SSIM_MODEL, ModelSpec
from ctqa.physics.lung import LUNG_WINDOW_HU, QUALITY_WINDOWS_HU, packed_lung_mask
from ctqa.physics.noise import NOISE_SD50_HU, NoiseAnalysis
from ctqa.physics.ssim import SSIM_K2, SSIM_RADIUS, SSIM_WINDOW_HU, ssim_slab
from ctqa.results import LearnedNoiseLevel
from ctqa.slabs import ProgressCallback, run_over_slabs
from ctqa.staging import ComputedMap, SlabMap, StagedMap
from ctqa.volume import CTVolume

#: sd50 (HU) of the physics map in the lung window: K2 times its width.
LUNG_NOISE_SD50_HU = SSIM_K2 * (LUNG_WINDOW_HU[1] - LUNG_WINDOW_HU[0])

_WINDOWS = (
    f"inside the lung mask in the lung window ({LUNG_WINDOW_HU[0]:g}..{LUNG_WINDOW_HU[1]:g} HU), elsewhere in the "
    f"soft-tissue window ({SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU); NaN outside the body"
)
PHYSICS_DEFINITION = (
    f"1 / (1 + (noise_sd / sd50)^2), the expected SSIM of flat tissue against its noise-free self, sd50 = "
    f"{NOISE_SD50_HU:g} HU in the soft-tissue window and {LUNG_NOISE_SD50_HU:g} HU in the lung window; " + _WINDOWS
)
#: {window: (intercept, slope)} of the denoised-SSIM map: against the denoiser's noise-free estimate the SSIM reads
#: 0.10 above the SSIM against the real full dose, which has noise of its own; least squares over the body voxels of
#: the 32 real pairs of L096, L143 and L192 (docs/real_validation.md holds out L286 and L506). The lung window reads
#: within 0.03 of its truth as it is. A positive slope keeps every ordering of the map.
DENOISED_CALIBRATION = {"soft_tissue": (-0.064, 0.941)}
#: Side (voxels) of the median filter of the median-SSIM map (OpenCV filters float32 with 3 or 5 only).
MEDIAN_KERNEL = 5
#: {window: (intercept, slope)} of the median-SSIM map, least squares as DENOISED_CALIBRATION (the soft-tissue window
#: over the body voxels, the lung window over the lung voxels): ``ctqa-train calibrate-map --method median``.
MEDIAN_CALIBRATION = {"soft_tissue": (0.298, 0.687), "lung": (0.473, 0.533)}
#: Soft tissue (HU) where the denoiser's removed noise is compared with the measured noise; below this share of the
#: measured noise SD removed (the real Mayo pairs: 0.43-0.76) the denoised-SSIM map gets a note that it reads too high.
NOISE_TISSUE_HU = (-100.0, 150.0)
MIN_REMOVED_NOISE_SHARE = 0.3
DENOISED_DEFINITION = (
    "SSIM against the default denoiser's estimate of the noise-free image (soft-tissue window calibrated on real "
    "dose pairs to the SSIM against a full dose), " + _WINDOWS
)
MEDIAN_DEFINITION = (
    f"SSIM against the input's own {MEDIAN_KERNEL} x {MEDIAN_KERNEL} median filter (an estimate of its noise-free "
    "self; each window calibrated on real dose pairs to the SSIM against a full dose), " + _WINDOWS
)
LEARNED_DEFINITION = "predicted SSIM against the unseen full-dose image (Noise2Quality settings), " + _WINDOWS
SINGLE_WINDOW_DEFINITION = (
    "predicted SSIM against the unseen full-dose image (Noise2Quality settings) in the soft-tissue window "
    f"({SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU) everywhere (the model has no lung window); NaN outside the body"
)


@dataclass
class QualityMap:
    """The composed quality map and its parts; all maps float32 (z, y, x) in [0, 1], 1 = best, NaN outside the body.

    quality: the composed map (the lung window inside lung, the soft-tissue window elsewhere).
    windows: {window name: that window's map over the whole body} ("soft_tissue", and "lung" when the model has it).
    lung: bool (z, y, x) lung mask (inside the body).
    The maps are staging.SlabMaps: learned windows are kept in staging files, physics windows computed from the
    noise map, the composed map from the windows and the lung mask (bit-packed) on each read; index them by slab, or
    np.asarray one for the whole array.
    """

    quality: SlabMap
    model: ModelSpec
    definition: str
    windows: dict[str, SlabMap]
    lung: SlabMap
    device: str = "cpu"
    precision: str = "float32"
    device_fallback: str | None = None
    noise_level: LearnedNoiseLevel | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _compose(soft_tissue: np.ndarray, lung_window: np.ndarray | None, lung: np.ndarray) -> np.ndarray:
    """The lung-window map inside lung, the soft-tissue map elsewhere (a new array), for one slab."""
    composed = np.array(soft_tissue, dtype=np.float32)
    if lung_window is not None:
        np.copyto(composed, lung_window, where=lung)
    return composed


def _composed(windows: dict[str, SlabMap], lung: SlabMap) -> SlabMap:
    """The composed map of windows, computed slab by slab on each read."""
    soft, lung_map = windows["soft_tissue"], windows.get("lung")

    def compose(start: int, stop: int) -> np.ndarray:
        lung_window = lung_map[start:stop] if lung_map is not None else None
        return _compose(soft[start:stop], lung_window, lung[start:stop])

    return ComputedMap(soft.shape, np.float32, compose)


def removed_noise_share(volume: CTVolume, denoised_hu: np.ndarray, noise: NoiseAnalysis) -> float:
    """Median over slices of the robust SD (1.4826 x median absolute value) of what the denoiser took out of the
    soft tissue (NOISE_TISSUE_HU, inside the body), over the slice's measured noise SD; NaN without soft tissue."""
    shares = []
    for z, sd in enumerate(noise.slice_noise_sd):
        plane = volume.hu_slab(z, z + 1)[0]
        tissue = np.isfinite(noise.noise_sd[z : z + 1][0]) & (plane > NOISE_TISSUE_HU[0]) & (plane < NOISE_TISSUE_HU[1])
        if np.isfinite(sd) and sd > 0 and tissue.any():
            shares.append(1.4826 * float(np.median(np.abs(plane - denoised_hu[z])[tissue])) / float(sd))
    return float(np.median(shares)) if shares else float("nan")


def calibrated_ssim(
    hu: np.ndarray, reference: np.ndarray, calibration: dict[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """{window: SSIM map (float32 (z, y, x))} of hu against reference (both (z, y, x) HU) in each quality window,
    mapped by calibration[window] = (intercept, slope) where given and clipped to [0, 1]."""
    found = {}
    for name, window in QUALITY_WINDOWS_HU.items():
        values = ssim_slab(hu, reference, window)
        if name in calibration:
            intercept, slope = calibration[name]
            np.clip(np.float32(intercept) + np.float32(slope) * values, 0.0, 1.0, out=values)
        found[name] = values
    return found


def median_reference(hu: np.ndarray) -> np.ndarray:
    """The MEDIAN_KERNEL x MEDIAN_KERNEL median filter of each slice of hu (float32 (z, y, x), HU)."""
    return np.stack([cv2.medianBlur(np.ascontiguousarray(plane, np.float32), MEDIAN_KERNEL) for plane in hu])


def _write_inside(windows: dict[str, StagedMap], found: dict[str, np.ndarray], start: int, inside: np.ndarray) -> None:
    """Write each window's map of slices start.. into its staging file, NaN outside inside (their body, bool
    (z, y, x))."""
    outside = ~inside
    for name, values in found.items():
        values[outside] = np.nan
        windows[name].write(start, values)


def _body_box(inside: np.ndarray, margin: int) -> tuple[slice, slice]:
    """(rows, columns) of the bounding box of a slice's body (bool (y, x), not empty), widened by margin pixels
    within the slice."""
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    height, width = inside.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)),
        slice(max(columns[0] - margin, 0), min(columns[-1] + 1 + margin, width)),
    )


#: Pixels around the body that a median-SSIM value inside it depends on: the SSIM window's radius, then the median's.
MEDIAN_SSIM_MARGIN = SSIM_RADIUS + MEDIAN_KERNEL // 2


def _median_ssim(
    volume: CTVolume, model: ModelSpec, body: SlabMap, lung: SlabMap, progress: ProgressCallback | None
) -> QualityMap:
    """The median-SSIM map (module docstring) of volume inside body, slice by slice in the slab threads, each slice
    computed on the body's bounding box widened by MEDIAN_SSIM_MARGIN (the same values inside the body as on the
    whole slice, at 65-85 % of the cost)."""
    windows = {name: StagedMap(volume.shape, np.float32) for name in QUALITY_WINDOWS_HU}

    def compute(start: int, stop: int) -> None:
        for z in range(start, stop):  # one slice at a time: the SSIM's float64 moments are 20 MiB per 512^2 slice
            inside = np.asarray(body[z], dtype=bool)
            found = {name: np.full((1, *volume.shape[1:]), np.nan, dtype=np.float32) for name in windows}
            if inside.any():
                rows, columns = _body_box(inside, MEDIAN_SSIM_MARGIN)
                hu = volume.hu_slab(z, z + 1)[:, rows, columns]
                for name, values in calibrated_ssim(hu, median_reference(hu), MEDIAN_CALIBRATION).items():
                    found[name][:, rows, columns] = values
            _write_inside(windows, found, z, inside[None])

    run_over_slabs(compute, volume.shape[0], progress, message="median-SSIM quality map")
    return QualityMap(_composed(windows, lung), model, MEDIAN_DEFINITION, windows, lung)


def _denoised_ssim(
    volume: CTVolume,
    model: ModelSpec,
    noise: NoiseAnalysis,
    body: SlabMap,
    lung: SlabMap,
    device: str,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> QualityMap:
    """The denoised-SSIM map (module docstring) of volume inside body; model is its composite spec."""
    from ctqa.tasks import denoise

    denoised = denoise.run(volume, denoise.resolve(model.card_path), device, progress, cancel)
    estimate = denoised.volume.hu
    notes = denoised.notes
    removed = removed_noise_share(volume, estimate, noise)
    if removed < MIN_REMOVED_NOISE_SHARE:
        notes += (
            f"the denoiser took out only {100 * removed:.0f} % of the measured noise SD (real CT: 40-80 %): noise it "
            "leaves in its estimate raises this map, which then reads too high; use the default map here",
        )
    windows = {name: StagedMap(volume.shape, np.float32) for name in QUALITY_WINDOWS_HU}
    for z in range(volume.shape[0]):
        found = calibrated_ssim(volume.hu_slab(z, z + 1), estimate[z : z + 1], DENOISED_CALIBRATION)
        _write_inside(windows, found, z, np.asarray(body[z : z + 1], dtype=bool))
    return QualityMap(
        _composed(windows, lung),
        model,
        DENOISED_DEFINITION,
        windows,
        lung,
        denoised.device,
        denoised.precision,
        denoised.device_fallback,
        None,
        notes,
    )


def run(
    volume: CTVolume,
    model: ModelSpec,
    noise: NoiseAnalysis,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> QualityMap:
    """The quality map of volume with model (task "quality_map"); the body is where noise.noise_sd is finite.

    device: where a learned model runs ("auto", "cpu", "cuda"); cancel stops it between batches (Cancelled).
    Slab by slab: nothing of the volume's size is held in memory (QualityMap).
    """
    body = noise.body_mask
    lung = packed_lung_mask(volume.hu, volume.spacing[0], body)
    if model.kind == "composite":
        return _denoised_ssim(volume, model, noise, body, lung, device, progress, cancel)
    if model.name == MEDIAN_SSIM_MODEL:
        return _median_ssim(volume, model, body, lung, progress)
    if not model.is_learned:
        windows = {"soft_tissue": noise.physics_quality(), "lung": noise.physics_quality(LUNG_NOISE_SD50_HU)}
        return QualityMap(_composed(windows, lung), model, PHYSICS_DEFINITION, windows, lung)
    from ctqa.models.checkpoints import load
    from ctqa.models.inference import learned_noise_level, stream_predictions

    network, card = load(model.card_path)
    placed = place_slabs(volume, card, model.name)
    names = [name for name in QUALITY_WINDOWS_HU if name in network.config.windows]
    windows = {name: StagedMap(volume.shape, np.float32) for name in names}  # the composed map is read from them

    def store(start: int, stop: int, maps: dict[str, np.ndarray]) -> None:
        outside = ~body[start:stop]
        for name in names:
            values = placed.back(maps[name], volume.shape[1:])
            values[outside] = np.nan
            windows[name].write(start, values)

    prediction = stream_predictions(
        network, placed.slab, volume.shape[0], store, device=device, progress=progress, cancel=cancel
    )
    notes = placed.notes
    if "lung" not in windows and lung.any():
        notes += (f"model {model.name} has no lung window: the lung reads in the soft-tissue window, where it is ~1",)
    return QualityMap(
        _composed(windows, lung),
        model,
        LEARNED_DEFINITION if "lung" in windows else SINGLE_WINDOW_DEFINITION,
        windows,
        lung,
        prediction.device_used,
        prediction.precision,
        prediction.fallback,
        learned_noise_level(prediction),
        notes,
    )
