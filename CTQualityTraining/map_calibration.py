"""Calibration of the reference-SSIM quality maps on real dose pairs (``ctqa-train calibrate-map``).

The median-SSIM and denoised-SSIM maps (``ctqa.tasks.quality_map``) compare the input with an estimate of its
noise-free self. The truth they stand for is the SSIM against a real full dose, which has noise of its own, so each
window is mapped by an affine fit (least squares) of the true map on the raw one: the soft-tissue window over the body
voxels, the lung window over the lung voxels, of the real pairs of every patient but ``validate_real.HELD_OUT_PATIENTS``
(L096, L143, L192), which the validation table holds out. The fitted (intercept, slope) pairs are printed as JSON; the
product's constants (MEDIAN_CALIBRATION, DENOISED_CALIBRATION) are copied from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.physics.ssim import ssim_map
from ctqa.tasks.quality_map import calibrated_ssim, median_reference
from ctqa.volume import CTVolume

from .evaluate import region_masks
from .validate_real import HELD_OUT_PATIENTS, real_pairs

METHODS = ("median", "denoised")


def _reference(method: str, quarter: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The method's noise-free estimate (1, y, x) of a quarter-dose slice (y, x) in HU."""
    if method == "median":
        return median_reference(quarter[None])
    from ctqa.tasks import denoise

    volume = CTVolume(quarter[None].astype(np.float32), (pixel_mm, pixel_mm, 3.0))
    return np.asarray(denoise.run(volume, denoise.resolve("default"), "cpu").volume.hu, np.float32)


def fit(data: Path, method: str, log=print) -> dict[str, list[float]]:
    """{window: [intercept, slope]} of the method's map on the calibration patients' real pairs (module docstring)."""
    raw: dict[str, list[np.ndarray]] = {name: [] for name in QUALITY_WINDOWS_HU}
    true: dict[str, list[np.ndarray]] = {name: [] for name in QUALITY_WINDOWS_HU}
    pairs = [pair for pair in real_pairs(data) if pair[0].split("_")[0].split()[0] not in HELD_OUT_PATIENTS]
    for index, (case, quarter, full, pixel_mm) in enumerate(pairs, 1):
        found = calibrated_ssim(quarter[None], _reference(method, quarter, pixel_mm), {})
        regions = dict(zip(("soft_tissue", "lung"), region_masks(full, pixel_mm)))
        for name, window in QUALITY_WINDOWS_HU.items():
            inside = regions[name]
            raw[name].append(found[name][0][inside])
            true[name].append(ssim_map(quarter[None], full[None], window)[0][inside])
        log(f"  {index}/{len(pairs)} {case}")
    calibration = {}
    for name in QUALITY_WINDOWS_HU:
        x, y = np.concatenate(raw[name]).astype(np.float64), np.concatenate(true[name]).astype(np.float64)
        intercept, slope = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)[0]
        calibration[name] = [round(float(intercept), 3), round(float(slope), 3)]
    return calibration


def run_cli(args) -> None:
    calibration = fit(Path(args.data), args.method)
    print(json.dumps({"method": args.method, "held_out": HELD_OUT_PATIENTS, "calibration": calibration}))
