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
  noise-free self, in each window, mapped to the SSIM against a real full dose by a small per-window network of six
  numbers per voxel (``median_features``: that SSIM, the local noise SD at three scales and the noise's texture at
  two; ``MedianCalibration``, weights in Resources/Models/median_ssim.safetensors, read with numpy) fitted on real
  dose pairs with their real noise scaled 0.5-3x (``ctqa-train calibrate-map --method median``). Like the denoised
  SSIM it follows the noise realisation voxel by voxel, at a small part of its cost, slab by slab; on real pairs held
  out of the fit it agrees with the true map better than the denoised SSIM in both windows (docs/real_validation.md).
  Its mean bias on the held-out pairs is within 0.065 at quarter dose and with 2-3x its extra noise; with half of it
  (near routine dose) it reads about 0.09 low (README, "Quality maps").
- Physics: the SSIM that flat tissue with the measured local noise SD has against its noise-free self,
  1 / (1 + (sd / sd50)^2) with sd50 = K2 x window width: 12 HU in the soft-tissue window, 45 HU in the lung window
  (the same noise weighs 3.75x less in a window 3.75x wider).

torch is imported only when a learned model runs.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ctqa.errors import InputError
from ctqa.models.grid import place_slabs
from ctqa.models.plain_weights import load_verified
from ctqa.models.registry import MEDIAN_SSIM_CARD, MEDIAN_SSIM_MODEL, ModelSpec, checkpoint_files
from ctqa.physics.lung import LUNG_WINDOW_HU, QUALITY_WINDOWS_HU, packed_lung_mask
from ctqa.physics.noise import NOISE_SD50_HU, NoiseAnalysis
from ctqa.physics.ssim import (
    SSIM_K2,
    SSIM_RADIUS,
    SSIM_TRUNCATE,
    SSIM_WINDOW_HU,
    scale_to_unit,
    ssim_of_scaled,
    ssim_slab,
)
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
#: Gaussian sigmas (voxels) of the local noise SDs and of the local texture (steps between neighbours) the
#: median-SSIM calibration reads (``median_features``), and the number of its inputs.
MEDIAN_NOISE_SIGMAS_PX = (1.5, 3.0, 6.0)
MEDIAN_TEXTURE_SIGMAS_PX = (3.0, 6.0)
MEDIAN_FEATURES = 1 + len(MEDIAN_NOISE_SIGMAS_PX) + len(MEDIAN_TEXTURE_SIGMAS_PX)
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
    "self), mapped per window with the local noise SD and texture to the SSIM against a full dose (fitted on real "
    "dose pairs), " + _WINDOWS
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


def _gaussian_radius(sigma_px: float) -> int:
    """Radius (voxels) of a Gaussian of sigma_px truncated as the SSIM window's (OpenCV kernel side 2 r + 1)."""
    return int(SSIM_TRUNCATE * sigma_px + 0.5)


