"""Window-aware quality maps (issue 10, item 5): the lung window inside the lung mask, soft tissue elsewhere.

The acceptance check: on a real chest slice of a patient never trained on, the lung ROI's quality from the bundled
model falls strictly with simulated dose (it read a flat ~1 in the soft-tissue window).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctqa.io import read_volume
from ctqa.models.registry import resolve
from ctqa.physics.lung import lung_mask
from ctqa.physics.noise import analyse_noise
from ctqa.pipeline import assess
from ctqa.results import to_json
from ctqa.rois import roi_from_mask
from ctqa.tasks import quality_map
from CTQualityTraining.projection import simulate

#: chest_sbu patient A098752 is the held-out test patient of the bundled model (Scripts/train_default_model.sh).
TEST_SLICE = "A098752_19001231-32.dcm"


@pytest.fixture(scope="module")
def chest(shared_data):
    return read_volume(shared_data / "chest_sbu" / TEST_SLICE)


def test_physics_map_uses_the_lung_window_inside_the_lung(chest):
    noise = analyse_noise(chest)
    result = quality_map.run(chest, resolve("quality_map", "physics"), noise)
    lung = result.lung
    assert lung.any() and not (lung & ~noise.body_mask).any()
    soft, wide = result.windows["soft_tissue"], result.windows["lung"]
    np.testing.assert_array_equal(result.quality[lung], wide[lung])
    outside_lung = noise.body_mask & ~lung
    np.testing.assert_array_equal(result.quality[outside_lung], soft[outside_lung])
    assert np.isnan(result.quality[~noise.body_mask]).all()
    # the same noise SD: 1 / (1 + (sd / 45 HU)^2) in the 1500 HU lung window
    sd = noise.noise_sd[lung]
    np.testing.assert_allclose(wide[lung], 1.0 / (1.0 + (sd / quality_map.LUNG_NOISE_SD50_HU) ** 2), rtol=1e-5)
    assert quality_map.LUNG_NOISE_SD50_HU == pytest.approx(45.0)


@pytest.mark.parametrize("name", ["default", "n2q_default"])
def test_lung_roi_quality_falls_with_dose_on_a_real_chest_slice(chest, torch_single_thread, name):
    """Acceptance: one held-out chest slice at doses 1, 0.5, 0.25, 0.1 (projection-domain noise, native kernel),
    the default (median-SSIM) and the learned map, the lung mask as the ROI: its quality falls strictly with dose,
    read in the lung window; in the soft-tissue window the clipped lung hardly moves."""
    model = resolve("quality_map", name)
    doses = (1.0, 0.5, 0.25, 0.1)
    images = simulate(chest.hu, chest.spacing[0], doses, views=360, seed=0)["native"].hu  # (dose, 1, y, x)
    roi = roi_from_mask(lung_mask(chest.hu, chest.spacing[0]), 1, "lungs")
    lung_means, soft_means = [], []
    for image in images:
        assessment = assess(dataclasses.replace(chest, hu=image), rois=[roi], model=model, device="cpu")
        (row,) = assessment.rois
        assert row.window == "lung"
        lung_means.append(row.stats.quality_mean)
        soft_means.append(float(np.nanmean(assessment.quality_map.windows["soft_tissue"][roi.box][roi.mask])))
        summary = to_json(assessment.summary)["lung"]
        assert summary["lung_voxels"] > 10_000 and summary["lung_quality_mean"] is not None
    assert np.all(np.diff(lung_means) < 0), lung_means
    assert lung_means[0] - lung_means[-1] > 0.05, lung_means
    assert min(soft_means) > 0.94, "in the soft-tissue window the lung reads ~1 at every dose"
    assert max(soft_means) - min(soft_means) < (lung_means[0] - lung_means[-1]) / 3
