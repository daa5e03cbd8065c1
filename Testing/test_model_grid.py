"""The physical grid of the learned models (ctqa.models.grid): which slices are resampled, how, and that a map and a
denoised CT come back on the input's grid with a note saying so."""

import numpy as np

from ctqa.models import registry
from ctqa.models.grid import ModelGrid, on_model_grid, to_input_grid
from ctqa.volume import CTVolume


def test_model_grid_resamples_only_outside_the_trained_pixel_sizes():
    grid = ModelGrid.from_card({"input": {"pixel_mm": [0.6, 1.0]}})
    assert grid.target_mm((0.74, 0.74)) is None
    assert grid.target_mm((0.45, 0.45)) == 0.6
    assert grid.target_mm((0.4, 0.9)) == 0.9  # one axis outside is enough (non-square pixels)
    assert grid.target_mm((1.5, 1.5)) is None  # never resampled up (it would smooth the noise) ...
    assert "read as they are" in grid.coarser_note("n2q", (1.5, 1.5))  # ... but said
    assert grid.coarser_note("n2q", (0.8, 0.8)) is None
    assert ModelGrid.from_card({"input": {}}) is None
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 20.0, (1, 200, 160)).astype(np.float32)
    coarse = on_model_grid(noise, (0.45, 0.45), 0.6)
    assert coarse.shape == (1, 150, 120)
    assert coarse.std() < 0.8 * noise.std()  # anti-aliased: fine-pixel noise averages down, as at a coarser recon
    assert to_input_grid(coarse, (200, 160)).shape == (1, 200, 160)


def test_bundled_learned_maps_and_denoiser_state_their_grid():
    for name, task in (("n2q_default", "quality_map"), ("denoise_default", "denoise")):
        card = registry.resolve(task, name).card
        assert card["input"]["pixel_mm"] == [0.6, 1.0] and "field_of_view" in card["input"]



def _phantom(pixel_mm: float, size: int = 96) -> CTVolume:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:size, :size] - size / 2
    hu = np.where(y**2 + x**2 < (0.4 * size) ** 2, 40.0, -1000.0) + rng.normal(0, 15, (2, size, size))
    return CTVolume(hu.astype(np.float32), (pixel_mm, pixel_mm, 3.0))


def test_quality_map_outside_the_grid_is_resampled_and_mapped_back():
    from ctqa.pipeline import assess

    inside = assess(_phantom(0.8), model="n2q_default", series_model="physics", score_model=None, device="cpu")
    assert not any("resampled" in note for note in inside.summary.notes)
    outside = assess(_phantom(0.4), model="n2q_default", series_model="physics", score_model=None, device="cpu")
    assert outside.quality.shape == (2, 96, 96)
    assert any("resampled to 0.60 mm" in note for note in outside.summary.notes)
    non_square = _phantom(0.8)
    non_square = CTVolume(non_square.hu, (0.8, 0.4, 3.0))  # x 0.8 mm, y 0.4 mm
    one_axis = assess(non_square, model="n2q_default", series_model="physics", score_model=None, device="cpu")
    assert any("0.40 x 0.80 mm pixels were resampled to 0.80 mm" in note for note in one_axis.summary.notes)


def test_denoised_ct_outside_the_grid_keeps_the_input_grid():
    from ctqa.tasks import denoise

    volume = _phantom(0.4)
    result = denoise.run(volume, denoise.resolve("default"), "cpu")
    assert result.volume.hu.shape == volume.hu.shape and result.notes
    assert np.isfinite(result.volume.hu).all()