def median_features(hu: np.ndarray, reference: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """float32 (MEDIAN_FEATURES, z, y, x) per voxel of hu (z, y, x, HU) against its median filter reference, in window
    (values scaled to [0, 1], borders reflected): the SSIM (N2Q settings, moments in float32); for each sigma of
    MEDIAN_NOISE_SIGMAS_PX the Gaussian-weighted RMS of the residual hu - reference (a local noise SD);
    for each sigma of MEDIAN_TEXTURE_SIGMAS_PX that of the residual's steps to its left and upper neighbours (low
    against the noise SD for smooth, correlated noise, which the median leaves in its reference)."""
    residual, smooth = scale_to_unit(hu, window), scale_to_unit(reference, window)
    features = np.empty((MEDIAN_FEATURES, *hu.shape), np.float32)
    features[0] = ssim_of_scaled(residual, smooth, precise=False)
    residual -= smooth
    steps = np.zeros_like(residual)
    steps[:, :, 1:] = np.square(np.diff(residual, axis=2))
    steps[:, 1:] += np.square(np.diff(residual, axis=1))
    np.multiply(residual, residual, out=residual)
    sources = [(residual, sigma) for sigma in MEDIAN_NOISE_SIGMAS_PX] + [(steps, s) for s in MEDIAN_TEXTURE_SIGMAS_PX]
    for out, (values, sigma) in zip(features[1:], sources):
        side = 2 * _gaussian_radius(sigma) + 1
        for plane, out_plane in zip(values, out):
            cv2.GaussianBlur(plane, (side, side), sigma, dst=out_plane, borderType=cv2.BORDER_REFLECT)
    np.sqrt(features[1:], out=features[1:])  # blurs of squares are >= 0
    return features


#: Tensors of one window of the median-SSIM calibration (MedianCalibration).
MEDIAN_TENSORS = ("feature_mean", "feature_sd", "w0", "b0", "w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class MedianCalibration:
    """Per window, a network of two tanh layers mapping ``median_features`` (the noise as its SD) to the SSIM
    against a full dose.

    layers: {window: (w0, b0, w1, b1, w2, b2)}, float32 weights (inputs, outputs) and biases of three dense layers
    (MEDIAN_FEATURES -> h -> h -> 1), the first with the standardisation of its inputs folded in. Stored per window
    W as "W.<name>" (MEDIAN_TENSORS: the features' mean and SD, then weights (outputs, inputs) as PyTorch writes
    them, and biases) in median_ssim.safetensors.
    """

    layers: dict[str, tuple[np.ndarray, ...]]

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], source: Path) -> MedianCalibration:
        """The calibration of a weights file's tensors; InputError naming source for a missing tensor or shapes that
        do not make the network (MEDIAN_FEATURES -> h -> h -> 1, h >= 2)."""
        layers = {}
        for window in QUALITY_WINDOWS_HU:
            try:
                mean, sd, w0, b0, w1, b1, w2, b2 = (tensors[f"{window}.{name}"] for name in MEDIAN_TENSORS)
            except KeyError as error:
                raise InputError(f"{source}: no tensor {error} in a median-SSIM calibration") from None
            hidden = len(b0)
            shapes = [array.shape for array in (mean, sd, w0, b0, w1, b1, w2, b2)]
            expected = [(MEDIAN_FEATURES,)] * 2 + [(hidden, MEDIAN_FEATURES), (hidden,), (hidden, hidden), (hidden,)]
            if hidden < 2 or shapes != expected + [(1, hidden), (1,)] or not (sd > 0).all():
                raise InputError(f"{source}: tensor shapes {shapes} of window {window} are no median-SSIM calibration")
            first = w0.T / sd[:, None]  # w0 ((x - mean) / sd) = (w0 / sd) x - (w0 / sd) mean
            arrays = (first, b0 - mean @ first, w1.T, b1, w2.T, b2)
            layers[window] = tuple(np.ascontiguousarray(array, np.float32) for array in arrays)
        return cls(layers)

    def __call__(self, window: str, features: np.ndarray) -> np.ndarray:
        """The calibrated values (float32 (n,) in [0, 1]) of features (MEDIAN_FEATURES, n) (``median_features`` at n
        voxels).

        Plane by plane (cv2.addWeighted, cv2.scaleAdd), not a matrix product: the layers are 4 to 8 wide, too narrow
        for BLAS, whose own threads would also spin on the cores the slab threads need."""
        w0, b0, w1, b1, w2, b2 = self.layers[window]
        hidden = _dense(features, w0, b0)
        np.tanh(hidden, out=hidden)
        hidden = _dense(hidden, w1, b1)
        np.tanh(hidden, out=hidden)
        values = _dense(hidden, w2, b2)[0]
        return np.clip(values, 0.0, 1.0, out=values)


