"""Score agreement metrics of the LDCTIQAC2023 challenge: |PLCC|, |SROCC|, |KROCC| and their sum (the overall
figure the challenge ranks by), from scipy.stats."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import ConstantInputWarning, kendalltau, pearsonr, spearmanr


@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted with reference scores over n images (absolute correlations; overall = their sum)."""

    n: int
    plcc: float
    srocc: float
    krocc: float

    @property
    def overall(self) -> float:
        return self.plcc + self.srocc + self.krocc


def agreement(predicted, reference) -> Agreement:
    """|PLCC|, |SROCC|, |KROCC| of predicted against reference (same length, at least 3 finite pairs)."""
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted {predicted.shape} and reference {reference.shape} differ in shape")
    keep = np.isfinite(predicted) & np.isfinite(reference)
    if keep.sum() < 3:
        raise ValueError("need at least 3 finite score pairs")
    p, r = predicted[keep], reference[keep]
    with warnings.catch_warnings():  # a constant input has no correlation: NaN, said by the value itself
        warnings.simplefilter("ignore", ConstantInputWarning)
        return Agreement(
            n=int(keep.sum()),
            plcc=abs(float(pearsonr(p, r).statistic)),
            srocc=abs(float(spearmanr(p, r).statistic)),
            krocc=abs(float(kendalltau(p, r).statistic)),
        )
