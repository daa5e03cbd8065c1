"""BRISQUE (ctqa.physics.brisque) against a plain transcription of the authors' MATLAB release, on a natural image
and on a real CT slice; its response to noise on real CT; the series score.

The reference below follows brisque_feature.m, estimateggdparam.m, estimateaggdparam.m, MATLAB's imresize
(contributions with mirrored indices) and svm-scale + svm-predict line by line, with other numerical routes than the
module (a full 2D window with scipy.signal, index arithmetic for circshift, resampling matrices, one kernel value per
support vector). Both compute in float64, so features agree to rounding (1e-9 relative) and scores to 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal, special

from ctqa.physics import brisque
from ctqa.physics.brisque import MODEL_FILE, RANGE_FILE, brisque_features, brisque_score, series_brisque

# --- the reference -----------------------------------------------------------------------------------------------


def _reference_mscn(image: np.ndarray) -> np.ndarray:
    offsets = np.arange(7) - 3
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    window = np.exp(-(x**2 + y**2) / (2 * (7 / 6) ** 2))  # fspecial('gaussian', 7, 7/6)
    window /= window.sum()
    mu = signal.correlate2d(image, window, mode="same", boundary="fill")  # filter2(window, image, 'same')
    sigma = np.sqrt(np.abs(signal.correlate2d(image * image, window, mode="same", boundary="fill") - mu * mu))
    # Flat windows give exactly 0 in exact arithmetic; MATLAB's (and any) rounding leaves +-1e-14 of arbitrary sign.
    return np.where(np.abs(image - mu) < 1e-9, 0.0, image - mu) / (sigma + 1)


def _circshift(array: np.ndarray, rows: int, columns: int) -> np.ndarray:
    height, width = array.shape
    return array[np.ix_((np.arange(height) - rows) % height, (np.arange(width) - columns) % width)]


GRID = np.arange(0.2, 10.0005, 0.001)


def _reference_ggd(vec: np.ndarray) -> tuple[float, float]:
    r_gam = special.gamma(1 / GRID) * special.gamma(3 / GRID) / special.gamma(2 / GRID) ** 2
    sigma_sq = np.mean(vec**2)
    rho = sigma_sq / np.mean(np.abs(vec)) ** 2
    return GRID[np.argmin(np.abs(rho - r_gam))], sigma_sq


def _reference_aggd(vec: np.ndarray) -> tuple[float, float, float]:
    r_gam = special.gamma(2 / GRID) ** 2 / (special.gamma(1 / GRID) * special.gamma(3 / GRID))
    leftstd = np.sqrt(np.mean(vec[vec < 0] ** 2))
    rightstd = np.sqrt(np.mean(vec[vec > 0] ** 2))
    gammahat = leftstd / rightstd
    rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec**2)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    return GRID[np.argmin((r_gam - rhatnorm) ** 2)], leftstd, rightstd


def _imresize_half_matrix(n: int) -> np.ndarray:
    """(ceil(n/2), n) matrix of MATLAB's imresize(., 0.5) along one axis (bicubic, antialiasing on)."""
    scale, width = 0.5, 4 / 0.5

    def cubic(x):
        ax = np.abs(x)
        return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
            (ax > 1) & (ax <= 2)
        )

    out = math.ceil(n * scale)
    u = np.arange(1, out + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinates
    left = np.floor(u - width / 2)
    indices = left[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    weights = scale * cubic(scale * (u[:, None] - indices))
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])  # aux = [1:n, n:-1:1]
    matrix = np.zeros((out, n))
    for row, (index_row, weight_row) in enumerate(zip(indices.astype(int) - 1, weights)):
        np.add.at(matrix[row], mirror[index_row % (2 * n)], weight_row)
    return matrix


def _reference_features(image: np.ndarray) -> np.ndarray:
    feat = []
    for _ in range(2):
        structdis = _reference_mscn(image)
        feat += list(_reference_ggd(structdis.ravel()))
        for rows, columns in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            pair = (structdis * _circshift(structdis, rows, columns)).ravel()
            alpha, leftstd, rightstd = _reference_aggd(pair)
            const = np.sqrt(special.gamma(1 / alpha)) / np.sqrt(special.gamma(3 / alpha))
            meanparam = (rightstd - leftstd) * (special.gamma(2 / alpha) / special.gamma(1 / alpha)) * const
            feat += [alpha, meanparam, leftstd**2, rightstd**2]
        image = _imresize_half_matrix(image.shape[0]) @ image @ _imresize_half_matrix(image.shape[1]).T
    return np.array(feat)


