"""Image-domain dose simulation from a quarter-dose / full-dose pair (Noise2Quality; Imran et al.).

The difference QD - FD is noise with variance (1/0.25 - 1) = 3 times the full-dose noise variance, so a dose
fraction d is reached by adding the fraction sqrt((1/d - 1) / 3) of it to the full-dose image:
I_d = I_FD + sqrt((1/d - 1) / 3) * (I_QD - I_FD). d = 0.25 returns the quarter-dose image, d = 1 the full dose.
Below d = 0.25 the difference is amplified (its anatomy-correlated residue with it).
"""

from __future__ import annotations

import numpy as np

from ctqa.errors import InputError

#: Dose fraction of the quarter-dose image of a pair.
QUARTER_DOSE = 0.25


def noise_weight(dose: float) -> float:
    """Weight of the QD - FD difference at dose fraction dose (0 < dose <= 1): sqrt((1/d - 1) / 3)."""
    if not 0.0 < dose <= 1.0:
        raise InputError(f"dose fraction must lie in (0, 1], got {dose}")
    return float(np.sqrt((1.0 / dose - 1.0) / (1.0 / QUARTER_DOSE - 1.0)))


def simulate_from_pair(full_dose_hu: np.ndarray, quarter_dose_hu: np.ndarray, doses) -> np.ndarray:
    """float32 (dose, ...) HU images at each dose fraction from full- and quarter-dose images of equal shape (HU)."""
    full = np.asarray(full_dose_hu, dtype=np.float32)
    quarter = np.asarray(quarter_dose_hu, dtype=np.float32)
    if full.shape != quarter.shape:
        raise InputError(f"full-dose shape {full.shape} differs from quarter-dose shape {quarter.shape}")
    difference = quarter - full
    return np.stack([full + np.float32(noise_weight(d)) * difference for d in doses])
