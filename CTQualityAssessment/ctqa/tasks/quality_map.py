"""Task quality_map: a per-voxel quality map (1 = best) from the physics noise map or a learned model.

Both read on the scale of the reference SSIM map (Noise2Quality settings): the learned map predicts the SSIM against
the unseen full-dose image; the physics map is the SSIM that flat tissue with the measured local noise has against
its noise-free self. torch is imported only when a learned model runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ctqa.models.registry import ModelSpec
from ctqa.physics.noise import NOISE_SD50_HU, NoiseAnalysis
from ctqa.physics.ssim import SSIM_WINDOW_HU
from ctqa.results import LearnedNoiseLevel
from ctqa.slabs import ProgressCallback
from ctqa.volume import CTVolume

PHYSICS_DEFINITION = (
    f"1 / (1 + (noise_sd / {NOISE_SD50_HU:g} HU)^2): expected SSIM of flat tissue against its noise-free self on the "
    f"{SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU window; NaN outside the body"
)
LEARNED_DEFINITION = (
    "predicted SSIM against the unseen full-dose image (Noise2Quality settings, "
    f"{SSIM_WINDOW_HU[0]:g}..{SSIM_WINDOW_HU[1]:g} HU window); NaN outside the body"
)


@dataclass
class QualityMap:
    """quality: float32 (z, y, x) in [0, 1], 1 = best, NaN outside the body; where and how it was computed."""

    quality: np.ndarray
    model: ModelSpec
    definition: str
    device: str = "cpu"
    precision: str = "float32"
    device_fallback: str | None = None
    noise_level: LearnedNoiseLevel | None = None


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
    if not model.is_learned:
        return QualityMap(noise.physics_quality(), model, PHYSICS_DEFINITION)
    from ctqa.models.checkpoints import load
    from ctqa.models.inference import learned_noise_level, predict_volume

    network, _ = load(model.card_path)
    prediction = predict_volume(network, volume.hu, device=device, progress=progress, cancel=cancel)
    quality = prediction.quality
    for learned_slice, noise_slice in zip(quality, noise.noise_sd):
        learned_slice[np.isnan(noise_slice)] = np.nan
    return QualityMap(
        quality,
        model,
        LEARNED_DEFINITION,
        prediction.device_used,
        prediction.precision,
        prediction.fallback,
        learned_noise_level(prediction),
    )