def _reference_score(features: np.ndarray) -> float:
    """svm-scale -r allrange, then svm-predict with allmodel (epsilon-SVR, RBF kernel)."""
    range_lines = RANGE_FILE.read_text().splitlines()
    lower, upper = map(float, range_lines[1].split())
    scaled = np.array(features, dtype=float)
    for line in range_lines[2:]:
        index, low, high = line.split()
        k = int(index) - 1
        scaled[k] = lower + (upper - lower) * (features[k] - float(low)) / (float(high) - float(low))
    header, body = MODEL_FILE.read_text().split("\nSV\n")
    params = dict(line.split(" ", 1) for line in header.splitlines())
    gamma, rho = float(params["gamma"]), float(params["rho"])
    total = 0.0
    for line in body.strip().splitlines():
        coef, *pairs = line.split()
        sv = np.zeros(36)
        for pair in pairs:
            index, value = pair.split(":")
            sv[int(index) - 1] = float(value)
        total += float(coef) * math.exp(-gamma * float(np.sum((scaled - sv) ** 2)))
    return total - rho


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.camera().astype(np.float64)


@pytest.fixture(scope="module")
def example_ct(shared_data):
    from ctqa.io import read_volume

    return read_volume(shared_data / "totalseg" / "example_ct_dicom").hu


@pytest.fixture(scope="module")
def ct_slice(example_ct) -> np.ndarray:
    """A body crop of odd size (exercises imresize's mirrored last sample) in HU."""
    return example_ct[10, 121:396, 1:510]


# --- tests -------------------------------------------------------------------------------------------------------


def test_the_reference_resize_is_matlabs():
    """imresize(1:4, 0.5) in MATLAB gives [1.4609 3.5391]."""
    row = np.arange(1.0, 5.0)
    np.testing.assert_allclose(_imresize_half_matrix(4) @ row, [1.4609375, 3.5390625])
    np.testing.assert_allclose(brisque.halve(np.tile(row, (3, 1)))[0], [1.4609375, 3.5390625])


def test_features_and_score_equal_the_reference_on_a_natural_image(camera):
    features = brisque_features(camera)
    assert features.shape == (36,)
    np.testing.assert_allclose(features, _reference_features(camera), rtol=1e-9, atol=1e-12)
    assert brisque_score(camera) == pytest.approx(_reference_score(features), abs=1e-6)
    assert -20 < brisque_score(camera) < 20  # a clean natural photograph (pyiqa's port of the release: -7.25)


def test_features_and_score_equal_the_reference_on_a_ct_slice(ct_slice):
    image = brisque.render_soft_tissue(ct_slice)
    assert image.shape == (275, 509) and image.min() == 0 and image.max() == 255
    features = brisque_features(image)
    np.testing.assert_allclose(features, _reference_features(image), rtol=1e-9, atol=1e-12)
    assert brisque_score(image) == pytest.approx(_reference_score(features), abs=1e-6)


def test_score_rises_with_noise_on_real_ct(ct_slice):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(ct_slice.shape)
    scores = [brisque_score(brisque.render_soft_tissue(ct_slice + sd * noise)) for sd in (0.0, 15.0, 30.0, 60.0)]
    assert all(np.diff(scores) > 2), scores


def test_constant_image_scores_nan_and_a_3d_array_is_refused():
    assert math.isnan(brisque_score(np.full((64, 64), 40.0)))
    with pytest.raises(ValueError):
        brisque_features(np.zeros((2, 64, 64)))


def test_series_brisque(example_ct):
    body = example_ct > -500  # the patient (and table), not the air around

    def one_slice(z: int) -> float:
        rows, columns = np.flatnonzero(body[z].any(axis=1)), np.flatnonzero(body[z].any(axis=0))
        margin = brisque.BODY_MARGIN_PX
        top, left = max(rows[0] - margin, 0), max(columns[0] - margin, 0)
        crop = example_ct[z, top : rows[-1] + 1 + margin, left : columns[-1] + 1 + margin]
        return brisque_score(brisque.render_soft_tissue(crop))

    assert series_brisque(example_ct[10:11], body[10:11]) == pytest.approx(one_slice(10))
    score = series_brisque(example_ct, body, max_slices=4)  # slices 0, 6, 13, 19 of 20
    assert score == pytest.approx(np.mean([one_slice(z) for z in (0, 6, 13, 19)]))
    assert 0 < score < 100
    assert math.isnan(series_brisque(example_ct, np.zeros_like(body)))
    small = np.zeros_like(body)
    small[:, 200:210, 200:400] = True  # 10 rows + 2 margins = 26 < 32
    assert math.isnan(series_brisque(example_ct, small))
