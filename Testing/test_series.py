"""Per-series physics measures (ctqa/physics/series.py): water-equivalent diameter, NPS kernel index, size- and
thickness-normalised noise; and the real-data ranking of kernels."""

from __future__ import annotations

import glob
import math

import numpy as np
import pytest
from scipy import ndimage

from ctqa.io import read_volume
from ctqa.physics.noise import analyse_noise
from ctqa.physics.series import kernel_index, series_physics, water_equivalent_diameters
from ctqa.volume import CTVolume

PIXEL_MM = 0.8


def cylinder(diameter_mm: float, hu: float, noise, shape=(4, 512, 512)) -> CTVolume:
    """A uniform cylinder of diameter_mm at hu in air, plus the given noise array (z, y, x)."""
    _, y, x = np.indices(shape)
    radius = np.hypot(y - shape[1] / 2 + 0.5, x - shape[2] / 2 + 0.5) * PIXEL_MM
    image = np.where(radius < diameter_mm / 2, hu, -1000.0) + noise
    return CTVolume(image.astype(np.float32), (PIXEL_MM, PIXEL_MM, 2.5))


def test_water_cylinder_has_its_own_diameter():
    rng = np.random.default_rng(0)
    volume = cylinder(300.0, 0.0, rng.normal(0, 10, (4, 512, 512)))
    diameters = water_equivalent_diameters(volume, np.isfinite(analyse_noise(volume).noise_sd))
    assert diameters == pytest.approx(300.0, rel=0.02)
    dense = cylinder(300.0, 100.0, rng.normal(0, 10, (4, 512, 512)))  # more attenuating: a larger water equivalent
    dense_diameters = water_equivalent_diameters(dense, np.isfinite(analyse_noise(dense).noise_sd))
    assert dense_diameters == pytest.approx(300.0 * math.sqrt(1.1), rel=0.02)


def test_kernel_index_ranks_sharp_above_smooth_noise_and_ignores_the_level():
    rng = np.random.default_rng(1)
    white = rng.normal(0, 1, (4, 512, 512))
    smooth = ndimage.gaussian_filter(white, (0, 1.2, 1.2))
    smooth /= smooth.std()
    sharp_index, patches = kernel_index(cylinder(300.0, 40.0, 12.0 * white))
    smooth_index, _ = kernel_index(cylinder(300.0, 40.0, 12.0 * smooth))
    louder_index, _ = kernel_index(cylinder(300.0, 40.0, 30.0 * smooth))
    assert patches > 50
    assert sharp_index > 1.5 * smooth_index
    assert louder_index == pytest.approx(smooth_index, rel=0.03)  # a property of the kernel, not the dose


def test_noise_normalised_for_size_and_thickness():
    rng = np.random.default_rng(2)
    volume = cylinder(300.0, 40.0, rng.normal(0, 12, (4, 512, 512)))
    measured = series_physics(volume, analyse_noise(volume))
    wed = 300.0 * math.sqrt(1.04)  # 40 HU
    expected = analyse_noise(volume).gnl * math.exp(-0.0194 * (wed - 300.0) / 2) * math.sqrt(2.5 / 3.0)
    assert measured.slice_thickness_mm == 2.5
    assert measured.noise_normalised_hu == pytest.approx(expected, rel=0.05)


def test_real_sharp_kernel_ranks_above_every_soft_kernel_slice(shared_data):
    """Acceptance (issue 10): Mayo D45f slices above the soft-kernel chest_sbu (GE STANDARD, Toshiba FC17) and the
    Mayo B30 slices; the DICOM tags come along."""

    def index(path, **options):
        volume = read_volume(path, **options)
        return series_physics(volume, analyse_noise(volume)).kernel_index_per_mm, volume

    sharp = [index(path)[0] for path in glob.glob(str(shared_data / "mayo_sharp" / "*.IMA"))]
    soft = []
    for path in glob.glob(str(shared_data / "chest_sbu" / "*.dcm")):
        value, volume = index(path)
        assert volume.acquisition.kernel in ("STANDARD", "FC17")
        soft.append(value)
    for path in glob.glob(str(shared_data / "mayo_pairs" / "*.npy")):
        soft.append(index(path, scaling="mayo-npy", pixel_mm=0.74)[0])
    soft = [value for value in soft if math.isfinite(value)]
    assert len(sharp) == 2 and len(soft) >= 20
    assert min(sharp) > max(soft)
