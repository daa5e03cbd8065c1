"""Full-reference SSIM maps with the Noise2Quality settings, slice by slice.

Settings (DESIGN.md): Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, on HU clipped
to SSIM_WINDOW_HU and scaled to [0, 1]; population (not sample) covariance as in Wang et al. 2004; borders
reflected. Equal to scikit-image's ``structural_similarity(full=True, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` per slice (within 1e-4), computed on slabs of slices in threads.
"""

from __future__ import annotations

import cv2
import numpy as np

from ctqa.slabs import ProgressCallback, run_over_slabs

#: HU window the SSIM is computed on: the abdominal soft-tissue window (level 40, width 400).
SSIM_WINDOW_HU = (-160.0, 240.0)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
#: Radius (voxels) of the Gaussian window: int(3.5 * 1.5 + 0.5) = 5, the 11x11 window.
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def scale_to_unit(hu: np.ndarray, window: tuple[float, float] = SSIM_WINDOW_HU) -> np.ndarray:
    """HU clipped to window and scaled to [0, 1], float32."""
    low, high = window
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def _gaussian_weights() -> np.ndarray:
    """The 11-tap Gaussian (sigma 1.5, truncated at 3.5 sigma, sum 1) as scipy.ndimage builds it."""
    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _ssim_slab(test: np.ndarray, reference: np.ndarray, weights: np.ndarray, dtype=np.float64) -> np.ndarray:
    """SSIM map (float32) of two (z, y, x) slabs already scaled to [0, 1].

    The moments are filtered in float64 by default: variances are differences of nearly equal numbers, and float32
    rounding there, divided by C2 = 9e-4, would already reach 1e-4 in SSIM.
    """
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    moments = np.empty((5,) + test.shape, dtype=dtype)
    x, y, xx, yy, xy = moments
    np.subtract(test, 0.5, out=x)  # centred on 0.5: variances unchanged, smaller cancellation error
    np.subtract(reference, 0.5, out=y)
    np.multiply(x, x, out=xx)
    np.multiply(y, y, out=yy)
    np.multiply(x, y, out=xy)
    # Gaussian local means of all five moments, plane by plane. OpenCV's separable filter is SIMD and several times
    # faster than scipy.ndimage.correlate1d here; BORDER_REFLECT is ndimage's "reflect" (and scikit-image's).
    smoothed = np.empty_like(moments)
    for plane, out in zip(moments.reshape(-1, *test.shape[1:]), smoothed.reshape(-1, *test.shape[1:])):
        cv2.sepFilter2D(plane, -1, weights, weights, dst=out, borderType=cv2.BORDER_REFLECT)
    mu_x, mu_y, xx, yy, xy = smoothed
    xx -= mu_x * mu_x  # variance of x
    yy -= mu_y * mu_y  # variance of y
    xy -= mu_x * mu_y  # covariance
    mu_x += 0.5
    mu_y += 0.5
    xx += yy
    xx += c2  # sigma_x^2 + sigma_y^2 + C2
    xy *= 2
    xy += c2  # 2 sigma_xy + C2
    numerator = mu_x * mu_y
    numerator *= 2
    numerator += c1
    numerator *= xy
    np.multiply(mu_x, mu_x, out=yy)
    yy += mu_y * mu_y
    yy += c1
    yy *= xx  # denominator
    return np.divide(numerator, yy, out=numerator).astype(np.float32)


def ssim_slab(
    test_hu: np.ndarray, reference_hu: np.ndarray, window: tuple[float, float] = SSIM_WINDOW_HU
) -> np.ndarray:
    """SSIM map (float32 (z, y, x)) of a slab of test against reference, both (z, y, x) in HU, in the calling
    thread (``ssim_map`` runs slabs in threads)."""
    return ssim_of_scaled(scale_to_unit(test_hu, window), scale_to_unit(reference_hu, window))


def ssim_of_scaled(test: np.ndarray, reference: np.ndarray, precise: bool = True) -> np.ndarray:
    """``ssim_slab`` of two (z, y, x) slabs already windowed and scaled to [0, 1] (``scale_to_unit``); precise=False
    filters the moments in float32 (twice as fast, errors up to about 1e-3: for estimates, never for a truth)."""
    return _ssim_slab(test, reference, _gaussian_weights(), np.float64 if precise else np.float32)


def ssim_map(
    test_hu: np.ndarray,
    reference_hu: np.ndarray,
    window: tuple[float, float] = SSIM_WINDOW_HU,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Per-voxel SSIM of test against reference, both (z, y, x) in HU; float32 map (z, y, x), 1 = identical."""
    if test_hu.shape != reference_hu.shape:
        raise ValueError(f"test shape {test_hu.shape} differs from reference shape {reference_hu.shape}")
    out = np.empty(test_hu.shape, dtype=np.float32)

    def compare(start: int, stop: int) -> None:
        out[start:stop] = ssim_slab(test_hu[start:stop], reference_hu[start:stop], window)

    run_over_slabs(compare, test_hu.shape[0], progress, message="reference SSIM map")
    return out
