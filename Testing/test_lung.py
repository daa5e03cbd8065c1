"""Lung mask from HU and connectivity (ctqa/physics/lung.py): synthetic geometry and real CT with reference masks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ctqa.io import read_volume
from ctqa.physics.lung import body_mask, lung_mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _chest(size: int = 128) -> np.ndarray:
    """(y, x) HU at 2 mm pixels: air around a 40 HU body with two -850 HU lungs (one with a 60 HU vessel), a
    -1000 HU gas pocket and a notch of outside air reaching into the body."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0)
    hu[((yy - 64) / 50.0) ** 2 + ((xx - 64) / 60.0) ** 2 < 1] = 40.0
    for centre in (38, 90):
        hu[((yy - 60) / 28.0) ** 2 + ((xx - centre) / 16.0) ** 2 < 1] = -850.0
    hu[(yy - 60) ** 2 + (xx - 38) ** 2 < 9] = 60.0  # a vessel inside the left lung
    hu[(yy - 100) ** 2 + (xx - 64) ** 2 < 36] = -1000.0  # gas
    hu[100:128, 20:24] = -1000.0  # outside air reaching in (a skin fold), connected to the border
    return hu


def test_lungs_found_gas_and_outside_air_left_out():
    hu = _chest()
    lung = lung_mask(hu, 2.0)
    yy, xx = np.mgrid[:128, :128]
    truth = np.zeros_like(lung)
    for centre in (38, 90):
        truth |= ((yy - 60) / 28.0) ** 2 + ((xx - centre) / 16.0) ** 2 < 1
    assert lung.shape == hu.shape and lung.dtype == bool
    assert _dice(lung, truth) > 0.97
    assert lung[60, 38], "the vessel inside the lung is filled"
    assert not lung[100, 64] and not lung[110, 21] and not lung[5, 5], "gas, outside air and air around the body"
    assert body_mask(hu)[60, 38] and not body_mask(hu)[5, 5]


def test_volume_and_slices_agree_and_airway_leaving_the_volume_stays_inside():
    hu = np.stack([_chest()] * 4)
    hu[:, 58:62, 62:66] = -1000.0  # trachea, open at the top and bottom slices of the volume
    lung = lung_mask(hu, 2.0)
    assert lung.shape == hu.shape
    for index in range(4):
        np.testing.assert_array_equal(lung[index], lung_mask(hu[index], 2.0))
    assert lung[:, 60, 90].all()


def test_no_lung_without_air_inside_the_body():
    hu = _chest()
    hu[hu == -850.0] = 40.0
    assert not lung_mask(hu, 2.0).any()
    assert not lung_mask(np.full((16, 16), -1000.0), 1.0).any()
    with pytest.raises(ValueError, match="shape"):
        lung_mask(np.zeros(5), 1.0)


def test_dice_against_totalsegmentator_lung_lobes(shared_data):
    """example_ct_sm (3 mm, lung bases in its top slices): Dice with the union of the five TotalSegmentator lobes
    (model output, on this grid) is 0.96 for the volume; the abdominal DICOM series and the Mayo pelvis/abdomen
    slices have no lung and get none."""
    totalseg = shared_data / "totalseg"
    volume = read_volume(totalseg / "example_ct_sm.nii.gz")
    lobes = sorted((totalseg / "example_seg_fast").glob("lung_*.nii.gz"))
    assert len(lobes) == 5
    reference = np.any([sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0 for path in lobes], axis=0)
    assert reference.shape == volume.shape
    lung = lung_mask(volume.hu, volume.spacing[0])
    assert _dice(lung, reference) > 0.93
    dicom = read_volume(totalseg / "example_ct_dicom")
    assert not lung_mask(dicom.hu, dicom.spacing[0]).any()
    for case in ("L506_18", "L506_86"):
        full = read_volume(shared_data / "mayo_pairs" / f"{case}_target.npy", scaling="mayo-npy")
        assert not lung_mask(full.hu, 0.74).any(), case


def test_single_real_chest_slices(shared_data):
    """chest_sbu: both lungs of a chest slice (most of its air-like body voxels), none in an abdominal slice whose
    colon holds large gas pockets."""
    chest = read_volume(shared_data / "chest_sbu" / "A048383_19010410-30.dcm")
    lung = lung_mask(chest.hu, chest.spacing[0])
    body = body_mask(chest.hu)
    area_mm2 = np.count_nonzero(lung) * chest.spacing[0] ** 2
    assert 12_000 < area_mm2 < 40_000  # two adult lungs at the level of the carina (184 cm²)
    air_like = body & (chest.hu < -400)
    assert np.count_nonzero(lung & air_like) > 0.9 * np.count_nonzero(air_like)
    half = lung.shape[-1] // 2
    assert lung[..., :half].sum() > 0.3 * lung.sum() and lung[..., half:].sum() > 0.3 * lung.sum(), "both lungs"
    abdomen = read_volume(shared_data / "chest_sbu" / "A058062_19001231-084.dcm")
    assert np.count_nonzero(body_mask(abdomen.hu) & (abdomen.hu < -900)) > 5000  # gas is there
    assert not lung_mask(abdomen.hu, abdomen.spacing[0]).any()
