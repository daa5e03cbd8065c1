"""DICOM series: discovery in folders, choice of the CT series, checks, slice order, and reading with SimpleITK.

pydicom reads the headers (pixel data deferred); SimpleITK reads pixels, geometry and rescale slope/intercept
(JPEG 2000 included). Every failure the user can cause raises InputError with one line naming the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from ctqa.errors import InputError, first_line


@dataclass
class DicomSeries:
    """Files of one DICOM series found in a folder, with what is needed to choose and read it."""

    uid: str
    modality: str
    files: list[str] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    #: (position along the slice normal in mm or None, instance number, file) used for ordering
    order_keys: list[tuple] = field(default_factory=list)
    first_header: object = None


def read_dicom_header(path: str):
    """The header of a DICOM file (pixel data deferred, not loaded), or None when the file is not DICOM."""
    try:
        return pydicom.dcmread(path, defer_size="1 KB")
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _check_dicom_header(header, path: str) -> None:
    """Refuse DICOM files that cannot be a CT volume slice."""
    modality = str(header.get("Modality", "")).upper()
    if modality != "CT":
        raise InputError(f"{path}: not a CT image (DICOM Modality is {modality or 'missing'})")
    if "PixelData" not in header:
        raise InputError(f"{path}: DICOM file has no pixel data")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: colour image ({header.get('PhotometricInterpretation', 'RGB')}), not a CT")


def _position_along_normal(header) -> float | None:
    try:
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        position = np.asarray(header.ImagePositionPatient, dtype=float)
    except (AttributeError, ValueError, TypeError):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    return float(position @ normal)


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """All DICOM series under folder (recursively), any modality, largest first."""
    series: dict[str, DicomSeries] = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            header = read_dicom_header(path)
            if header is None:
                continue
            uid = str(header.get("SeriesInstanceUID", ""))
            entry = series.setdefault(
                uid,
                DicomSeries(uid, str(header.get("Modality", "")).upper()),
            )
            entry.files.append(path)
            entry.sizes.add((int(header.get("Rows", 0)), int(header.get("Columns", 0))))
            entry.order_keys.append((_position_along_normal(header), int(header.get("InstanceNumber", 0) or 0), path))
            if entry.first_header is None:
                entry.first_header = header
    return sorted(series.values(), key=lambda s: len(s.files), reverse=True)


def _choose_series(found: list[DicomSeries], folder: str, series_uid: str | None) -> DicomSeries:
    """The series to read: the one asked for, else the CT series with the most slices (ties are refused)."""
    if series_uid is not None:
        for entry in found:
            if entry.uid == series_uid:
                return entry
        raise InputError(f"{folder}: no DICOM series with SeriesInstanceUID {series_uid}")
    ct_series = [s for s in found if s.modality == "CT"]
    if not ct_series:
        modalities = ", ".join(sorted({s.modality or "unknown" for s in found}))
        raise InputError(f"{folder}: no CT series (found modality {modalities})")
    if len(ct_series) > 1 and len(ct_series[0].files) == len(ct_series[1].files):
        uids = ", ".join(s.uid or "<no UID>" for s in ct_series if len(s.files) == len(ct_series[0].files))
        raise InputError(
            f"{folder}: mixed series, {len(ct_series)} CT series of equal size ({uids}); choose one with --series UID"
        )
    return ct_series[0]


def _ordered_files(entry: DicomSeries) -> list[str]:
    """Slice files ordered along the slice normal (instance number where positions are missing)."""
    if all(key[0] is not None for key in entry.order_keys):
        return [key[2] for key in sorted(entry.order_keys, key=lambda k: (k[0], k[1]))]
    return [key[2] for key in sorted(entry.order_keys, key=lambda k: (k[1], k[2]))]


@dataclass
class DicomRead:
    """A DICOM volume as read: the SimpleITK image (rescale applied) and one-line notes for the user."""

    image: sitk.Image
    notes: list[str] = field(default_factory=list)


def read_dicom_folder(folder: str, series_uid: str | None = None, regularize: bool = False) -> DicomRead:
    """The CT series of a folder (the one named by series_uid, else the largest); see the module docstring.

    regularize: resample unevenly spaced slices onto a regular grid instead of refusing them.
    """
    if not any(files for _, _, files in os.walk(folder)):
        raise InputError(f"{folder}: empty folder")
    found = find_dicom_series(folder)
    if not found:
        raise InputError(f"{folder}: no DICOM files in folder")
    entry = _choose_series(found, folder, series_uid)
    _check_dicom_header(entry.first_header, entry.files[0])
    if len(entry.sizes) > 1:
        raise InputError(f"{folder}: series {entry.uid or '<no UID>'} mixes slice sizes {sorted(entry.sizes)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_ordered_files(entry))
    try:
        return DicomRead(reader.Execute())
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot read DICOM series ({first_line(error)})") from None


def read_dicom_file(path: str, header) -> DicomRead:
    """One DICOM file (header: its pydicom header) as a one-slice (or multi-frame) volume."""
    _check_dicom_header(header, path)
    try:
        return DicomRead(sitk.ReadImage(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read (truncated or unsupported pixel data)") from None
