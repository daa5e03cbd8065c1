"""Values that are not HU: --scaling conversions give the right HU and noise; the plausibility check; physical
alignment of a reference stored another way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from ctqa.cli import main
from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.pipeline import assess
from ctqa.scaling import check_plausible_hu, parse
from ctqa.volume import CTVolume

NOISE_SD_HU = 12.0


def abdomen_hu(shape=(512, 512), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(HU image with white noise of NOISE_SD_HU, body mask): air, a fat ring and 50 HU soft tissue."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    radius = ((yy - shape[0] / 2) / (0.40 * shape[0])) ** 2 + ((xx - shape[1] / 2) / (0.45 * shape[1])) ** 2
    hu = np.where(radius < 1.0, -100.0, -1000.0)
    hu = np.where(radius < 0.8, 50.0, hu)
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SD_HU, shape)
    return (hu + noise).astype(np.float32), radius < 1.0


def test_ldctiqac2023_tiff_reports_its_noise_in_hu(tmp_path, capsys):
    """A [0, 1] W350/L40 rendering of known noise: GNL within 10 % of the true 12 HU, the body not the whole image."""
    hu, body = abdomen_hu()
    rendering = np.clip((hu + 135.0) / 350.0, 0.0, 1.0).astype(np.float32)
    path = tmp_path / "0001.tif"
    tifffile.imwrite(path, rendering)

    out = tmp_path / "out"
    assert (
        main(["assess", str(path), "--scaling", "ldctiqac2023", "--model", "physics", "--quiet", "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gnl_hu"] == pytest.approx(NOISE_SD_HU, rel=0.10)
    assert summary["settings"]["scaling"] == "ldctiqac2023"
    assert summary["body_voxels"] == pytest.approx(body.sum(), rel=0.05)  # clipped air (-135 HU) is not body
    assert any("assumed 1 mm" in note for note in summary["notes"])
    assert "ctqa: note: no pixel spacing" in capsys.readouterr().err

    code = main(["assess", str(path), "--model", "physics", "--quiet", "--out", str(tmp_path / "refused")])
    assert code == 2 and "ldctiqac2023" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("hu+1024", lambda hu: np.round(hu + 1024.0).astype(np.uint16)),
        ("mayo-npy", lambda hu: ((hu + 1024.0) / 4096.0).astype(np.float64)),
        ("window:-1024,3071", lambda hu: ((hu + 1024.0) / 4095.0).astype(np.float32)),
    ],
)
def test_scalings_recover_hu(tmp_path, name, stored):
    hu = np.clip(abdomen_hu((96, 96))[0], -1024.0, None)  # stored formats start at -1024 HU
    path = tmp_path / "slice.npy"
    np.save(path, stored(np.round(hu)))
    volume = read_volume(path, scaling=name, pixel_mm=0.7)
    np.testing.assert_allclose(volume.hu[0], np.round(hu), atol=0.05)
    assert volume.spacing == (0.7, 0.7, 0.7) and volume.scaling == parse(name).name and not volume.notes


def test_plausibility_check_passes_real_ct_kinds():
    hu, _ = abdomen_hu((64, 64))
    check_plausible_hu(hu, "abdomen")  # air and fat present
    cropped_liver = np.random.default_rng(1).normal(60.0, 15.0, (4, 32, 32)).astype(np.float32)
    check_plausible_hu(cropped_liver, "liver crop")  # no air, but no bone-like maximum either
    with pytest.raises(InputError, match="hu\\+1024"):
        check_plausible_hu(hu + 1024.0, "raw")


def test_reference_stored_flipped_and_shifted_lines_up(tmp_path):
    """The same anatomy stored x-flipped with another origin: resampled by geometry, SSIM 1 (was 0.24)."""
    hu, _ = abdomen_hu((64, 64))
    volume_array = np.stack([hu, hu + 5.0, hu - 5.0])
    image = sitk.GetImageFromArray(volume_array)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((-25.2, -25.2, 0.0))
    flipped = sitk.GetImageFromArray(volume_array[:, :, ::-1].copy())
    flipped.SetSpacing((0.8, 0.8, 2.0))
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    flipped.SetOrigin((-25.2 + 63 * 0.8, -25.2, 0.0))  # the same physical corner, x axis reversed
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(flipped, str(tmp_path / "reference.nrrd"))
    volume, reference = read_volume(tmp_path / "ct.nrrd"), read_volume(tmp_path / "reference.nrrd")
    result = assess(volume, reference, model="physics")
    assert result.summary.reference_ssim_mean == pytest.approx(1.0, abs=1e-6)


def test_noise_free_image_reports_no_gnl_instead_of_zero(tmp_path):
    """A synthetic image without noise: GNL, SNR and CNR are not reported (were 0.0 and a dose of 120 %)."""
    hu = np.where(abdomen_hu((64, 64), seed=0)[1], 40.0, -1000.0).astype(np.float32)
    hu[:, 20:40] += 60.0  # some anatomy, no noise
    result = assess(CTVolume(np.stack([hu] * 3), (0.8, 0.8, 2.0)), model="physics")
    assert np.isnan(result.summary.gnl_hu) and np.isnan(result.summary.snr)
    assert any("no measurable noise" in note for note in result.summary.notes)


def test_real_ct_clipped_to_a_display_window_is_refused(shared_data, tmp_path):
    """example_ct clipped to -160..240 HU (bone at the clip is about 1.5 % of voxels): a windowed export, refused."""
    volume = read_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    clipped = sitk.GetImageFromArray(np.clip(volume.hu, -160, 240).astype(np.int16))
    clipped.SetSpacing(volume.spacing)
    sitk.WriteImage(clipped, str(tmp_path / "clipped.nrrd"))
    with pytest.raises(InputError, match="display-windowed export"):
        read_volume(tmp_path / "clipped.nrrd")
    assert read_volume(tmp_path / "clipped.nrrd", scaling="hu").scaling == "hu"  # the user may insist
