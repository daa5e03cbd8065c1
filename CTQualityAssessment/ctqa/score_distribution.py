"""MD-IQA's multi-scale Gaussian score distributions (Song et al., eq. 1) for the 0-4 global score: targets and
decoding, numpy only (the network that predicts them belongs to issue 11's global_score task).

A score s on [0, M] (M = SCORE_MAX, the LDCTIQAC2023 scale) becomes, at each scale tau_k, a Gaussian over bins
j = 0..N with centre u = s / M * N and width sigma_k = N * tau_k: Y_k[j] = exp(-(j - u)^2 / (2 sigma_k^2)) (peak 1).
Bins run from 0 to N inclusive so that both ends of the scale are representable. A prediction decodes to the mean
over scales of argmax_j(Y_k) / N * M; its uncertainty is the mean over scales of the SD of Y_k read as a
distribution over the bin scores j / N * M.
"""

from __future__ import annotations

import numpy as np

SCORE_MAX = 4.0
DEFAULT_BINS = 40
DEFAULT_TAUS = (0.05, 0.1, 0.2)


def bin_scores(bins: int = DEFAULT_BINS) -> np.ndarray:
    """(bins + 1,) the score of each bin, 0..SCORE_MAX."""
    return np.arange(bins + 1) / bins * SCORE_MAX


def gaussian_targets(scores, bins: int = DEFAULT_BINS, taus=DEFAULT_TAUS) -> np.ndarray:
    """(B, K, bins + 1) eq. 1 targets of scores (B,) on [0, SCORE_MAX] at the K scales taus; ValueError outside."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not np.isfinite(scores).all() or scores.min(initial=0.0) < 0 or scores.max(initial=0.0) > SCORE_MAX:
        raise ValueError(f"scores must lie in [0, {SCORE_MAX:g}]")
    centres = scores / SCORE_MAX * bins
    sigmas = bins * np.asarray(taus, np.float64)
    positions = np.arange(bins + 1)
    return np.exp(-((positions[None, None] - centres[:, None, None]) ** 2) / (2.0 * sigmas[None, :, None] ** 2))


def decode(distributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score (B,), sd (B,)) of predicted distributions (B, K, bins + 1): the mean over scales of each argmax bin's
    score, and the mean over scales of the spread (negative values count as 0; an all-zero scale has spread 0)."""
    distributions = np.asarray(distributions, np.float64)
    bins = distributions.shape[-1] - 1
    values = bin_scores(bins)
    score = values[np.argmax(distributions, axis=-1)].mean(axis=-1)
    weights = np.clip(distributions, 0.0, None)
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    mean = (weights * values).sum(axis=-1, keepdims=True)
    spread = np.sqrt((weights * (values - mean) ** 2).sum(axis=-1))
    return score, spread.mean(axis=-1)
