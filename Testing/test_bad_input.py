"""Bad input to `ctqa assess`: exit code 2, one line on stderr naming the path and the reason, nothing written.

Every bad input is made here with the real libraries (pydicom from its bundled CT_small.dcm, SimpleITK, numpy) and
driven through `cli.main` in-process. stderr is captured at the file-descriptor level (capfd, a superset of capsys)
so that messages ITK/GDCM print from C++ would count as extra lines too, as they would for a user at a shell;
Python warnings a user would see (anything but the deprecation/import/resource kinds hidden by default) also count.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from ctqa.cli import main
from ctqa.errors import InputError
from ctqa.io import read_volume

CT_SMALL = get_testdata_file("CT_small.dcm")
#: warnings Python hides by default outside __main__: a user at a shell would not see them
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


# --- builders of (bad) inputs --------------------------------------------------------------------------------------


def ct_small(**changes) -> pydicom.Dataset:
    """pydicom's CT_small.dcm (128x128 CT, slope 1, intercept -1024) with the given attributes changed."""
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def write_ct_series(folder: Path, series_uid: str, count: int, z0: float = 0.0, dz: float = 2.5) -> list[Path]:
    """count CT slices of one series (CT_small with new UIDs, positions dz apart and pixel values offset by k)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(CT_SMALL)
    stored = base.pixel_array.astype(np.int16)
    paths = []
    for k in range(count):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z0 + k * dz]
        ds.SliceLocation = z0 + k * dz
        ds.PixelData = (stored + k).tobytes()
        path = folder / f"{series_uid.rsplit('.', 1)[-1][:8]}_{k:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def write_volume(array: np.ndarray, path: Path, spacing=(0.8, 0.8, 2.5), origin=(-10.0, -20.0, 30.0)) -> Path:
    """A (z, y, x) array written with SimpleITK (format from the extension)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def ct_like(shape=(6, 40, 40), seed=0) -> np.ndarray:
    """A plausible small CT in HU (float32): air around a water disc with noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    inside = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (shape[1] / 3) ** 2
    return np.where(inside, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 10, shape).astype(np.float32)


@pytest.fixture(scope="module")
def valid_ct(tmp_path_factory) -> Path:
    """A small valid CT (NRRD, HU) used where only another argument is bad."""
    folder = tmp_path_factory.mktemp("valid")
    return write_volume(ct_like(), folder / "ct.nrrd")


@dataclass
class Case:
    """One bad invocation: INPUT and extra arguments, the path the message must name and a reason pattern."""

    input: Path | str
    offending: Path | str
    reason: str  # regular expression, searched case-insensitively
    extra: list[str] = field(default_factory=list)
    out: Path | str | None = None  # --out (default: tmp_path / "out", which must not be created)
    also: list[str] = field(default_factory=list)  # further strings the message must contain


def case_mr_dicom(tmp, valid):
    path = tmp / "mr.dcm"
    ct_small(Modality="MR").save_as(path)
    return Case(path, path, r"not a CT|Modality is MR")


def case_mr_series_folder(tmp, valid):
    folder = tmp / "mr_series"
    for path in write_ct_series(folder, generate_uid(entropy_srcs=["mr"]), 3):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    return Case(folder, folder, r"no CT series.*MR")


def case_no_pixel_data(tmp, valid):
    ds = ct_small()
    del ds.PixelData
    path = tmp / "no_pixels.dcm"
    ds.save_as(path)
    return Case(path, path, r"no pixel data")


def case_rgb_png(tmp, valid):
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    assert sitk.ReadImage(str(path)).GetNumberOfComponentsPerPixel() == 3
    return Case(path, path, r"colour|channel")


def case_rgb_dicom(tmp, valid):
    ds = ct_small(
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
    )
    ds.PixelData = np.random.default_rng(2).integers(0, 256, (ds.Rows, ds.Columns, 3), dtype=np.uint8).tobytes()
    path = tmp / "rgb.dcm"
    ds.save_as(path)
    assert pydicom.dcmread(path).pixel_array.shape == (ds.Rows, ds.Columns, 3)  # a valid RGB DICOM
    return Case(path, path, r"colour|RGB")


def case_nan(tmp, valid):
    array = ct_like()
    array[2, 20, 20] = np.nan
    path = write_volume(array, tmp / "nan.nrrd")
    return Case(path, path, r"NaN")


def case_inf(tmp, valid):
    array = ct_like()
    array[3, 5, 7] = np.inf
    path = write_volume(array, tmp / "inf.nrrd")
    return Case(path, path, r"inf")


def case_empty_folder(tmp, valid):
    folder = tmp / "empty"
    folder.mkdir()
    return Case(folder, folder, r"empty")


def case_text_files(tmp, valid):
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("patient list\nnot an image\n", encoding="utf-8")
    (folder / "IM0001").write_text("DICM? no, just text\n", encoding="utf-8")
    return Case(folder, folder, r"no DICOM")


def case_mixed_series(tmp, valid):
    folder = tmp / "mixed"
    uid_a, uid_b = generate_uid(entropy_srcs=["a"]), generate_uid(entropy_srcs=["b"])
    write_ct_series(folder, uid_a, 3)
    write_ct_series(folder, uid_b, 3, z0=100.0)
    return Case(folder, folder, r"mixed series|--series", also=[uid_a, uid_b, "--series"])


def case_unknown_series_uid(tmp, valid):
    folder = tmp / "one_series"
    write_ct_series(folder, generate_uid(entropy_srcs=["c"]), 3)
    missing = generate_uid(entropy_srcs=["not there"])
    return Case(folder, folder, r"no DICOM series with", extra=["--series", missing], also=[missing])


def case_truncated_dicom(tmp, valid):
    data = Path(CT_SMALL).read_bytes()
    pixel_tag = data.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData, little endian
    assert pixel_tag > 0
    path = tmp / "truncated.dcm"
    path.write_bytes(data[: pixel_tag + (len(data) - pixel_tag) // 2])  # cut in the middle of the pixel data
    return Case(path, path, r"cannot read|truncated")


def case_truncated_slice_in_series(tmp, valid):
    folder = tmp / "series_with_truncated_slice"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["t"]), 4)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 5000])
    return Case(folder, folder, r"cannot read|truncated", also=[str(paths[2])])


def move_slices(paths: list[Path], positions: dict[int, float]) -> None:
    """Rewrite the z of ImagePositionPatient (and SliceLocation) of the slices paths[k] to positions[k] mm."""
    for k, z in positions.items():
        ds = pydicom.dcmread(paths[k])
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z]
        ds.SliceLocation = z
        ds.save_as(paths[k])


def write_dicomdir(folder: Path) -> Path:
    """An empty DICOMDIR (Media Storage Directory, no pixel data) written by pydicom's FileSet."""
    FileSet().write(folder)
    return folder / "DICOMDIR"


