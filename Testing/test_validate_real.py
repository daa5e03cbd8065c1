"""ctqa-train validate-real (CTQualityTraining/validate_real.py): the readers' quality, the variants of the
invariance check and the rank statistics; the full run is a command (docs/real_validation.md), not a test."""

import math

import numpy as np

from CTQualityTraining import validate_real


def test_readers_quality_fixes_low_dose_at_1_and_normal_dose_at_5(shared_data):
    ratings = validate_real.reader_ratings(shared_data / "reader_study" / "abdomen")
    assert len(ratings) == 70
    for (set_id, file), (quality, _method) in ratings.items():
        if file.endswith("ldct.png"):
            assert quality == 1.0, set_id
        elif file.endswith("ndct.png"):
            assert quality == 5.0, set_id
        else:
            assert 1.0 <= quality <= 5.0


def test_invariance_variants_keep_the_physical_scale():
    hu = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    assert validate_real.crop(hu, 0.7).shape == (70, 56)
    assert validate_real.pad(hu, 1.4, -1024.0).shape == (140, 112)
    assert validate_real.zoom(hu, 0.7).shape == hu.shape


def test_a_constant_figure_ranks_nothing():
    assert validate_real._spearman([1, 2, 3, 4], [3.7, 3.7, 3.7, 3.7]) == 0.0
    assert validate_real._spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isnan(validate_real._spearman([1, 2], [1, 2]))


def test_a_variant_that_is_not_scored_fails_the_invariance_check():
    assert validate_real._change(float("nan"), 3.0) == math.inf
    assert validate_real._change(2.5, 3.0) == 0.5


def test_a_folder_without_the_real_checks_is_refused_in_one_line(tmp_path):
    import pytest

    from ctqa.errors import InputError

    with pytest.raises(InputError, match="not the shared data folder"):
        validate_real.validate(tmp_path, "physics", ["score_features"])
