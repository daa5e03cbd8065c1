"""Dose and kernel simulation (CTQualityTraining.projection, .imagedomain) on real slices from ../shared/data.

Slices are projected over 360 views (not 720) to keep the file fast; tests that need no noise measurement average
them 2x2 to 256^2. Noise is measured on full-size slices: the core's 6 mm noise windows need the native texture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from ctqa.errors import InputError
from ctqa.io import read_volume
from CTQualityTraining.imagedomain import simulate_from_pair
from CTQualityTraining.mtf import disk_mtf50, disk_phantom
from CTQualityTraining.projection import (
    KERNELS,
    MU_WATER_PER_MM,
    ParallelBeam,
    ReconFilter,
    hu_to_mu,
    measured_noise_sd,
    simulate,
    thicken,
)

VIEWS = 360
MAYO_PIXEL_MM = 0.74  # patient L506 (data/README.md)


def _halve(hu: np.ndarray) -> np.ndarray:
    """(z, y, x) -> (z, y/2, x/2) by 2x2 averaging."""
    z, y, x = hu.shape
    return hu.reshape(z, y // 2, 2, x // 2, 2).mean(axis=(2, 4)).astype(np.float32)


def _mayo(shared_data, kind: str) -> np.ndarray:
    """Both Mayo slices (2, 512, 512) in HU; kind 'target' (full dose) or 'input' (quarter dose)."""
    files = [shared_data / "mayo_pairs" / f"L506_{case}_{kind}.npy" for case in (18, 86)]
    return np.stack([np.load(f) * 4096.0 - 1024.0 for f in files]).astype(np.float32)


@pytest.fixture(scope="module")
def real_slices(shared_data) -> list[tuple[str, np.ndarray, float]]:
    """(name, (2, 512, 512) HU, pixel mm): the Mayo full-dose slices and two TotalSegmentator DICOM slices."""
    dicom = read_volume(shared_data / "totalseg" / "example_ct_dicom")
    return [
        ("mayo L506", _mayo(shared_data, "target"), MAYO_PIXEL_MM),
        ("totalseg dicom", dicom.hu[[4, 14]], dicom.spacing[0]),
    ]


@pytest.fixture(scope="module")
def dose_series(real_slices):
    """Native-kernel simulations at 100, 50, 25 and 10 % of every real slice set."""
    return [
        (name, simulate(hu, pixel, doses=(1.0, 0.5, 0.25, 0.1), views=VIEWS, seed=3)["native"], pixel)
        for name, hu, pixel in real_slices
    ]


@pytest.mark.parametrize("dose_index", [1, 2, 3])
def test_noise_scales_as_inverse_sqrt_dose(dose_series, dose_index):
    ratios = []
    for _, sim, pixel in dose_series:
        ratios.extend(measured_noise_sd(sim.hu[dose_index], pixel) / measured_noise_sd(sim.hu[0], pixel))
    expected = 1.0 / np.sqrt(dose_series[0][1].doses[dose_index])
    assert np.mean(ratios) == pytest.approx(expected, rel=0.10), ratios
    assert np.all(np.abs(np.array(ratios) / expected - 1.0) < 0.15), ratios


def test_simulated_mean_hu_stays(dose_series):
    for name, sim, _ in dose_series:
        tissue = (sim.reference > -200) & (sim.reference < 300)
        for image in sim.hu[1:]:
            shifts = [float((low - ref)[mask].mean()) for low, ref, mask in zip(image, sim.reference, tissue)]
            assert np.all(np.abs(shifts) < 5.0), (name, shifts)


def test_full_dose_is_the_original(dose_series, real_slices):
    for (_, sim, _), (_, hu, _) in zip(dose_series, real_slices):
        np.testing.assert_array_equal(sim.hu[0], hu)
        assert np.all(sim.i0 > 1e3)


def test_image_domain_pair(shared_data):
    full, quarter = _mayo(shared_data, "target"), _mayo(shared_data, "input")
    at_quarter, at_tenth = simulate_from_pair(full, quarter, (0.25, 0.1))
    np.testing.assert_allclose(at_quarter, quarter, atol=1e-3)
    body = full > -500
    expected = np.sqrt(1 / 0.1 - 1) / np.sqrt(3) * (quarter - full)[body].std()
    assert (at_tenth - full)[body].std() == pytest.approx(expected, rel=0.05)


def test_sharp_kernel_is_noisier_and_sharper(real_slices):
    name, hu, pixel = real_slices[0]
    sims = simulate(hu[:1], pixel, doses=(1.0, 0.25), kernels=("sharp", "smooth"), views=VIEWS, seed=5)
    sharp_sd = measured_noise_sd(sims["sharp"].hu[1], pixel)
    smooth_sd = measured_noise_sd(sims["smooth"].hu[1], pixel)
    assert np.all(sharp_sd > 1.1 * smooth_sd), (sharp_sd, smooth_sd)

    pixel_mm, radius = 0.7, 60.0
    geometry = ParallelBeam(256, VIEWS)
    line_integrals = geometry.project(hu_to_mu(torch.as_tensor(disk_phantom(256, radius)))[None] * pixel_mm)
    mtf50 = {}
    for kernel, filt in KERNELS.items():
        image = geometry.fbp(line_integrals, filt, pixel_mm)[0].numpy() * 1000 / (pixel_mm * MU_WATER_PER_MM) - 1000
        mtf50[kernel] = disk_mtf50(image, radius, pixel_mm)
    assert mtf50["sharp"] > 1.2 * mtf50["smooth"], mtf50


def test_sparse_view_streaks(real_slices):
    _, hu, pixel = real_slices[1]
    hu, pixel = _halve(hu), 2 * pixel
    full = simulate(hu[:1], pixel, doses=(1.0,), kernels=("smooth",), views=VIEWS)["smooth"].reference
    sparse = simulate(hu[:1], pixel, doses=(1.0,), kernels=("smooth",), views=48)["smooth"].reference
    body = hu[:1] > -500
    assert np.sqrt(np.mean((sparse - full)[body] ** 2)) > 10.0


@pytest.mark.parametrize("window", ["ramp", "shepp-logan"])
def test_torch_matches_scikit_image(real_slices, window):
    _, hu, pixel = real_slices[0]
    hu, pixel = _halve(hu), 2 * pixel
    geometry = ParallelBeam(hu.shape[1], 180)
    mu = torch.where(geometry.inside, hu_to_mu(torch.as_tensor(hu[0])) * pixel, 0.0)
    to_hu = 1000 / (pixel * MU_WATER_PER_MM)
    ours = geometry.fbp(geometry.project(mu[None]), ReconFilter(window), pixel)[0].numpy() * to_hu - 1000
    theta = np.arange(180) * 180.0 / 180
    reference = iradon(radon(mu.numpy().astype(np.float64), theta, circle=True), theta, filter_name=window) * to_hu
    body = (hu[0] > -500) & geometry.inside.numpy()
    assert np.sqrt(np.mean((ours - (reference - 1000))[body] ** 2)) < 5.0


@pytest.mark.parametrize(
    "bad, reason",
    [
        (np.random.default_rng(0).random((64, 64)), "normalised"),
        (np.zeros((64, 64, 3)), "colour"),
        (np.full((64, 64), 40.0), "no air"),
        (np.full((64, 48), -1000.0), "square"),
        (np.full((64, 64), np.nan), "NaN"),
    ],
)
def test_bad_input_refused(bad, reason):
    with pytest.raises(InputError, match=reason):
        simulate(bad, 1.0, views=VIEWS)


def test_bad_options_refused():
    air = np.full((64, 64), -1000.0)
    air[16:48, 16:48] = 40.0
    with pytest.raises(InputError, match="dose"):
        simulate(air, 1.0, doses=(0.0,))
    with pytest.raises(InputError, match="kernel"):
        simulate(air, 1.0, kernels=("bone",))
    with pytest.raises(InputError, match="views"):
        simulate(air, 1.0, views=4)


def test_lung_kernel_matches_real_kernel_figures(real_slices):
    """Issue 10: a lung kernel has about 3x the noise of a soft one (real B70f/B30f: 138/46 HU) and an MTF50 above
    the unwindowed ramp's (the edge boost of sharp kernels); the plain Shepp-Logan "sharp" stays below the ramp."""
    name, hu, pixel = real_slices[0]
    sims = simulate(hu[:1], pixel, doses=(1.0, 0.25), kernels=("lung", "smooth"), views=VIEWS, seed=5)
    ratio = measured_noise_sd(sims["lung"].hu[1], pixel) / measured_noise_sd(sims["smooth"].hu[1], pixel)
    assert np.all(np.abs(ratio / 3.0 - 1.0) < 0.25), ratio

    pixel_mm, radius = 0.7, 60.0
    geometry = ParallelBeam(256, VIEWS)
    line_integrals = geometry.project(hu_to_mu(torch.as_tensor(disk_phantom(256, radius)))[None] * pixel_mm)
    mtf50 = {}
    for kernel, filt in {**KERNELS, "ramp": ReconFilter("ramp")}.items():
        image = geometry.fbp(line_integrals, filt, pixel_mm)[0].numpy() * 1000 / (pixel_mm * MU_WATER_PER_MM) - 1000
        mtf50[kernel] = disk_mtf50(image, radius, pixel_mm)
    assert mtf50["lung"] > mtf50["ramp"] > mtf50["sharp"] > mtf50["smooth"], mtf50


