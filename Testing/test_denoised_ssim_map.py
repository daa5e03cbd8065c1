"""The denoised-SSIM quality map (tasks/quality_map.py, model "denoised_ssim"): the SSIM against the bundled
denoiser's estimate of the noise-free image."""

import numpy as np
from scipy import ndimage

from ctqa.models import registry
from ctqa.volume import CTVolume


def test_denoised_ssim_is_a_quality_map_choice_built_on_the_default_denoiser():
    assert registry.DENOISED_SSIM_MODEL in registry.available_models("quality_map")
    spec = registry.resolve("quality_map", registry.DENOISED_SSIM_MODEL)
    denoiser = registry.resolve("denoise")
    assert spec.kind == "composite" and spec.is_learned
    assert spec.card_path == denoiser.card_path and spec.task.name == "quality_map"


def _correlated_noise_phantom(noise_hu: float = 20.0, size: int = 96) -> CTVolume:
    """Two slices of a disc with a stripe and smooth (Gaussian-correlated) noise of noise_hu SD, which the
    denoiser takes for anatomy and leaves in its estimate."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:size, :size] - size / 2
    body = y**2 + x**2 < (0.4 * size) ** 2
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (2, size, size)), (0, 1.0, 1.0))
    hu = np.where(body, 40.0 + 60.0 * (np.abs(x) < 6), -1000.0) + noise * (noise_hu / noise.std())
    return CTVolume(hu.astype(np.float32), (0.7, 0.7, 3.0))


def _assess(volume: CTVolume):
    from ctqa.pipeline import assess

    return assess(volume, model="denoised_ssim", series_model="physics", score_model=None, device="cpu")


def test_a_noise_the_denoiser_leaves_in_is_named_beside_the_map():
    result = _assess(_correlated_noise_phantom())
    assert set(result.quality_map.windows) == {"soft_tissue", "lung"}
    assert result.quality_map.definition.startswith("SSIM against the default denoiser's estimate")
    assert np.isnan(result.quality[0, 0, 0]) and 0.0 < np.nanmin(result.quality) and np.nanmax(result.quality) <= 1.0
    assert any("the denoiser took out only" in note for note in result.summary.notes)


def test_on_a_real_dose_pair_the_quarter_dose_reads_lower_without_a_note(shared_data):
    from CTQualityTraining.score_features import read_pairs_csv, read_slice

    pair = read_pairs_csv(shared_data / "mayo_ldct")[0]
    results = {}
    for dose, path in (("quarter", pair.quarter), ("full", pair.full)):
        hu = read_slice(path)[128:384, 128:384]  # the centre: the body, and a quarter of the time
        results[dose] = _assess(CTVolume(np.ascontiguousarray(hu)[None], (pair.pixel_mm, pair.pixel_mm, 3.0)))
    assert results["quarter"].summary.global_quality_score < results["full"].summary.global_quality_score - 0.05
    assert not any("took out only" in note for r in results.values() for note in r.summary.notes)
