"""Reading CT volumes and writing maps: geometry round trips, DICOM series and files, real data, ROI loading."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from scipy.spatial.transform import Rotation

from ctqa.io import read_volume, write_map
from ctqa.rois import labels_on_volume_grid, load_rois
from ctqa.sample import write_colour_table
from ctqa.volume import CTVolume

CT_SMALL = get_testdata_file("CT_small.dcm")
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-123.4, 56.7, -890.1)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # diag(-1, -1, 1): RAS-like axes in LPS
OBLIQUE = tuple(Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix().ravel())


def _volume(direction) -> CTVolume:
    hu = np.random.default_rng(0).integers(-1024, 2000, (5, 6, 7)).astype(np.float32)  # z, y, x all different
    return CTVolume(hu, SPACING, ORIGIN, direction)


# --- (a) geometry round trips through write_map + read_volume ---------------------------------------------------


@pytest.mark.parametrize("direction", [FLIPPED, OBLIQUE], ids=["flipped", "oblique"])
def test_nrrd_round_trip_is_exact(tmp_path, direction):
    """NRRD keeps doubles: spacing, origin and voxels come back exactly.

    NRRD stores `space directions` = direction column x spacing (17 significant digits); reading divides each
    column by its norm, so an oblique direction can differ in the last bit (1 ulp) after the round trip, while
    axis-aligned directions come back exactly.
    """
    volume = _volume(direction)
    path = tmp_path / "map.nrrd"
    write_map(volume.hu, volume, path)
    back = read_volume(path)
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back.hu, volume.hu)
    assert back.spacing == volume.spacing
    assert back.origin == volume.origin
    if direction == FLIPPED:
        assert back.direction == volume.direction
    else:
        np.testing.assert_allclose(back.direction, volume.direction, rtol=0, atol=4 * np.finfo(float).eps)
        np.testing.assert_allclose(
            np.reshape(back.direction, (3, 3)) @ np.reshape(back.direction, (3, 3)).T, np.eye(3), atol=1e-15
        )


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
@pytest.mark.parametrize("direction", [FLIPPED, OBLIQUE], ids=["flipped", "oblique"])
def test_nifti_round_trip_to_float32_precision(tmp_path, extension, direction):
    """NIfTI keeps geometry only to float32 precision.

    The NIfTI-1 header stores pixdim, the qform quaternion and qoffset (and the sform rows) as float32, so
    spacing and origin come back as their float32 roundings (e.g. 0.7 -> 0.699999988) and an oblique direction
    to about 1e-7. The LPS <-> RAS flip of the first two axes is handled by ITK and is exact. Voxels are exact.
    """
    volume = _volume(direction)
    path = tmp_path / f"map{extension}"
    write_map(volume.hu, volume, path)
    back = read_volume(path)
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back.hu, volume.hu)
    np.testing.assert_array_equal(np.float32(back.spacing), np.float32(volume.spacing))
    np.testing.assert_array_equal(np.float32(back.origin), np.float32(volume.origin))
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(back.origin, volume.origin, rtol=2 * np.finfo(np.float32).eps)
    if direction == FLIPPED:
        assert back.direction == volume.direction
    else:
        np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


# --- (b) a DICOM series written with pydicom ------------------------------------------------------------------------


def test_dicom_series_from_synthetic_volume(tmp_path):
    """Slices written in shuffled order under random names read back in position order, rescaled to HU.

    SliceThickness (3 mm) deliberately differs from the slice spacing (2 mm): the z spacing must come from the
    positions. The z positions descend with the instance number (a feet-first style order) so that neither file
    names nor instance numbers give the right order; only ImagePositionPatient along the slice normal does.
    """
    rng = np.random.default_rng(7)
    count, rows, columns = 6, 24, 32
    hu = rng.integers(-1000, 1500, (count, rows, columns)).astype(np.int16)
    spacing_xy, dz, x0, y0, z0 = (0.625, 0.75), 2.0, -10.0, -12.5, -300.0
    base = pydicom.dcmread(CT_SMALL)
    series_uid = generate_uid(entropy_srcs=["synthetic series"])
    folder = tmp_path / "series"
    folder.mkdir()
    order = rng.permutation(count)
    for k in order:  # files written in shuffled order, names unrelated to the slice order
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [spacing_xy[1], spacing_xy[0]]  # DICOM: row spacing (y), column spacing (x)
        ds.SliceThickness = 3.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x0, y0, z0 + k * dz]
        ds.SliceLocation = z0 + k * dz
        ds.InstanceNumber = count - k  # instance numbers run against the positions
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()  # stored = HU - intercept
        ds.save_as(folder / f"IM_{rng.integers(1 << 30):010d}")

    volume = read_volume(folder)

    assert volume.shape == (count, rows, columns)
    np.testing.assert_allclose(volume.spacing, (*spacing_xy, dz), rtol=1e-6)
    np.testing.assert_allclose(volume.origin, (x0, y0, z0), atol=1e-6)
    np.testing.assert_allclose(volume.direction, np.eye(3).ravel(), atol=1e-9)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, hu.astype(np.float32))
    np.testing.assert_allclose(volume.slice_positions_mm(), z0 + dz * np.arange(count))


# --- (c) a single DICOM file ----------------------------------------------------------------------------------------


def test_single_dicom_file_is_one_slice_in_hu():
    ds = pydicom.dcmread(CT_SMALL)
    volume = read_volume(CT_SMALL)
    assert volume.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.hu[0], expected.astype(np.float32))
    assert float(ds.RescaleIntercept) == -1024.0 and volume.hu.min() < 0  # the rescale was applied
    np.testing.assert_allclose(volume.spacing[:2], [float(v) for v in ds.PixelSpacing][::-1])
    np.testing.assert_allclose(volume.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)


# --- (d) the real JPEG 2000 DICOM series and its segmentation --------------------------------------------------------


def _corner_points(size, spacing, origin, direction) -> set[tuple[float, ...]]:
    """Physical centres (mm, rounded to 1 um) of the 8 corner voxels of a grid."""
    matrix = np.reshape(direction, (3, 3))
    points = set()
    for i in (0, size[0] - 1):
        for j in (0, size[1] - 1):
            for k in (0, size[2] - 1):
                point = np.asarray(origin) + matrix @ (np.array([i, j, k]) * np.asarray(spacing))
                points.add(tuple(np.round(point, 3) + 0.0))
    return points


def test_real_jpeg2000_dicom_series_and_its_segmentation(shared_data):
    totalseg = shared_data / "totalseg"
    volume = read_volume(totalseg / "example_ct_dicom")
    assert volume.shape == (20, 512, 512)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0), rtol=1e-6)
    np.testing.assert_allclose(volume.direction, np.eye(3).ravel(), atol=1e-6)
    assert -1100 <= volume.hu.min() <= -1000 and volume.hu.max() > 500  # air and bone in HU: rescale applied
    assert np.all(np.diff(volume.slice_positions_mm()) > 0)

    seg = sitk.ReadImage(str(totalseg / "example_seg_dicom.nii.gz"))
    assert seg.GetSize() == volume.shape[::-1]
    # the NIfTI has the y axis flipped (and so another origin): compare physical voxel centres, not headers
    assert seg.GetDirection() != volume.direction
    assert _corner_points(seg.GetSize(), seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()) == _corner_points(
        volume.shape[::-1], volume.spacing, volume.origin, volume.direction
    )

    labels = labels_on_volume_grid(seg, volume, "example_seg_dicom.nii.gz")
    assert labels.shape == volume.shape
    original = sitk.GetArrayFromImage(seg)
    values, counts = np.unique(original, return_counts=True)
    resampled_values, resampled_counts = np.unique(labels, return_counts=True)
    assert len(values) > 10
    assert dict(zip(resampled_values.tolist(), resampled_counts.tolist())) == dict(
        zip(values.tolist(), counts.tolist())
    )
    np.testing.assert_array_equal(labels, original[:, ::-1, :])  # exactly the y flip, voxel for voxel


# --- (e) ROIs: a folder of masks, a labelmap with a Slicer colour table, empty masks ---------------------------------

#: TotalSegmentator label values of the masks in example_seg_fast/ (as found in example_seg_fast.nii.gz)
FAST_LABELS = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    31: "vertebrae_L1",
    52: "aorta",
    51: "heart",
}


def test_rois_from_a_real_mask_folder_and_a_named_labelmap(shared_data, tmp_path):
    totalseg = shared_data / "totalseg"
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    mask_files = sorted((totalseg / "example_seg_fast").glob("*.nii.gz"))

    rois = load_rois(totalseg / "example_seg_fast", ct)

    assert [roi.name for roi in rois] == [path.name.removesuffix(".nii.gz") for path in mask_files]
    assert [roi.value for roi in rois] == list(range(1, len(mask_files) + 1))
    by_name = {roi.name: roi for roi in rois}
    for path in mask_files:
        expected = int((sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0).sum())
        assert by_name[path.name.removesuffix(".nii.gz")].voxel_count == expected
    assert by_name["liver"].voxel_count > 10_000
    assert by_name["heart"].voxel_count == 0 and by_name["heart"].box is None  # an all-zero mask in the data

    table = tmp_path / "fast_labels.txt"
    write_colour_table(FAST_LABELS, table)
    named = {roi.name: roi for roi in load_rois(totalseg / "example_seg_fast.nii.gz", ct, table)}
    for value, name in FAST_LABELS.items():
        assert named[name].value == value
        assert named[name].voxel_count == by_name[name].voxel_count, name
    assert named["heart"].voxel_count == 0  # named in the table, absent from the labelmap
    assert "label 10" in named  # present in the labelmap, not in the table


def test_rois_from_a_synthetic_mask_folder_with_an_empty_mask(tmp_path):
    volume = CTVolume(np.full((4, 10, 12), -1000.0, np.float32), (1.0, 1.0, 2.0), (5.0, -3.0, 7.0))
    folder = tmp_path / "masks"
    folder.mkdir()
    liver = np.zeros(volume.shape, np.uint8)
    liver[1:3, 2:6, 3:9] = 1
    write_map(liver, volume, folder / "liver.nii.gz")
    write_map(np.zeros(volume.shape, np.uint8), volume, folder / "empty_organ.nrrd")

    rois = load_rois(folder, volume)

    assert [(roi.name, roi.voxel_count) for roi in rois] == [("empty_organ", 0), ("liver", int(liver.sum()))]
    assert rois[0].mask is None and rois[0].box is None
    assert rois[1].box == (slice(1, 3), slice(2, 6), slice(3, 9))
