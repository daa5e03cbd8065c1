"""Task quality_map: a per-voxel quality map (1 = best) from the physics noise map or a learned model.

Both read on the scale of the reference SSIM map (Noise2Quality settings), in two HU windows: the lung window
(-1350..150 HU) inside the lung mask (``lung.lung_mask``) and the soft-tissue window (-160..240 HU) everywhere else
in the body. In the soft-tissue window lung parenchyma is clipped to 0 and would always read about 1.

- Learned: the network predicts the SSIM against the unseen full-dose image in each window (one map channel per
  window). A model without a lung channel (format-1 cards) is shown in the soft-tissue window everywhere, with a
  note.
- Physics: the SSIM that flat tissue with the measured local noise SD has against its noise-free self,
  1 / (1 + (sd / sd50)^2) with sd50 = K2 x window width: 12 HU in the soft-tissue window, 45 HU in the lung window
  (the same noise weighs 3.75x less in a window 3.75x wider).

torch is imported only when a learned model runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ctqa.models.grid import place
from ctqa.models.registry import ModelSpec
from ctqa.physics.lung import LUNG_WINDOW_HU, QUALITY_WINDOWS_HU, lung_mask
from ctqa.physics.noise import NOISE_SD50_HU, NoiseAnalysis, quality_from_noise
from ctqa.physics.ssim import SSIM_K2, SSIM_WINDOW_HU
from ctqa.results import LearnedNoiseLevel
from ctqa.slabs import ProgressCallback
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
    """

    quality: np.ndarray
    model: ModelSpec
    definition: str
    windows: dict[str, np.ndarray]
    lung: np.ndarray
    device: str = "cpu"
    precision: str = "float32"
    device_fallback: str | None = None
    noise_level: LearnedNoiseLevel | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _compose(windows: dict[str, np.ndarray], lung: np.ndarray) -> np.ndarray:
    """The lung-window map inside lung, the soft-tissue map elsewhere (a new array)."""
    composed = windows["soft_tissue"].copy()
    if "lung" in windows:
        np.copyto(composed, windows["lung"], where=lung)
    return composed


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
    """
    body = noise.body_mask
    lung = lung_mask(volume.hu, volume.spacing[0], body)
    if not model.is_learned:
        windows = {
            "soft_tissue": noise.physics_quality(),
            "lung": quality_from_noise(noise.noise_sd, LUNG_NOISE_SD50_HU),
        }
        return QualityMap(_compose(windows, lung), model, PHYSICS_DEFINITION, windows, lung)
    from ctqa.models.checkpoints import load
    from ctqa.models.inference import learned_noise_level, predict_volume

    network, card = load(model.card_path)
    placed = place(volume, card, model.name)
    prediction = predict_volume(network, placed.hu, device=device, progress=progress, cancel=cancel)
    windows = {
        name: placed.back(prediction.maps[name], volume.shape[1:])
        for name in QUALITY_WINDOWS_HU
        if name in prediction.maps
    }
    notes = placed.notes
    for values in windows.values():
        for learned_slice, inside in zip(values, body):
            learned_slice[~inside] = np.nan
    if "lung" not in windows and lung.any():
        notes += (f"model {model.name} has no lung window: the lung reads in the soft-tissue window, where it is ~1",)
    return QualityMap(
        _compose(windows, lung),
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