def _dense(inputs: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """bias + weights^T inputs: (outputs, n) float32 of inputs (inputs >= 2, n), weights (inputs, outputs)."""
    out = np.empty((weights.shape[1], inputs.shape[1]), np.float32)
    for j, row in enumerate(out):
        cv2.addWeighted(inputs[0], float(weights[0, j]), inputs[1], float(weights[1, j]), float(bias[j]), dst=row)
        for k in range(2, len(inputs)):
            cv2.scaleAdd(inputs[k], float(weights[k, j]), row, dst=row)
    return out


@functools.lru_cache(maxsize=4)
def median_calibration(card_path: Path = MEDIAN_SSIM_CARD) -> MedianCalibration:
    """The median-SSIM calibration of a card (default the bundled one), weights sha256-checked; InputError naming
    the file when it is missing, replaced or no calibration."""
    tensors, _ = load_verified(card_path)
    return MedianCalibration.from_tensors(tensors, checkpoint_files(card_path)[1])


def calibration_of(model: ModelSpec) -> MedianCalibration | None:
    """The calibration a median-SSIM spec runs with (its card's, read once per card), None for other models."""
    if model.name != MEDIAN_SSIM_MODEL or model.is_learned:
        return None
    return median_calibration(model.card_path or MEDIAN_SSIM_CARD)


def median_ssim_windows(
    hu: np.ndarray, inside: np.ndarray | None = None, calibration: MedianCalibration | None = None
) -> dict[str, np.ndarray]:
    """{window: median-SSIM map (float32 (z, y, x) in [0, 1])} of hu (z, y, x, HU) in each quality window; with
    inside (bool (z, y, x)), computed there only and NaN elsewhere; calibration: the bundled one by default."""
    reference, calibration = median_reference(hu), calibration or median_calibration()
    voxels = None if inside is None else np.flatnonzero(inside)
    found = {}
    for name, window in QUALITY_WINDOWS_HU.items():
        features = median_features(hu, reference, window)
        if inside is None:
            found[name] = calibration(name, features.reshape(len(features), -1)).reshape(hu.shape)
        else:
            found[name] = np.full(hu.shape, np.nan, np.float32)
            found[name].reshape(-1)[voxels] = calibration(name, features.reshape(len(features), -1)[:, voxels])
    return found


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


#: Pixels around the body that a median-SSIM value inside it depends on: the widest window's radius (SSIM, or a
#: feature's Gaussian plus the one-voxel step), then the median's.
MEDIAN_SSIM_MARGIN = (
    max(SSIM_RADIUS, _gaussian_radius(max(MEDIAN_NOISE_SIGMAS_PX + MEDIAN_TEXTURE_SIGMAS_PX)) + 1) + MEDIAN_KERNEL // 2
)


def _median_ssim(
    volume: CTVolume,
    model: ModelSpec,
    calibration: MedianCalibration,
    body: SlabMap,
    lung: SlabMap,
    progress: ProgressCallback | None,
) -> QualityMap:
    """The median-SSIM map (module docstring) of volume inside body, slice by slice in the slab threads, each slice
    computed at its body voxels from features on the body's bounding box widened by MEDIAN_SSIM_MARGIN (the same
    values as on the whole slice)."""
    windows = {name: StagedMap(volume.shape, np.float32) for name in QUALITY_WINDOWS_HU}

    def compute(start: int, stop: int) -> None:
        for z in range(start, stop):  # one slice at a time: the features of a 512^2 slice take 6 MiB per window
            inside = np.asarray(body[z], dtype=bool)
            found = {name: np.full((1, *volume.shape[1:]), np.nan, dtype=np.float32) for name in windows}
            if inside.any():
                rows, columns = _body_box(inside, MEDIAN_SSIM_MARGIN)
                hu = volume.hu_slab(z, z + 1)[:, rows, columns]
                for name, values in median_ssim_windows(hu, inside[None, rows, columns], calibration).items():
                    found[name][:, rows, columns] = values  # NaN outside the body already
            for name, values in found.items():
                windows[name].write(z, values)

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
    calibration = calibration_of(model)  # before any work: a missing or replaced weights file is refused here
    body = noise.body_mask
    lung = packed_lung_mask(volume.hu, volume.spacing[0], body)
    if model.kind == "composite":
        return _denoised_ssim(volume, model, noise, body, lung, device, progress, cancel)
    if calibration is not None:
        return _median_ssim(volume, model, calibration, body, lung, progress)
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
