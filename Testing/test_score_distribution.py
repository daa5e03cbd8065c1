"""Issue 11 foundations: MD-IQA's Gaussian score distributions decode to their scores, and the challenge metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr, spearmanr

from ctqa.score_distribution import DEFAULT_BINS, SCORE_MAX, decode, gaussian_targets
from CTQualityTraining.metrics import agreement


def test_targets_decode_to_their_scores_on_the_bin_grid():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, SCORE_MAX, 200)
    decoded, spread = decode(gaussian_targets(scores))
    assert np.abs(decoded - scores).max() <= SCORE_MAX / DEFAULT_BINS / 2 + 1e-12
    assert decode(gaussian_targets([0.0, 4.0]))[0].tolist() == [0.0, 4.0]  # both ends are bins
    assert (spread > 0).all()


def test_spread_grows_with_the_scale_and_is_the_gaussian_sd():
    narrow, wide = (decode(gaussian_targets([2.0], taus=(tau,)))[1][0] for tau in (0.05, 0.15))
    assert wide > narrow
    # a Gaussian of sigma = N tau bins has SD tau * SCORE_MAX in score units (far from the ends)
    assert narrow == pytest.approx(0.05 * SCORE_MAX, rel=0.02)


def test_decoding_reads_a_bimodal_prediction_by_its_peak_and_reports_its_spread():
    unimodal = gaussian_targets([1.0], taus=(0.05,))
    bimodal = unimodal + 0.9 * gaussian_targets([3.0], taus=(0.05,))
    (score_u, sd_u), (score_b, sd_b) = decode(unimodal), decode(bimodal)
    assert score_u[0] == score_b[0] == pytest.approx(1.0)
    assert sd_b[0] > 3 * sd_u[0]


def test_targets_refuse_scores_off_the_scale():
    with pytest.raises(ValueError, match="must lie in"):
        gaussian_targets([4.5])


def test_agreement_equals_scipy_and_ignores_missing_pairs():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0, 4, 50)
    predicted = -reference + rng.normal(0, 0.5, 50)  # anti-correlated: the challenge takes absolute values
    result = agreement(np.append(predicted, np.nan), np.append(reference, 2.0))
    assert result.n == 50
    assert result.plcc == pytest.approx(abs(pearsonr(predicted, reference).statistic))
    assert result.srocc == pytest.approx(abs(spearmanr(predicted, reference).statistic))
    assert result.krocc == pytest.approx(abs(kendalltau(predicted, reference).statistic))
    assert result.overall == pytest.approx(result.plcc + result.srocc + result.krocc) and result.overall > 2.0
    with pytest.raises(ValueError, match="at least 3"):
        agreement([1.0, 2.0], [1.0, 2.0])
