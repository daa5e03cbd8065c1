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
from pydicom.uid import generate_uid

from ctqa.cli import main
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
    out: Path | None = None  # --out (default: tmp_path / "out", which must not be created)
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
    return Case(folder, folder, r"cannot read|truncated")


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
    "garbage-nrrd": case_garbage_nrrd,
    "out-is-an-existing-file": case_out_is_a_file,
    "roi-not-overlapping": case_roi_not_overlapping,
    "roi-names-without-roi": case_roi_names_without_roi,
    "normalised-0-1-image": case_normalised,
    "nonexistent-input": case_nonexistent,
    "nonexistent-reference": case_missing_reference,
    "unknown-model": case_unknown_model,
}


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
    assert len(CASES) >= 12


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
