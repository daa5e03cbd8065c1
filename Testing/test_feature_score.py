"""The physics-feature 0-4 score (ctqa.models.feature_score): its file format, its monotone design, its physical
grid, the acceptance checks of issue 21 on real slices, and its out-of-domain notes."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from ctqa.errors import InputError
from ctqa.models import registry
from ctqa.models.feature_score import (
    FEATURES,
    GRID_MM,
    NPS_FLAT_RATIO,
    NPS_MAX_SPREAD_HU,
    NPS_MIN_PATCHES,
    NPS_PATCH_MM,
    NPS_TISSUE_HU,
    FeatureScoreModel,
    SliceFeatures,
    design,
    domain_notes,
    flat_patch_spectrum,
    load_feature_model,
    nps_frequency,
    slice_features,
    to_grid,
)
from ctqa.models.plain_weights import read_safetensors, write_safetensors
from ctqa.physics.noise import analyse_noise
from ctqa.sample import make_sample
from ctqa.tasks import global_score
from ctqa.volume import CTVolume

MODEL = "score_features"


@pytest.fixture(scope="module")
def bundled():
    spec = registry.resolve("global_score", MODEL)
    return load_feature_model(spec.card_path)[0]


def _score(model: FeatureScoreModel, hu: np.ndarray, pixel_mm: float) -> float:
    volume = CTVolume(np.ascontiguousarray(hu, dtype=np.float32)[None], (pixel_mm, pixel_mm, 3.0))
    return float(model.predict(slice_features(volume))[0][0])


def test_safetensors_round_trip_and_corrupt_file(tmp_path):
    tensors = {"coefficients": np.arange(5.0), "feature_low": np.zeros(2), "feature_high": np.ones(2)}
    path = tmp_path / "m.safetensors"
    write_safetensors(tensors, path)
    read = read_safetensors(path.read_bytes(), path)
    assert all(np.array_equal(read[name], tensors[name]) for name in tensors)
    with pytest.raises(InputError, match="not a valid safetensors"):
        read_safetensors(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad", path)


def test_design_is_monotone_for_non_negative_coefficients():
    """More noise never raises the score and a higher NPS frequency never lowers it, for any c1..c4 >= 0."""
    low, high = np.array([1.0, 0.1]), np.array([4.0, 0.5])
    rng = np.random.default_rng(0)
    model = FeatureScoreModel(np.concatenate([[2.0], rng.uniform(0, 2, 4)]), low, high)
    noise = np.linspace(0.5, 4.5, 50)
    noisier = model.predict(SliceFeatures(np.stack([noise, np.full(50, 0.3)], axis=1)))[0]
    assert np.all(np.diff(noisier) <= 1e-12)
    texture = model.predict(SliceFeatures(np.stack([np.full(50, 2.5), np.linspace(0.05, 0.6, 50)], axis=1)))[0]
    assert np.all(np.diff(texture) >= -1e-12)
    assert design(np.array([[1.0, 0.1]]), low, high).shape == (1, 5)


def test_out_of_range_features_are_clipped_and_flagged():
    model = FeatureScoreModel(np.array([2.0, 1.0, 0.0, 1.0, 0.0]), np.array([1.0, 0.1]), np.array([4.0, 0.5]))
    score, out = model.predict(SliceFeatures(np.array([[9.0, 0.3], [2.0, 0.3], [np.nan, 0.3]])))
    assert out.tolist() == [True, False, False]
    assert score[0] == pytest.approx(model.predict(SliceFeatures(np.array([[4.0, 0.3]])))[0][0])
    assert np.isnan(score[2])


def test_grid_resampling_keeps_the_physical_extent():
    volume = CTVolume(np.zeros((2, 100, 80), np.float32), (0.5, 0.5, 3.0))
    gridded = to_grid(volume)
    assert gridded.spacing[0] == pytest.approx(GRID_MM, rel=0.02)
    assert gridded.shape[1] * gridded.spacing[1] == pytest.approx(100 * 0.5, rel=1e-6)
    assert to_grid(CTVolume(np.zeros((1, 64, 64), np.float32), (GRID_MM, GRID_MM, 1.0))).shape == (1, 64, 64)


def test_feature_score_needs_no_learned_packages():
    spec = registry.resolve("global_score", MODEL)
    assert global_score.missing_packages(spec) == []
    assert spec.card["architecture"]["features"] == list(FEATURES)


def test_demo_score_falls_along_the_dose_ramp():
    """Acceptance: Spearman of the per-slice score with the slice index <= -0.9 on the demo (dose 100 % -> 10 %)."""
    volume = make_sample().low_dose
    spec = registry.resolve("global_score", MODEL)
    scores = global_score.run(volume, spec, np.full(volume.shape[0], 1))
    assert spearmanr(np.arange(volume.shape[0]), scores.score)[0] <= -0.9
    assert np.ptp(scores.score) > 0.5


def test_brain_window_export_gets_an_out_of_domain_note():
    volume = CTVolume(np.zeros((1, 64, 64), np.float32), (0.45, 0.45, 1.0), clipped_hu=(0.0, 80.0))
    notes = domain_notes(volume, 0.0)
    assert any("display window" in note for note in notes)
    assert any("pixel size 0.45 mm" in note for note in notes)
    assert domain_notes(CTVolume(np.zeros((1, 64, 64), np.float32), (0.7, 0.7, 3.0)), 0.1) == ()


def _crop(hu, fraction):
    h, w = (int(round(n * fraction)) for n in hu.shape)
    top, left = (hu.shape[0] - h) // 2, (hu.shape[1] - w) // 2
    return hu[top : top + h, left : left + w]


@pytest.fixture(scope="module")
def mayo(shared_data):
    from CTQualityTraining.evaluate import mayo_pairs

    return mayo_pairs(shared_data / "mayo_pairs")


def test_real_pairs_quarter_below_full(bundled, mayo):
    for case, (quarter, full) in mayo.items():
        assert _score(bundled, quarter, 0.74) < _score(bundled, full, 0.74), case


def test_invariance_on_a_real_slice(bundled, mayo):
    """Acceptance: crop, pad, flip and rot90 move the score by at most 0.3; a 0.7x zoom keeps quarter < full."""
    from scipy import ndimage

    quarter, full = mayo["L506_86"]
    base = _score(bundled, quarter, 0.74)
    variants = {
        "crop": _crop(quarter, 0.7),
        "pad": np.pad(quarter, 100, constant_values=-1024.0),
        "flip": quarter[:, ::-1],
        "rot90": np.rot90(quarter),
    }
    for name, hu in variants.items():
        assert abs(_score(bundled, hu, 0.74) - base) <= 0.3, name

    def zoomed(hu):
        part = _crop(hu, 0.7)
        return ndimage.zoom(part, (hu.shape[0] / part.shape[0], hu.shape[1] / part.shape[1]), order=3)

    assert _score(bundled, zoomed(quarter), 0.74 * 0.7) < _score(bundled, zoomed(full), 0.74 * 0.7)



def test_a_brain_window_export_says_why_it_has_no_score(shared_data):
    """The out-of-domain reason reaches the summary when the score cannot be measured at all (review finding)."""
    from PIL import Image

    from ctqa.pipeline import assess

    grey = np.asarray(Image.open(shared_data / "reader_study" / "brain" / "set_1" / "ndct.png"), np.float32)
    volume = CTVolume((grey / 255.0 * 80.0)[None], (0.7, 0.7, 3.0), clipped_hu=(0.0, 80.0))
    result = assess(volume, series_model="physics", device="cpu")
    assert result.summary.global_score is None
    assert any("the 0-4 quality score is not reported" in note for note in result.summary.notes)
    assert any("display window (0..80 HU)" in note for note in result.summary.notes)


def _first_flat_patch_spectrum(hu: np.ndarray, pixel_mm: float):
    """(residuals, power, radius) of flat_patch_spectrum as it was first written, the definition the faster code must
    reproduce: every patch in float64, the full (size^2, size^2) quadratic projection, the complex FFT."""
    size = max(8, int(round(NPS_PATCH_MM / pixel_mm)))
    windows = np.lib.stride_tricks.sliding_window_view(hu, (size, size))[:: size // 2, :: size // 2]
    patches = windows.reshape(-1, size * size).astype(np.float64)
    means = patches.mean(axis=1)
    candidate = (means >= NPS_TISSUE_HU[0]) & (means <= NPS_TISSUE_HU[1])
    candidate &= np.abs(patches - means[:, None]).max(axis=1) < NPS_MAX_SPREAD_HU
    y, x = np.mgrid[:size, :size].reshape(2, -1).astype(np.float64)
    basis = np.stack([np.ones_like(y), y, x, y * y, x * x, y * x], axis=1)
    residual = patches[candidate] - patches[candidate] @ (basis @ np.linalg.pinv(basis)).T
    spread = residual.std(axis=1)
    flat = spread <= NPS_FLAT_RATIO * np.median(spread)
    assert flat.sum() >= NPS_MIN_PATCHES
    taper = np.outer(np.hanning(size), np.hanning(size)).ravel()
    power = (np.abs(np.fft.fft2((residual[flat] * taper).reshape(-1, size, size))) ** 2).mean(axis=0)
    power[0, 0] = 0.0
    frequency = np.fft.fftfreq(size, d=pixel_mm)
    return residual[flat], power, np.hypot(*np.meshgrid(frequency, frequency, indexing="ij"))


#: Relative tolerance of the NPS against its first implementation: float64 rounding of another summation order
#: (quadratic fit through its 6 coefficients, half-spectrum FFT); measured at most 1e-15 on the slices below.
NPS_RTOL = 1e-12


def test_nps_equals_its_first_implementation_on_real_slices(mayo):
    """The faster NPS (candidates chosen in the slice's own dtype, the detrend through the 6 surface coefficients,
    rfft2) equals the first implementation on real slices, float32 and whole-HU int16, to NPS_RTOL."""
    quarter, full = mayo["L506_18"]
    for hu in (quarter, full, np.round(quarter).astype(np.int16)):
        residuals, power, radius = _first_flat_patch_spectrum(hu, 0.74)
        found = flat_patch_spectrum(hu, 0.74)
        assert found.residuals.shape == residuals.shape  # the same flat patches
        np.testing.assert_allclose(found.residuals, residuals, rtol=0, atol=NPS_RTOL * np.abs(residuals).max())
        np.testing.assert_allclose(found.power, power, rtol=0, atol=NPS_RTOL * power.max())
        np.testing.assert_array_equal(found.radius, radius)
        expected = (radius * power).sum() / power.sum()
        assert nps_frequency(hu, 0.74) == pytest.approx(expected, rel=NPS_RTOL)


def test_the_features_reuse_the_physics_pass_only_when_it_is_theirs():
    """The pipeline's physics pass (on the grid, default window) gives the features the figures of their own pass;
    a pass with another window is not used."""
    volume = CTVolume(np.round(make_sample().low_dose.hu[:8]).astype(np.int16), (GRID_MM, GRID_MM, 2.5))
    own = slice_features(volume).values
    assert np.isfinite(own).all()
    np.testing.assert_array_equal(slice_features(volume, analyse_noise(volume)).values, own)
    other = analyse_noise(volume, window_mm=12.0)
    assert not np.allclose(np.log(other.slice_noise_sd), own[:, 0])
    np.testing.assert_array_equal(slice_features(volume, other).values, own)


def test_bad_feature_cards_are_refused_in_one_line(tmp_path):
    import json

    spec = registry.resolve("global_score", MODEL)
    for name, tensors in {
        "shape": {"coefficients": np.ones(5), "feature_low": np.zeros(2), "feature_high": np.ones(3)},
        "range": {"coefficients": np.ones(5), "feature_low": np.zeros(2), "feature_high": np.zeros(2)},
        "sign": {"coefficients": -np.ones(5), "feature_low": np.zeros(2), "feature_high": np.ones(2)},
    }.items():
        write_safetensors(tensors, tmp_path / f"{name}.safetensors")
        card = {**spec.card, "weights_sha256": None}
        (tmp_path / f"{name}.json").write_text(json.dumps(card))
        with pytest.raises(InputError, match="feature-score model|monotone"):
            load_feature_model(tmp_path / f"{name}.json")
