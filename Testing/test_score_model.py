"""The bundled MD-IQA global-score network on the physical grid (score_mdiqa; not the default: the physics-feature
score won the real-data table, docs/real_validation.md) on real slices it never saw: the score falls monotonically
with simulated dose and with fewer views (issue 11's acceptance), and the model card says what the score was trained
to and its grid.

The slices are held-out patients of the score dataset (test split of score_data.DEFAULT_SPLIT_GROUPS: chest_sbu
A062055 and A098752), degraded by the same projection simulation the training data came from.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctqa.io import read_volume
from ctqa.models import registry
from ctqa.models.score_network import grid_of, load_score_model, predict_scores
from CTQualityTraining.datasets import MAYO_PIXEL_MM
from CTQualityTraining.score_data import DEFAULT_SPLIT_GROUPS, simulate_score_grid, to_score_grid

DOSES = (1.0, 0.5, 0.25, 0.1)
VIEWS = (720, 360, 180, 64)
HELD_OUT = ("A062055_19001228-131.dcm", "A098752_19010127-128.dcm")


@pytest.fixture(scope="module")
def model():
    return load_score_model(registry.resolve("global_score", "score_mdiqa").card_path)


def test_card_names_the_surrogate(model):
    _, card = model
    assert card["scale"] == "0-4 LDCTIQAC2023"
    surrogate = card["training"]["dataset_surrogate"]
    assert "SSIM" in surrogate["measure"] and "720 views" in surrogate["reference"]
    held_out = {s["group"] for s in card["training"]["dataset_sources"] if s["split"] == "test"}
    assert {"A062055", "A098752"} <= held_out
    assert card["input"]["pixel_mm"] == 0.7 and "centred on the body" in card["input"]["field_of_view"]
    assert "L506" not in {s["group"] for s in card["training"]["dataset_sources"]}  # the reader study's patient


@pytest.mark.parametrize("file_name", HELD_OUT)
def test_score_falls_with_dose_and_with_fewer_views(model, shared_data, file_name, torch_single_thread):
    assert DEFAULT_SPLIT_GROUPS[file_name.split("_")[0]] == "test"
    volume = read_volume(shared_data / "chest_sbu" / file_name)
    net, card = model
    grid = (grid_of(card),) * 2
    canvas, pixel = to_score_grid(volume.hu, volume.spacing[0], grid_mm=grid[0])  # simulated on the model's grid
    images, _ = simulate_score_grid(canvas, pixel, DOSES, VIEWS, seed=1, source=file_name)
    flat = images.reshape(-1, *images.shape[-2:])
    scores = predict_scores(net, card, flat, "cpu", pixel_yx_mm=grid)[0].reshape(len(VIEWS), -1)
    by_dose, by_views = scores[0], scores[:, 0]  # full views at each dose; full dose at each view count
    assert np.all(np.diff(by_dose) < 0), f"score by dose {DOSES}: {by_dose.round(2)}"
    assert np.all(np.diff(by_views) < 0), f"score by views {VIEWS}: {by_views.round(2)}"
    assert by_dose[0] > 2.5 and scores[-1, -1] < 1.5  # full dose reads well, 64 views at 10 % dose poorly


@pytest.mark.parametrize("case", ("L506_18", "L506_86"))
def test_real_quarter_dose_reads_lower_than_its_full_dose(model, shared_data, case, torch_single_thread):
    """Real Mayo pairs (the challenge's validated quarter-dose insertion; patient L506, never trained on)."""
    full = np.load(shared_data / "mayo_pairs" / f"{case}_target.npy") * 4096.0 - 1024.0
    quarter = np.load(shared_data / "mayo_pairs" / f"{case}_input.npy") * 4096.0 - 1024.0
    net, card = model
    pairs = np.stack([full, quarter]).astype(np.float32)
    scores = predict_scores(net, card, pairs, "cpu", pixel_yx_mm=(MAYO_PIXEL_MM, MAYO_PIXEL_MM))[0]
    assert scores[0] - scores[1] > 0.5, f"full {scores[0]:.2f}, quarter {scores[1]:.2f}"
