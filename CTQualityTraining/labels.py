"""Training labels for simulated CT slices: SSIM maps, dose class, kernel class and a global surrogate score.

SSIM maps are made in the soft-tissue window (-160..240 HU, the default) and in the lung window (-1350..150 HU,
``ctqa.physics.lung.LUNG_WINDOW_HU``): the learned map predicts one channel per window.

Surrogate score (0-4, 4 = best, the scale of the LDCTIQAC2023 radiologist scores): the mean SSIM S (Noise2Quality
settings, ssim.py) of the slice against its full-dose reference over the body (reference > BODY_HU), mapped
linearly from S = SCORE_SSIM_FLOOR (score 0) to S = 1 (score 4) and clipped. It ranks images as SSIM does; the score
issue calibrates it against radiologist scores.
"""

from __future__ import annotations

import numpy as np

from ctqa.errors import InputError
from ctqa.physics.ssim import SSIM_WINDOW_HU, ssim_map

from .projection import KERNEL_NAMES

#: Dose fractions of the dose classes, class index = position.
DOSE_CLASSES = (0.05, 0.10, 0.25, 0.50, 0.75, 1.00)
#: Kernel classes, class index = position ("native" is the scanner's own kernel).
KERNEL_CLASSES = KERNEL_NAMES
SCORE_SSIM_FLOOR = 0.5
BODY_HU = -500.0


def dose_class(dose: float) -> int:
    """Index in DOSE_CLASSES of the class nearest to dose fraction dose on a log scale."""
    return int(np.argmin(np.abs(np.log(np.asarray(DOSE_CLASSES)) - np.log(dose))))


def kernel_class(kernel: str) -> int:
    """Index of kernel in KERNEL_CLASSES."""
    return KERNEL_CLASSES.index(kernel)


def ssim_labels(
    test_hu: np.ndarray, reference_hu: np.ndarray, source: str, window: tuple[float, float] = SSIM_WINDOW_HU
) -> np.ndarray:
    """float32 (z, y, x) SSIM map of test against reference, both (z, y, x) HU (the core's N2Q settings), on the
    HU window (default soft tissue).

    InputError naming source when the map holds NaN/inf (from NaN in the images): such a label is never written.
    """
    ssim = ssim_map(test_hu, reference_hu, window)
    bad = ssim.size - int(np.count_nonzero(np.isfinite(ssim)))
    if bad:
        raise InputError(f"{source}: SSIM label has {bad} NaN/inf pixels (NaN in the images); refusing to write it")
    return ssim


def surrogate_score(ssim: np.ndarray, reference_hu: np.ndarray) -> np.ndarray:
    """(z,) score on 0-4 per slice from its SSIM map (z, y, x) and reference (z, y, x) HU (module docstring)."""
    body = reference_hu > BODY_HU
    mean = np.array([s[m].mean() if m.any() else s.mean() for s, m in zip(ssim, body)])
    return np.clip(4.0 * (mean - SCORE_SSIM_FLOOR) / (1.0 - SCORE_SSIM_FLOOR), 0.0, 4.0).astype(np.float32)