def write_report(path: Path) -> Path:
    """A stray SR-like non-image DICOM file: Basic Text SR SOP class, no SeriesInstanceUID, no pixel data."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.Modality = "SR"
    ds.PatientName = "Anonymous"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def case_duplicate_slice_positions(tmp, valid):
    folder = tmp / "duplicate_positions"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["dup"]), 4)
    move_slices(paths, {2: 2.5})  # slice 2 at slice 1's position
    return Case(folder, folder, r"duplicate slice position 2\.50 mm", also=[str(paths[1]), str(paths[2])])


def case_duplicate_slice_positions_regularize(tmp, valid):
    case = case_duplicate_slice_positions(tmp, valid)
    case.extra = ["--regularize"]  # resampling cannot choose between two slices at one position
    return case


def case_missing_slice_gap(tmp, valid):
    folder = tmp / "missing_slice"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["gap"]), 6)
    paths[3].unlink()  # the slice at 7.5 mm
    return Case(folder, folder, r"missing slices.*5\.00 and 10\.00 mm \(1 slice of 2\.5 mm missing\).*--regularize")


def case_uneven_slice_spacing(tmp, valid):
    folder = tmp / "uneven_spacing"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["uneven"]), 6)
    move_slices(paths, {3: 8.5})  # steps 2.5, 2.5, 3.5, 1.5, 2.5 mm
    return Case(folder, folder, r"uneven slice spacing.*5\.00 and 8\.50 mm \(2\.5 mm expected.*--regularize")


def case_mixed_orientations(tmp, valid):
    folder = tmp / "mixed_orientations"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["orient"]), 4)
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in an axial series
    ds.save_as(paths[2])
    return Case(folder, folder, r"mixes slice orientations", also=[str(paths[0]), str(paths[2])])


def case_non_image_dicom_folder(tmp, valid):
    folder = tmp / "reports_only"
    folder.mkdir()
    write_dicomdir(folder)
    write_report(folder / "SR0001")
    return Case(folder, folder, r"no DICOM images.*\(2 DICOM files without pixel data\)")


def case_garbage_nrrd(tmp, valid):
    path = tmp / "garbage.nrrd"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Case(path, path, r"cannot read")


def case_out_is_a_file(tmp, valid):
    out = tmp / "results"
    out.write_bytes(b"an existing file that must survive\n\x00\x01")
    return Case(valid, out, r"existing file|not a folder", out=out)


def case_roi_not_overlapping(tmp, valid):
    volume = read_volume(valid)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2:4, 10:30, 10:30] = 1
    origin = (volume.origin[0] + 10_000.0, volume.origin[1], volume.origin[2])  # 10 m away along x
    path = write_volume(labels, tmp / "labels.nrrd", spacing=volume.spacing, origin=origin)
    return Case(valid, path, r"does not overlap", extra=["--roi", str(path)])


def case_roi_names_without_roi(tmp, valid):
    table = tmp / "names.txt"
    table.write_text("1 liver 221 130 101 255\n", encoding="utf-8")
    return Case(valid, table, r"needs --roi", extra=["--roi-names", str(table)])


def case_normalised(tmp, valid):
    array = np.clip((ct_like() + 1024.0) / 4096.0, 0.0, 1.0).astype(np.float32)  # like the Mayo .npy scaling
    path = write_volume(array, tmp / "normalised.nii.gz")
    return Case(path, path, r"normalised|not HU")


def case_nonexistent(tmp, valid):
    path = tmp / "no" / "such" / "scan.nrrd"
    return Case(path, path, r"no such file")


def case_missing_reference(tmp, valid):
    path = tmp / "no_reference.nrrd"
    return Case(valid, path, r"no such file", extra=["--reference", str(path)])


def case_unknown_model(tmp, valid):
    return Case(valid, "no-such-model", r"unknown model", extra=["--model", "no-such-model"])


CASES = {
    "mr-dicom-file": case_mr_dicom,
    "mr-dicom-series-folder": case_mr_series_folder,
    "dicom-without-pixel-data": case_no_pixel_data,
    "rgb-png": case_rgb_png,
    "rgb-dicom": case_rgb_dicom,
    "nrrd-with-nan": case_nan,
    "nrrd-with-inf": case_inf,
    "empty-folder": case_empty_folder,
    "folder-of-text-files": case_text_files,
    "mixed-series-equal-size": case_mixed_series,
    "unknown-series-uid": case_unknown_series_uid,
    "truncated-dicom": case_truncated_dicom,
    "truncated-slice-in-series": case_truncated_slice_in_series,
    "duplicate-slice-positions": case_duplicate_slice_positions,
    "duplicate-slice-positions-with-regularize": case_duplicate_slice_positions_regularize,
    "missing-slice-gap": case_missing_slice_gap,
    "uneven-slice-spacing": case_uneven_slice_spacing,
    "mixed-orientations-in-series": case_mixed_orientations,
    "folder-of-non-image-dicom": case_non_image_dicom_folder,
    "garbage-nrrd": case_garbage_nrrd,
    "out-is-an-existing-file": case_out_is_a_file,
    "roi-not-overlapping": case_roi_not_overlapping,
    "roi-names-without-roi": case_roi_names_without_roi,
    "normalised-0-1-image": case_normalised,
    "nonexistent-input": case_nonexistent,
    "nonexistent-reference": case_missing_reference,
    "unknown-model": case_unknown_model,
}


# --- values that are not HU, geometry, options and output paths (honest inputs) --------------------------------------


def write_nifti(array: np.ndarray, path: Path) -> Path:
    """A (z, y, x) array as NIfTI written by SimpleITK (NaN kept in the file: ITK's reader would turn it into 0)."""
    return write_volume(array, path)


def case_nifti_with_nan(tmp, valid):
    array = ct_like()
    array[:, :4, :] = np.nan  # NaN padding of a resampled volume
    path = write_nifti(array, tmp / "nan_padded.nii.gz")
    return Case(path, path, r"NaN")


def case_nifti_with_inf(tmp, valid):
    array = ct_like()
    array[1, 1, 1] = -np.inf
    path = write_nifti(array, tmp / "inf.nii")
    return Case(path, path, r"NaN/inf")


def case_reference_with_nan(tmp, valid):
    array = ct_like()
    array[0, 0, 0] = np.nan
    path = write_nifti(array, tmp / "reference_nan.nii.gz")
    return Case(valid, path, r"NaN", extra=["--reference", str(path)])


def case_dicom_without_rescale_intercept(tmp, valid):
    folder = tmp / "no_intercept"
    for path in write_ct_series(folder, generate_uid(entropy_srcs=["raw"]), 3):
        ds = pydicom.dcmread(path)
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(path)
    return Case(folder, folder, r"hu\+1024")


def case_uint16_hu_plus_1024(tmp, valid):
    path = write_volume(np.clip(ct_like() + 1024.0, 0, None).astype(np.uint16), tmp / "hu_plus_1024.nrrd")
    return Case(path, path, r"--scaling hu\+1024")


def case_int8_volume(tmp, valid):
    path = write_volume(np.clip(ct_like() / 10.0, -128, 127).astype(np.int8), tmp / "int8.nrrd")
    return Case(path, path, r"8-bit")


def case_uint8_windowed_volume(tmp, valid):
    windowed = np.clip((ct_like() + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    path = write_volume(windowed, tmp / "windowed_uint8.nii.gz")
    return Case(path, path, r"8-bit.*display")


def case_grey_png_screenshot(tmp, valid):
    grey = np.clip((ct_like()[0] + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    path = tmp / "screenshot.png"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))
    return Case(path, path, r"8-bit")


def case_grey_jpeg(tmp, valid):
    grey = np.clip((ct_like()[0] + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    path = tmp / "slice.jpg"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))
    return Case(path, path, r"8-bit")


def case_float_windowed_export(tmp, valid):
    clipped = np.clip(ct_like() + np.where(np.indices(ct_like().shape)[2] > 20, 300.0, 0.0), -160.0, 240.0)
    path = write_volume(clipped.astype(np.float32), tmp / "windowed.nrrd")
    return Case(path, path, r"clipped.*display-windowed")


def case_unit_tiff_without_scaling(tmp, valid):
    import tifffile

    path = tmp / "ldctiqac_like.tif"
    tifffile.imwrite(path, np.clip((ct_like()[0] + 135.0) / 350.0, 0, 1).astype(np.float32))
    return Case(path, path, r"normalised.*ldctiqac2023")


def case_hu_volume_with_unit_scaling(tmp, valid):
    return Case(valid, valid, r"outside the \[0, 1\].*ldctiqac2023", extra=["--scaling", "ldctiqac2023"])


def case_unknown_scaling(tmp, valid):
    return Case(valid, "--scaling hu-1024", r"unknown scaling", extra=["--scaling", "hu-1024"])


def case_inverted_window_scaling(tmp, valid):
    return Case(valid, "--scaling window:240,-160", r"unknown scaling", extra=["--scaling", "window:240,-160"])


def case_blank_volume(tmp, valid):
    path = write_volume(np.full((4, 32, 32), 40, dtype=np.int16), tmp / "blank.nrrd")
    return Case(path, path, r"blank")


def case_4d_nifti(tmp, valid):
    image = sitk.JoinSeries([sitk.GetImageFromArray(ct_like()), sitk.GetImageFromArray(ct_like(seed=1))])
    path = tmp / "two_phases.nii.gz"
    sitk.WriteImage(image, str(path))
    return Case(path, path, r"4D image")


def case_object_npy(tmp, valid):
    path = tmp / "pickled.npy"
    np.save(path, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)
    return Case(path, path, r"cannot read")


def case_one_dimensional_npy(tmp, valid):
    path = tmp / "profile.npy"
    np.save(path, np.linspace(-1000, 1000, 64, dtype=np.float32))
    return Case(path, path, r"expected a grey 2D or 3D image")


def case_truncated_nifti(tmp, valid):
    path = write_nifti(ct_like(), tmp / "whole.nii")
    data = path.read_bytes()
    cut = tmp / "cut.nii"
    cut.write_bytes(data[: len(data) // 2])
    path.unlink()
    return Case(cut, cut, r"cannot read")


def _window_case(value: str):
    def case(tmp, valid):
        return Case(valid, f"--window-mm {value}", r"must be between", extra=["--window-mm", value])

    return case


def case_pixel_mm_zero(tmp, valid):
    return Case(valid, "--pixel-mm 0", r"must be between", extra=["--pixel-mm", "0"])


def case_out_empty_string(tmp, valid):
    return Case(valid, "--out", r"empty", out="")


def case_out_below_a_file(tmp, valid):
    blocker = tmp / "a_file"
    blocker.write_text("keep me\n", encoding="utf-8")
    return Case(valid, blocker, r"is a file", out=blocker / "results")


def case_out_on_read_only_file_system(tmp, valid):
    out = Path("/proc/ctqa-results")  # /proc refuses new folders, even to root
    return Case(valid, out, r"cannot write the output folder", out=out)


def case_ct_passed_as_roi(tmp, valid):
    return Case(valid, valid, r"not a labelmap", extra=["--roi", str(valid)])


def case_roi_with_negative_labels(tmp, valid):
    labels = np.zeros(ct_like().shape, dtype=np.int16)
    labels[1:3, 5:20, 5:20] = -1
    path = write_volume(labels, tmp / "negative_labels.nrrd")
    return Case(valid, path, r"not a labelmap.*negative", extra=["--roi", str(path)])


def case_roi_with_too_many_labels(tmp, valid):
    labels = np.random.default_rng(4).integers(0, 4000, ct_like().shape).astype(np.uint16)
    path = write_volume(labels, tmp / "noise_labels.nrrd")
    return Case(valid, path, r"not a labelmap.*distinct values", extra=["--roi", str(path)])


def case_reference_not_overlapping(tmp, valid):
    path = write_volume(ct_like(), tmp / "reference_far.nrrd", origin=(5000.0, 0.0, 0.0))
    return Case(valid, path, r"reference does not overlap", extra=["--reference", str(path)])


def case_npy_with_nan(tmp, valid):
    array = (ct_like() + 1024.0) / 4096.0
    array[2, 3, 4] = np.nan
    path = tmp / "mayo.npy"
    np.save(path, array)
    return Case(path, path, r"NaN", extra=["--scaling", "mayo-npy"])


def case_tiff_with_nan(tmp, valid):
    import tifffile

    image = np.clip((ct_like()[0] + 135.0) / 350.0, 0, 1).astype(np.float32)
    image[5, 5] = np.nan
    path = tmp / "nan.tif"
    tifffile.imwrite(path, image)
    return Case(path, path, r"NaN", extra=["--scaling", "ldctiqac2023"])


def case_rgb_tiff(tmp, valid):
    import tifffile

    path = tmp / "photo.tif"
    tifffile.imwrite(path, np.random.default_rng(5).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return Case(path, path, r"colour image \(R, G, B differ\)")


def case_float_labelmap(tmp, valid):
    labels = np.zeros(ct_like().shape, dtype=np.float32)
    labels[1:3, 5:20, 5:20] = 0.5
    path = write_volume(labels, tmp / "soft_labels.nrrd")
    return Case(valid, path, r"not a labelmap.*non-integer", extra=["--roi", str(path)])


def case_reference_8_bit(tmp, valid):
    path = write_volume(np.clip(ct_like() / 8.0, -128, 127).astype(np.int8), tmp / "reference_int8.nrrd")
    return Case(valid, path, r"8-bit", extra=["--reference", str(path)])


def case_float_0_255_rendering(tmp, valid):
    rendering = np.round(np.clip((ct_like(shape=(6, 64, 64)) + 1000.0) / 2000.0 * 255.0, 0, 255)).astype(np.float32)
    path = write_volume(rendering, tmp / "rendering.nrrd")
    return Case(path, path, r"8-bit display values stored in a wider type")


def case_input_inside_out(tmp, valid):
    out = tmp / "results"
    out.mkdir()
    inside = out / "quality_map.nrrd"
    inside.write_bytes(valid.read_bytes())
    return Case(inside, inside, r"would be overwritten", out=out)


def case_colour_png_with_a_window(tmp, valid):
    """A colour image stays refused even with an explicit window: only grey stored as RGB(A) is read as grey."""
    grey = np.clip((ct_like()[0] + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[..., 0] = 255 - rgb[..., 0]
    path = tmp / "colour.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    return Case(path, path, r"colour image \(R, G, B differ\)", extra=["--scaling", "window:-160,240"])


def case_grey_rgba_png_without_a_window(tmp, valid):
    """Grey stored as RGBA is grey, and an 8-bit rendering without a named window stays refused."""
    grey = np.clip((ct_like()[0] + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    path = tmp / "grey_rgba.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(path))
    return Case(path, path, r"8-bit.*--scaling window:LOW,HIGH")


CASES.update(
    {
        "colour-png-with-a-window": case_colour_png_with_a_window,
        "grey-rgba-png-without-a-window": case_grey_rgba_png_without_a_window,
        "float-0-255-rendering": case_float_0_255_rendering,
        "input-inside-out-with-an-output-name": case_input_inside_out,
        "model-dot": lambda tmp, valid: Case(valid, "--model", r"not a checkpoint file", extra=["--model", "."]),
        "npy-with-nan": case_npy_with_nan,
        "tiff-with-nan": case_tiff_with_nan,
        "rgb-tiff": case_rgb_tiff,
        "float-labelmap": case_float_labelmap,
        "reference-8-bit": case_reference_8_bit,
        "pixel-mm-nan": lambda tmp, valid: Case(
            valid, "--pixel-mm nan", r"must be between", extra=["--pixel-mm", "nan"]
        ),
        "nifti-nan-padded": case_nifti_with_nan,
        "nifti-with-inf": case_nifti_with_inf,
        "reference-with-nan": case_reference_with_nan,
        "dicom-without-rescale-intercept": case_dicom_without_rescale_intercept,
        "uint16-hu-plus-1024": case_uint16_hu_plus_1024,
        "int8-volume": case_int8_volume,
        "uint8-windowed-volume": case_uint8_windowed_volume,
        "grey-png-screenshot": case_grey_png_screenshot,
        "grey-jpeg": case_grey_jpeg,
        "float-windowed-export": case_float_windowed_export,
        "unit-range-tiff-without-scaling": case_unit_tiff_without_scaling,
        "hu-volume-with-unit-range-scaling": case_hu_volume_with_unit_scaling,
        "unknown-scaling": case_unknown_scaling,
        "inverted-window-scaling": case_inverted_window_scaling,
        "blank-volume": case_blank_volume,
        "4d-nifti": case_4d_nifti,
        "pickled-npy": case_object_npy,
        "one-dimensional-npy": case_one_dimensional_npy,
        "truncated-nifti": case_truncated_nifti,
        "window-mm-nan": _window_case("nan"),
        "window-mm-inf": _window_case("inf"),
        "window-mm-zero": _window_case("0"),
        "window-mm-negative": _window_case("-1"),
        "pixel-mm-zero": case_pixel_mm_zero,
        "out-empty-string": case_out_empty_string,
        "out-below-a-file": case_out_below_a_file,
        "out-on-read-only-file-system": case_out_on_read_only_file_system,
        "ct-passed-as-roi": case_ct_passed_as_roi,
        "roi-with-negative-labels": case_roi_with_negative_labels,
        "roi-with-too-many-labels": case_roi_with_too_many_labels,
        "reference-not-overlapping": case_reference_not_overlapping,
    }
)


# --- the checks ----------------------------------------------------------------------------------------------------


def snapshot(*folders: Path) -> dict[str, bytes | None]:
    """Every path under the folders: file bytes, or None for a folder."""
    state = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            state[str(path)] = path.read_bytes() if path.is_file() else None
    return state


def run_cli(argv: list[str], capfd) -> tuple[int, str, str, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    out, err = capfd.readouterr()
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
    return code, out, err, shown


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(name, tmp_path, valid_ct, capfd):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    case = CASES[name](inputs, valid_ct)
    out = case.out if case.out is not None else tmp_path / "out"
    before = snapshot(tmp_path, valid_ct.parent)
    capfd.readouterr()  # drop anything the builders printed

    code, stdout, stderr, shown = run_cli(["assess", str(case.input), "--out", str(out), "--quiet", *case.extra], capfd)

    assert code == 2, f"exit code {code}, stderr {stderr!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"stderr is not exactly one line: {stderr!r}"
    line = lines[0]
    assert line.startswith("ctqa: error: "), line
    assert str(case.offending) in line, f"message does not name {case.offending}: {line}"
    assert re.search(case.reason, line, flags=re.IGNORECASE), f"no reason matching {case.reason!r}: {line}"
    for text in case.also:
        assert text in line, f"message lacks {text!r}: {line}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert stdout == ""
    assert not shown, f"user-visible warnings: {[str(w.message) for w in shown]}"
    # nothing written or overwritten: the output folder is not created, an existing --out file keeps its bytes,
    # and no file anywhere in the test's folders (inputs included) changed, appeared or vanished
    if case.out is None:
        assert not out.exists()
    assert snapshot(tmp_path, valid_ct.parent) == before


def test_case_table_is_large_enough():
    assert len(CASES) >= 60


# --- the positive side of the mixed-series case ----------------------------------------------------------------------


def test_series_option_picks_one_of_two_equal_series(tmp_path, capfd):
    folder = tmp_path / "mixed"
    uid_a, uid_b = generate_uid(entropy_srcs=["a"]), generate_uid(entropy_srcs=["b"])
    write_ct_series(folder, uid_a, 3, z0=0.0)
    write_ct_series(folder, uid_b, 3, z0=100.0)
    out = tmp_path / "out"

    code, _, stderr, _ = run_cli(["assess", str(folder), "--series", uid_b, "--out", str(out), "--quiet"], capfd)

    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["shape_zyx"] == [3, 128, 128]
    quality = sitk.ReadImage(str(out / "quality_map.nrrd"))
    assert quality.GetOrigin()[2] == pytest.approx(100.0)  # series b starts at z = 100 mm, series a at 0
    volume = read_volume(folder, series_uid=uid_a)
    assert volume.origin[2] == pytest.approx(0.0)
    stored = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(volume.hu[1], stored + 1 - 1024.0)  # slice k holds stored + k, rescaled


def test_unequal_series_reads_the_larger(tmp_path, capfd):
    folder = tmp_path / "mixed"
    small, large = generate_uid(entropy_srcs=["small"]), generate_uid(entropy_srcs=["large"])
    write_ct_series(folder, small, 2, z0=-50.0)
    write_ct_series(folder, large, 4, z0=10.0)

    volume = read_volume(folder)
    assert volume.shape == (4, 128, 128)
    assert volume.origin[2] == pytest.approx(10.0)
    assert volume.spacing[2] == pytest.approx(2.5)

    out = tmp_path / "out"
    code, _, stderr, _ = run_cli(["assess", str(folder), "--out", str(out), "--quiet"], capfd)
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["shape_zyx"] == [4, 128, 128]


# --- the positive side of honest DICOM inputs: accepted with a note, or ignored ---------------------------------------

MODALITY_NOTE = "Modality tag missing; CT recognised by its SOP Class UID"


def assess_notes(folder: Path, out: Path, capfd, *extra: str) -> list[str]:
    """Run `ctqa assess` (exit 0) and return the notes it printed; stderr must hold nothing but notes."""
    code, _, stderr, shown = run_cli(["assess", str(folder), "--out", str(out), "--quiet", *extra], capfd)
    assert code == 0, stderr
    assert not shown, [str(w.message) for w in shown]
    assert all(line.startswith("ctqa: note: ") for line in stderr.splitlines()), stderr
    notes = [line.removeprefix("ctqa: note: ") for line in stderr.splitlines()]
    assert notes == json.loads((out / "summary.json").read_text(encoding="utf-8"))["notes"]
    return notes


@pytest.mark.parametrize(
    "sop_class", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"], ids=["ct", "enhanced"]
)
def test_ct_file_without_modality_is_read_with_a_note(tmp_path, sop_class):
    ds = ct_small(SOPClassUID=sop_class)
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    del ds.Modality
    path = tmp_path / "anonymised.dcm"
    ds.save_as(path)

    volume = read_volume(path)

    assert volume.notes == (MODALITY_NOTE,)
    np.testing.assert_array_equal(volume.hu[0], pydicom.dcmread(CT_SMALL).pixel_array - 1024.0)


def test_ct_series_without_modality_is_assessed_with_one_note(tmp_path, capfd):
    folder = tmp_path / "anonymised"
    for path in write_ct_series(folder, generate_uid(entropy_srcs=["anonymised"]), 4):
        ds = pydicom.dcmread(path)
        del ds.Modality
        ds.save_as(path)

    assert read_volume(folder).notes == (MODALITY_NOTE,)
    assert assess_notes(folder, tmp_path / "out", capfd).count(MODALITY_NOTE) == 1


def test_dicomdir_and_stray_report_beside_a_series_without_uid_are_ignored(tmp_path):
    folder = tmp_path / "export"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["no uid"]), 4)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.save_as(path)
    write_dicomdir(folder)
    write_report(folder / "SR0001")

    volume = read_volume(folder)

    assert volume.shape == (4, 128, 128)
    assert volume.notes == ()
    np.testing.assert_allclose(volume.slice_positions_mm(), 2.5 * np.arange(4))


def test_series_without_positions_is_read_in_instance_order_with_a_note(tmp_path):
    folder = tmp_path / "no_positions"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["no positions"]), 3)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    stored = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float32)

    volume = read_volume(folder)

    assert volume.notes == ("slice positions missing: slices ordered by InstanceNumber, spacing not checked",)
    for k in range(3):
        np.testing.assert_array_equal(volume.hu[k], stored + k - 1024.0)


def test_regularize_fills_a_missing_slice_with_the_mean_of_its_neighbours(tmp_path, capfd):
    folder = tmp_path / "missing_slice"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["gap"]), 6)  # slice k holds stored + k at 2.5 k mm
    paths[3].unlink()
    stored = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float32)

    volume = read_volume(folder, regularize=True)

    assert volume.shape == (6, 128, 128)
    assert volume.spacing[2] == pytest.approx(2.5)
    np.testing.assert_allclose(volume.origin, [*pydicom.dcmread(paths[0]).ImagePositionPatient[:2], 0.0])
    np.testing.assert_allclose(volume.slice_positions_mm(), 2.5 * np.arange(6))
    np.testing.assert_array_equal(volume.hu[3], (volume.hu[2] + volume.hu[4]) / 2)
    for k in range(6):  # a linear-in-z pattern: the interpolated slice is exact too
        np.testing.assert_array_equal(volume.hu[k], stored + k - 1024.0)
    note = "missing slices: gap of 5 mm between slice positions 5.00 and 10.00 mm (1 slice of 2.5 mm missing): "
    assert volume.notes == (note + "resampled to 6 slices at 2.5 mm (--regularize)",)
    assert assess_notes(folder, tmp_path / "out", capfd, "--regularize").count(volume.notes[0]) == 1


def test_regularize_resamples_uneven_spacing_onto_the_median_step(tmp_path):
    folder = tmp_path / "uneven"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["uneven"]), 6)
    move_slices(paths, {3: 8.5})  # positions 0, 2.5, 5, 8.5, 10, 12.5 mm
    stored = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float64)

    volume = read_volume(folder, regularize=True)

    np.testing.assert_allclose(volume.slice_positions_mm(), 2.5 * np.arange(6))
    assert volume.spacing[2] == pytest.approx(2.5)
    # 7.5 mm lies 2.5/3.5 of the way from the slice at 5 mm (stored + 2) to the one at 8.5 mm (stored + 3)
    np.testing.assert_allclose(volume.hu[3], stored + 2 + 2.5 / 3.5 - 1024.0, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(volume.hu[4], stored + 4 - 1024.0)
    assert len(volume.notes) == 1 and volume.notes[0].startswith("uneven slice spacing: step of 3.5 mm")
    assert volume.notes[0].endswith("resampled to 6 slices at 2.5 mm (--regularize)")


def test_a_corrupt_dicomdir_beside_good_slices_is_skipped_with_a_note(tmp_path):
    """A DICOMDIR with the DICM magic but no dataset does not fail the series (issue 24, item 6)."""
    folder = tmp_path / "export"
    write_ct_series(folder, generate_uid(entropy_srcs=["corrupt dicomdir"]), 4)
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2")

    volume = read_volume(folder)

    assert volume.shape == (4, 128, 128)
    assert any("skipped 1 DICOM file" in note and "DICOMDIR" in note for note in volume.notes)


def test_a_truncated_image_slice_in_a_folder_is_still_refused(tmp_path):
    folder = tmp_path / "export"
    paths = write_ct_series(folder, generate_uid(entropy_srcs=["truncated slice"]), 4)
    paths[1].write_bytes(paths[1].read_bytes()[:-500])
    with pytest.raises(InputError, match="truncated DICOM file"):
        read_volume(folder)
