"""Full-reference SSIM map with the Noise2Quality settings."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ctqa.physics.ssim import SSIM_WINDOW_HU, scale_to_unit, ssim_map
from ctqa.sample import make_sample


def test_volume_against_itself_is_one():
    volume = make_sample().low_dose.hu
    np.testing.assert_allclose(ssim_map(volume, volume), 1.0, atol=1e-6)


def test_equals_scikit_image_slice_by_slice():
    sample = make_sample()
    ours = ssim_map(sample.low_dose.hu, sample.reference.hu)
    for index in (0, 11, 23):
        test = scale_to_unit(sample.low_dose.hu[index]).astype(np.float64)
        reference = scale_to_unit(sample.reference.hu[index]).astype(np.float64)
        _, expected = structural_similarity(
            test, reference, full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        np.testing.assert_allclose(ours[index], expected, atol=1e-4)


def test_lower_dose_gives_lower_ssim():
    sample = make_sample()
    per_slice = ssim_map(sample.low_dose.hu, sample.reference.hu).mean(axis=(1, 2))
    assert per_slice[0] == pytest.approx(1.0)  # the first slice is at full dose: identical to the reference
    assert np.all(np.diff(per_slice[1:]) < 0.01) and per_slice[-1] < per_slice[1] - 0.2


def test_window_scaling_clips_to_unit_range():
    low, high = SSIM_WINDOW_HU
    scaled = scale_to_unit(np.array([low - 500, low, (low + high) / 2, high, high + 500]))
    np.testing.assert_allclose(scaled, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differs"):
        ssim_map(np.zeros((1, 16, 16)), np.zeros((2, 16, 16)))
