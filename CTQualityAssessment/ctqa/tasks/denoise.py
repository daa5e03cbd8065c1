"""Task denoise: a low-dose CT denoised by a learned denoiser (``ctqa.models.denoise_network``, registry task
"denoise"), as a new CTVolume on the input's grid; the input volume and its array are never changed.

A denoiser works slice by slice in HU (the network scale is clip(HU, -1024, 3071) / 1000; the HU clipped away are
added back unchanged). Its output is kept at the input's precision: an input of whole HU (every scanner's images,
and NRRD/NIfTI exported from them) gives whole HU (rounding changes a voxel by at most 0.5 HU, far below any CT's
noise), so the denoised CT is stored as int16 like the input (``storage_array``); an input with fractional HU (a
[0, 1] rendering read with --scaling) keeps float32. A volume read from a display window (``clipped_hu``) stays
within that window.

torch, MONAI and safetensors are imported only when a denoiser runs; a denoiser asked for without them, or "default"
without an installed one, is refused with one line saying how to get it (unlike the global score, denoising is never
skipped silently: the user asked for it).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass

import numpy as np

from ctqa.errors import InputError
from ctqa.models import registry
from ctqa.models.grid import place
from ctqa.models.registry import DEFAULT_MODEL, ModelSpec
from ctqa.slabs import ProgressCallback
from ctqa.volume import CTVolume

TASK = "denoise"
#: What a denoiser needs beyond the core (pip install "ctqa[learned]"; in Slicer, the PyTorch extension and
#: Resources/requirements-learned.txt).
LEARNED_PACKAGES = ("torch", "monai", "safetensors")
#: Slices checked at a time for whole HU (no full-volume temporary).
CHECK_SLICES = 16
#: How the quality figures of a denoised image are to be read (summary.json "denoised"."quality_caveat"), from the
#: check on the real Mayo quarter/full-dose pairs (docs/denoise_evaluation.md): the learned map predicts the SSIM
#: against full dose from how noisy an image looks, and a denoiser removes the look of noise, not the information lost.
QUALITY_CAVEAT = (
    "apparent quality: the quality map and the 0-4 score judge how noisy an image looks, and denoising removes the "
    "look of noise, not the information the low dose lost; on real quarter-dose pairs the map read denoised images "
    "0.10 (bundled denoiser) to 0.20 (BM3D, non-local means) above their true SSIM against the full-dose image, so "
    "read the after figures as noise removed, not as quality gained, and compare the images themselves"
)
DEFINITION = (
    "the same figures measured on the denoised CT (denoised_ct.nrrd, quality_map_denoised.nrrd): model and its "
    "training method (supervised: simulated low-dose / full-dose pairs; neighbor2neighbor: low-dose images alone), "
    "gnl_hu, snr, cnr, global_quality_score, quality_median, quality_p10, score (the 0-4 global_score block, when a "
    "score model ran), gnl_reduction_percent = 100 x (1 - GNL after / GNL before), reference_ssim_mean_body (SSIM "
    "of the denoised CT against --reference over the body), quality_caveat: how far the quality figures of a "
    "denoised image can be trusted"
)


@dataclass(frozen=True)
class Denoised:
    """A denoised CT and how it was made.

    volume: the denoised CT: float32 (z, y, x) HU, a new array, with the input's geometry, scaling and metadata.
    model: the denoiser's name; method: its training, "supervised" or "neighbor2neighbor" (model card).
    device, precision: where the last batch ran and in which precision; device_fallback: why CUDA was left, or None.
    notes: remarks for the summary (slices resampled onto the denoiser's grid, ``ctqa.models.grid``).
    """

    volume: CTVolume
    model: str
    method: str
    device: str
    precision: str = "float32"
    device_fallback: str | None = None
    notes: tuple[str, ...] = ()


def missing_packages() -> list[str]:
    """The LEARNED_PACKAGES that cannot be imported here."""
    return registry.missing_packages(LEARNED_PACKAGES)


def resolve(choice: str | os.PathLike | ModelSpec | None = DEFAULT_MODEL, require_packages: bool = True) -> ModelSpec:
    """The denoiser a user's choice names: "default" (the manifest's default denoiser), a bundled name or a
    checkpoint (X, X.json, X.safetensors); a ModelSpec passes through. InputError (one line) when none is
    installed, for unknown names, missing or other-task checkpoints, and (require_packages) when PyTorch, MONAI or
    safetensors are missing. require_packages=False: what the choice names, for an installer that will provide the
    packages (the Slicer module)."""
    if isinstance(choice, ModelSpec):
        return choice
    if choice in (None, "", DEFAULT_MODEL) and registry.default_model(TASK) is None:
        raise InputError(
            "no denoise model is installed: train one with `ctqa-train denoise` and pass its checkpoint "
            "(X.json or X.safetensors) as the denoise model"
        )
    spec = registry.resolve(TASK, choice)
    missing = missing_packages() if require_packages else []
    if missing:
        raise InputError(f"denoise model {spec.name}: needs {', '.join(missing)} (pip install 'ctqa[learned]')")
    return spec


def is_whole_hu(hu: np.ndarray) -> bool:
    """True when every voxel of hu is a whole number within int16 (NaN is not), checked CHECK_SLICES at a time."""
    info = np.iinfo(np.int16)
    for start in range(0, hu.shape[0], CHECK_SLICES):
        part = hu[start : start + CHECK_SLICES]
        if not (np.array_equal(np.rint(part), part) and info.min <= part.min() and part.max() <= info.max):
            return False
    return True


def storage_array(hu: np.ndarray) -> np.ndarray:
    """The array a denoised CT is written as: int16 (a new array) when its values round-trip through int16 exactly
    (whole HU in range, no NaN), else float32."""
    return hu.astype(np.int16) if is_whole_hu(hu) else hu.astype(np.float32, copy=False)


def run(
    volume: CTVolume,
    spec: ModelSpec,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    self_ensemble: bool = False,
) -> Denoised:
    """Denoise volume with the denoiser spec (resolved by ``resolve``); volume.hu is not changed.

    device: "auto", "cpu" or "cuda" (a missing CUDA, or CUDA out of memory, falls back to the CPU, reported in
    device_fallback); progress(fraction, message) after each batch; cancel stops between batches
    (``ctqa.models.inference.Cancelled``); self_ensemble: the mean over the slice's eight rotations and flips
    (``denoise_network.denoise_slices``; 8 x the time).
    """
    from ctqa.models.denoise_network import denoise_volume, load_denoise_model

    model, card = load_denoise_model(spec.card_path, "cpu")  # denoise_volume moves a copy to the device
    placed = place(volume, card, spec.name)
    result = denoise_volume(
        model, placed.hu, device=device, progress=progress, cancel=cancel, self_ensemble=self_ensemble
    )
    hu, notes = result.hu, placed.notes
    if placed.target_mm is not None:  # the denoised change, not the image, goes back: the input's own detail is kept
        hu = volume.hu + placed.back(hu - placed.hu, volume.shape[1:])
        notes = (f"{notes[0]}; noise finer than its {placed.target_mm:.2f} mm pixels is left in the image",)
    if is_whole_hu(volume.hu):
        np.rint(hu, out=hu)
    if volume.clipped_hu is not None:
        np.clip(hu, *volume.clipped_hu, out=hu)
    method = str(card.get("training", {}).get("method", "?"))
    return Denoised(
        dataclasses.replace(volume, hu=hu),
        spec.name,
        method,
        result.run.device_used,
        result.run.precision,
        result.run.fallback,
        notes,
    )
