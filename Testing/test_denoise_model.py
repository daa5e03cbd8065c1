"""The bundled denoiser on the real Mayo quarter/full-dose pairs it never saw (patient L506): it lowers the error
against full dose, brings the noise to about the full-dose level without going far below it (no over-smoothing), and
keeps the body edge (MTF50); its card says how it was trained and that L506 was not among its sources.

The full comparison with non-local means and BM3D is docs/denoise_evaluation.md (``ctqa-train denoise-eval``).
"""

from __future__ import annotations

import pytest

from ctqa.models import registry
from ctqa.models.denoise_network import denoise_volume, load_denoise_model
from CTQualityTraining.datasets import MAYO_PIXEL_MM
from CTQualityTraining.denoise_eval import gnl, measure, read_pairs


@pytest.fixture(scope="module")
def model():
    name = registry.default_model("denoise")
    assert name is not None, "no bundled denoise model in Resources/Models/manifest.json"
    return load_denoise_model(registry.resolve("denoise", name).card_path)


@pytest.fixture(scope="module")
def pairs(shared_data):
    return read_pairs(shared_data / "mayo_pairs", MAYO_PIXEL_MM)


def test_card_says_how_it_was_trained(model):
    _, card = model
    training = card["training"]
    assert training["method"] == "supervised" and training["full_dose_images_used"] == "training and validation"
    assert not any(source["group"] == "L506" for source in training["dataset_sources"])
    assert "Scripts/train_denoise_model.sh" in card["reproduce"]


def test_real_quarter_dose_pairs(model, pairs, torch_single_thread):
    net, _ = model
    for pair in pairs:
        denoised = denoise_volume(net, pair.quarter[None], device="cpu").hu[0]
        after = measure(denoised, pair, 0.0, MAYO_PIXEL_MM)
        before = measure(pair.quarter, pair, 0.0, MAYO_PIXEL_MM)
        full_dose_noise = gnl(pair.full, MAYO_PIXEL_MM)
        assert after.gain_db > 2.8, pair.case  # measured 3.31 (L506_18) and 3.07 (L506_86)
        assert after.ssim > before.ssim + 0.05, pair.case
        assert 0.7 * full_dose_noise < after.gnl_hu < 1.1 * full_dose_noise, pair.case
        assert 0.9 < after.mtf50_ratio < 1.1, pair.case
