"""Physics measures: noise map, GNL, quality mapping, body mask — on volumes with known inserted noise."""

import numpy as np
import pytest
from scipy import ndimage

from ctqa.physics.noise import analyse_noise, histogram_mode, quality_from_noise
from ctqa.physics.ssim import ssim_map
from ctqa.volume import CTVolume

SPACING = (0.75, 0.75, 2.0)


def _phantom(depth=6, size=192):
    """Noise-free (z, y, x) phantom in HU: air, a body ellipse of 40 HU with a 240 HU insert and an air hole."""
    yy, xx = np.mgrid[:size, :size]
    centre = size / 2
    body = ((yy - centre) / (0.42 * size)) ** 2 + ((xx - centre) / (0.46 * size)) ** 2 < 1
    insert = np.hypot(yy - 0.4 * size, xx - 0.6 * size) < 0.12 * size
    hole = np.hypot(yy - 0.62 * size, xx - 0.35 * size) < 0.06 * size
    image = np.where(body, 40.0, -1000.0) + np.where(insert, 200.0, 0.0)
    image[hole] = -1000.0
    return np.repeat(image[None].astype(np.float32), depth, axis=0), body, insert, hole


def _noisy(clean, sd, seed=0):
    return clean + np.random.default_rng(seed).normal(0.0, sd, clean.shape).astype(np.float32)


@pytest.mark.parametrize("sd", [8.0, 20.0, 45.0])
def test_noise_map_and_gnl_recover_inserted_noise(sd):
    clean, body, _, _ = _phantom()
    analysis = analyse_noise(CTVolume(_noisy(clean, sd), SPACING))
    assert np.nanmedian(analysis.noise_sd) == pytest.approx(sd, rel=0.10)
    assert analysis.gnl == pytest.approx(sd, rel=0.10)
    np.testing.assert_allclose(analysis.slice_noise_sd, sd, rtol=0.10)


@pytest.mark.parametrize("window_mm", [4.5, 6.0, 12.0])
def test_window_size_changes_resolution_not_level(window_mm):
    clean, _, _, _ = _phantom()
    analysis = analyse_noise(CTVolume(_noisy(clean, 20.0), SPACING), window_mm=window_mm)
    assert np.nanmedian(analysis.noise_sd) == pytest.approx(20.0, rel=0.10)
    expected_cells = max(3, round(window_mm / 2 / SPACING[0]))
    assert analysis.window_voxels == (2 * expected_cells, 2 * expected_cells)


def test_edges_do_not_inflate_the_noise_map():
    clean, _, insert, _ = _phantom()
    analysis = analyse_noise(CTVolume(_noisy(clean, 20.0), SPACING))
    band = ndimage.binary_dilation(insert, iterations=6) & ~ndimage.binary_erosion(insert, iterations=6)
    near_edge = analysis.noise_sd[:, band]
    assert np.nanmedian(near_edge) == pytest.approx(20.0, rel=0.10)
    assert np.nanpercentile(near_edge, 95) < 20.0 * 1.15
    # A plain local SD over the same window would be far above the true noise at a 200 HU edge.
    plain = np.sqrt(ndimage.uniform_filter(clean[0] ** 2, 8) - ndimage.uniform_filter(clean[0], 8) ** 2 + 400.0)
    assert np.percentile(plain[band], 95) > 40.0


def test_body_mask_keeps_inner_air_and_drops_outside_air():
    clean, body, _, hole = _phantom()
    analysis = analyse_noise(CTVolume(_noisy(clean, 10.0), SPACING))
    mask = analysis.body_mask[0]
    assert mask[hole].all(), "air inside the body (lung, bowel gas) belongs to the body"
    outside = ~ndimage.binary_dilation(body, iterations=8)
    assert not mask[outside].any()
    inside = ndimage.binary_erosion(body, iterations=8)
    assert mask[inside].all()
    assert np.isnan(analysis.physics_quality()[:, ~mask]).all() and np.isnan(analysis.noise_sd[:, ~mask]).all()
    quality = analysis.physics_quality()[np.isfinite(analysis.physics_quality())]
    assert quality.min() >= 0.0 and quality.max() <= 1.0


@pytest.mark.parametrize("sd", [5.0, 12.0, 25.0])
def test_quality_reads_as_the_reference_ssim_of_flat_tissue(sd):
    """The documented mapping: quality = the SSIM flat tissue with this noise has against its noise-free self."""
    clean = np.full((4, 128, 128), 40.0, dtype=np.float32)
    noisy = _noisy(clean, sd, seed=3)
    analysis = analyse_noise(CTVolume(noisy, SPACING))
    reference_ssim = ssim_map(noisy, clean)
    core = (slice(None), slice(16, -16), slice(16, -16))
    assert np.nanmean(analysis.physics_quality()[core]) == pytest.approx(reference_ssim[core].mean(), abs=0.03)


def test_quality_mapping_values():
    np.testing.assert_allclose(quality_from_noise(np.array([0.0, 12.0, 24.0, np.nan])), [1.0, 0.5, 0.2, np.nan])


def test_histogram_mode_finds_the_peak_not_the_tail():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(15.0, 1.0, 20000), rng.uniform(20.0, 200.0, 8000)])
    assert histogram_mode(values) == pytest.approx(15.0, abs=0.5)


def test_slice_too_small_for_a_window_is_refused():
    from ctqa.errors import InputError

    with pytest.raises(InputError, match="smaller than one"):
        analyse_noise(CTVolume(np.zeros((1, 5, 5), np.float32), (1.0, 1.0, 1.0), source="tiny.nrrd"))


@pytest.mark.parametrize("pair", ["L506_18", "L506_86"])
def test_real_mayo_pairs_quarter_dose_doubles_the_noise(shared_data, pair):
    """Real quarter-dose vs full-dose slices: noise SD should scale as 1/sqrt(0.25) = 2, in the GNL and the map."""
    gnl, map_median = {}, {}
    for role in ("input", "target"):  # quarter dose, full dose; value = (HU + 1024) / 4096
        hu = np.load(shared_data / "mayo_pairs" / f"{pair}_{role}.npy") * 4096.0 - 1024.0
        analysis = analyse_noise(CTVolume(hu[None].astype(np.float32), (0.74, 0.74, 3.0)))
        gnl[role], map_median[role] = analysis.gnl, float(np.nanmedian(analysis.noise_sd))
        assert map_median[role] == pytest.approx(gnl[role], rel=0.15)  # the map agrees with the robust GNL
    assert 1.7 < gnl["input"] / gnl["target"] < 2.3
    assert 1.7 < map_median["input"] / map_median["target"] < 2.3
