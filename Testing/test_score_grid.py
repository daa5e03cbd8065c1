"""The score network's physical grid (score_network.score_canvas): the same canvas whatever the crop, the padding
or the pixel size of a slice, field-of-view augmentation for training, and grid cards."""

import numpy as np
import pytest
import torch

from ctqa.models.score_network import (
    GRID_MM,
    INPUT_SIZE,
    SCORE_WINDOW_HU,
    ScoreNetConfig,
    grid_of,
    input_spec,
    score_canvas,
)
from ctqa.volume import AIR_HU
from CTQualityTraining.score import narrower_field_of_view


def _body(size: int = 300, radius: float = 100.0) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.where((y - 140) ** 2 + (x - 160) ** 2 < radius**2, 40.0, -1000.0).astype(np.float32)[None]


def test_canvas_is_centred_on_the_body_and_independent_of_padding():
    slice_ = _body()
    canvas = score_canvas(slice_, (GRID_MM, GRID_MM))
    assert canvas.shape == (1, INPUT_SIZE, INPUT_SIZE)
    rows, columns = np.nonzero(canvas[0] > -500)
    assert abs(rows.mean() - (INPUT_SIZE - 1) / 2) < 1.0 and abs(columns.mean() - (INPUT_SIZE - 1) / 2) < 1.0
    padded = np.pad(slice_, ((0, 0), (60, 10), (5, 90)), constant_values=-1000.0)
    windowed = [np.clip(c, *SCORE_WINDOW_HU) for c in (score_canvas(padded, (GRID_MM, GRID_MM)), canvas)]
    assert np.array_equal(*windowed)  # what the network sees: air is air at -1000 or -1024 HU
    assert canvas[0, 0, 0] == AIR_HU


def test_canvas_resamples_to_the_grid():
    fine = score_canvas(np.repeat(np.repeat(_body(), 2, axis=1), 2, axis=2), (GRID_MM / 2, GRID_MM / 2))
    coarse = score_canvas(_body(), (GRID_MM, GRID_MM))
    assert abs(int((fine[0] > -500).sum()) - int((coarse[0] > -500).sum())) < 0.03 * (coarse[0] > -500).sum()


def test_field_of_view_augmentation_keeps_a_square_and_fills_air():
    rng = np.random.default_rng(0)
    canvas = torch.full((16, 64, 64), 40.0)
    narrowed = narrower_field_of_view(canvas, rng)
    changed = [bool((image == AIR_HU).any()) for image in narrowed]
    assert any(changed) and not all(changed)  # about half of them
    assert torch.equal(canvas, torch.full((16, 64, 64), 40.0))  # the input is not changed


def test_grid_cards():
    config = ScoreNetConfig()
    assert grid_of({"input": input_spec(config, GRID_MM)}) == GRID_MM
    assert grid_of({"input": input_spec(config)}) is None
    assert "pixel_mm" not in input_spec(config)


def test_a_grid_model_needs_the_pixel_size():
    from ctqa.models.score_network import build_score_network, predict_scores

    model = build_score_network(ScoreNetConfig(backbone="cnn", head="regression"))
    card = {"input": input_spec(model.config, GRID_MM)}
    with pytest.raises(ValueError, match="pixel size"):
        predict_scores(model, card, _body(), "cpu")
