"""Tests of the bundled demo sample (synthetic phantom with a known low-dose noise insertion)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctqa.errors import InputError
from ctqa.sample import FULL_DOSE_NOISE_SD, make_phantom, make_sample, write_sample


def _flat_soft_tissue(slice_index):
    """(y, x) mask of unlabelled soft tissue (noise-free HU near 40) on one slice, 4 voxels away from any edge."""
    phantom, labels = make_phantom()
    soft_tissue = (labels[slice_index] == 0) & (np.abs(phantom[slice_index] - 40.0) < 1.0)
    return ndimage.binary_erosion(soft_tissue, iterations=4)


def test_deterministic_for_a_seed():
    first, again, other = make_sample(0), make_sample(0), make_sample(1)
    np.testing.assert_array_equal(first.low_dose.hu, again.low_dose.hu)
    np.testing.assert_array_equal(first.reference.hu, again.reference.hu)
    assert not np.array_equal(first.low_dose.hu, other.low_dose.hu)
    assert not np.array_equal(first.reference.hu, other.reference.hu)
    np.testing.assert_array_equal(first.labels, other.labels)


def test_grid_and_values():
    sample = make_sample()
    for volume in (sample.low_dose, sample.reference):
        assert volume.shape == (24, 256, 256)
        assert volume.spacing == (1.5, 1.5, 2.5)
        assert volume.hu.dtype == np.float32
        np.testing.assert_array_equal(volume.hu, np.rint(volume.hu))
        centre = np.asarray(volume.origin) + (np.asarray(volume.shape[::-1]) - 1) * np.asarray(volume.spacing) / 2
        np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    assert sample.labels.dtype == np.uint8 and sample.labels.shape == (24, 256, 256)
    assert sample.dose_fraction.shape == (24,)
    assert sample.dose_fraction[0] == pytest.approx(1.0) and sample.dose_fraction[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("slice_index", [0, -1])
def test_inserted_noise_sd(slice_index):
    sample = make_sample()
    region = _flat_soft_tissue(slice_index)
    assert region.sum() > 5000
    phantom, _ = make_phantom()
    assert np.ptp(phantom[slice_index][region]) < 1e-3  # one tissue only, no partial volume
    d = sample.dose_fraction[slice_index]
    expected = FULL_DOSE_NOISE_SD * np.sqrt(1.0 / d - 1.0)
    measured = (sample.low_dose.hu[slice_index] - sample.reference.hu[slice_index])[region].std()
    if expected == 0.0:
        assert measured == 0.0
    else:
        assert measured == pytest.approx(expected, rel=0.1)
    full_dose = (sample.reference.hu[slice_index] - phantom[slice_index])[region].std()
    assert full_dose == pytest.approx(FULL_DOSE_NOISE_SD, rel=0.1)


def test_labels():
    sample = make_sample()
    assert sample.label_names == {
        1: "liver",
        2: "spleen",
        3: "kidney_right",
        4: "kidney_left",
        5: "aorta",
        6: "vertebra",
    }
    assert set(np.unique(sample.labels)) == {0, *sample.label_names}
    for value in sample.label_names:
        assert (sample.labels == value).sum() > 1000
    assert sample.reference.hu[sample.labels == 1].mean() == pytest.approx(60.0, abs=5.0)
    # liver on the patient's right (low x index), spleen on the left
    liver_x = np.nonzero(sample.labels == 1)[2].mean()
    spleen_x = np.nonzero(sample.labels == 2)[2].mean()
    assert liver_x < 128 < spleen_x


def test_write_sample(tmp_path):
    folder = tmp_path / "new" / "sample"
    paths = write_sample(folder)
    assert set(paths) == {"ct", "reference", "labels", "label_names"}
    assert all(path.is_file() and path.parent == folder for path in paths.values())
    sample = make_sample()
    for role, expected in (("ct", sample.low_dose.hu), ("reference", sample.reference.hu), ("labels", sample.labels)):
        image = sitk.ReadImage(str(paths[role]))
        np.testing.assert_allclose(image.GetSpacing(), sample.low_dose.spacing)
        np.testing.assert_allclose(image.GetOrigin(), sample.low_dose.origin)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    assert sitk.ReadImage(str(paths["labels"])).GetPixelID() == sitk.sitkUInt8
    names = {}
    for line in paths["label_names"].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            value, name, *rgba = line.split()
            assert len(rgba) == 4
            names[int(value)] = name
    assert names == sample.label_names
    write_sample(folder)  # an existing folder is fine

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InputError):
        write_sample(a_file)