def test_thick_slices_lower_noise_by_sqrt_k(shared_data):
    """Issue 10: a thick slice averages adjacent thin ones; independent simulated noise falls by sqrt(k), anatomy
    (the mean HU of the body) stays."""
    volume = read_volume(shared_data / "totalseg" / "example_ct_dicom")
    hu, pixel = volume.hu[:4], volume.spacing[0]
    sims = simulate(hu, pixel, doses=(0.1,), kernels=("smooth",), views=VIEWS, seed=9)["smooth"]
    noise = sims.hu[0] - sims.reference  # the inserted noise alone, independent per slice
    thin = float(noise[:, 200:300, 200:300].std())
    thick = float(thicken(noise, 4)[:, 200:300, 200:300].std())
    assert thick == pytest.approx(thin / 2.0, rel=0.12)
    assert thicken(sims.hu[0], 2).shape == (2, *hu.shape[1:])
    thick_anatomy = thicken(sims.reference, 2)[0].ravel()
    assert np.corrcoef(thick_anatomy, sims.reference[0].ravel())[0, 1] > 0.95  # anatomy stays, noise falls
    with pytest.raises(InputError, match="cannot average 5"):
        thicken(hu, 5)


def test_acquire_model_gives_each_kernel_its_own_full_dose_noise(shared_data):
    """Issue 10: in the "acquire" noise model one photon budget serves every kernel, so a lung kernel's full-dose
    image is noisier than the smooth one's (real B70f / B30f: 3.0x) and its noise texture is sharper, while the
    smooth kernel keeps about the acquired noise level."""
    volume = read_volume(shared_data / "chest_sbu" / "A098752_19010127-128.dcm")
    hu, pixel = _halve(volume.hu), 2 * volume.spacing[0]  # 256^2 keeps the test fast
    sims = simulate(hu, pixel, doses=(1.0,), kernels=("smooth", "lung"), views=VIEWS, noise_model="acquire")
    acquired = measured_noise_sd(hu, pixel)[0]
    smooth, lung = (measured_noise_sd(sims[k].hu[0], pixel)[0] for k in ("smooth", "lung"))
    assert 0.7 * acquired < smooth < 1.4 * acquired
    # 2.25 since the readers set this slice's -3024 HU padding to air (issue 24): the negative attenuation the
    # padding held outside the field of view had raised the sharp kernel's measured noise above 2.5 x
    assert 2.0 < lung / smooth < 5.0
    with pytest.raises(InputError, match="unknown noise model"):
        simulate(hu, pixel, noise_model="guess")
