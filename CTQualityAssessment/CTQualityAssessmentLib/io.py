"""Reading CT volumes (DICOM series or file, NIfTI, NRRD, MHA) and writing maps with the input geometry.

Parsing is left to SimpleITK (pixels, geometry, rescale slope/intercept, JPEG 2000) and pydicom (headers for
series discovery and checks). Every failure the user can cause raises InputError with one line naming the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from .errors import InputError
from .volume import CTVolume

#: Extensions SimpleITK reads as whole volumes (not DICOM).
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Extensions we write maps to.
WRITABLE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")


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


def _first_line(error: Exception) -> str:
    """A one-line reason from an exception whose text may span many lines (SimpleITK's do)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:  # ITK puts the useful part after "Description:" or as the last line
        if line.startswith("Description:"):
            return line.removeprefix("Description:").strip()
    return lines[-1] if lines else type(error).__name__


def _has_extension(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(extensions)


def _read_dicom_header(path: str):
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
            header = _read_dicom_header(path)
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


def _read_dicom_folder(folder: str, series_uid: str | None) -> sitk.Image:
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
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot read DICOM series ({_first_line(error)})") from None


def _read_single_file(path: str) -> sitk.Image:
    header = _read_dicom_header(path)
    is_dicom = header is not None and ("Modality" in header or "PixelData" in header)
    if is_dicom:
        _check_dicom_header(header, path)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as error:
        reason = "truncated or unsupported pixel data" if is_dicom else _first_line(error)
        raise InputError(f"{path}: cannot read ({reason})") from None


def image_to_array(image: sitk.Image, source: str) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """(array (z, y, x), spacing, origin, direction) of a scalar 2D or 3D image; 2D becomes one slice."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source}: {image.GetNumberOfComponentsPerPixel()}-channel (colour) image, not a CT")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    elif image.GetDimension() != 3:
        raise InputError(f"{source}: {image.GetDimension()}D image; expected a 2D slice or a 3D volume")
    return sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _check_hu(hu: np.ndarray, source: str) -> None:
    """Refuse arrays that cannot be a CT in HU: non-finite voxels, or an already normalised image."""
    if hu.size == 0:
        raise InputError(f"{source}: image has no voxels")
    if not np.isfinite(hu).all():
        raise InputError(f"{source}: {int(np.size(hu) - np.isfinite(hu).sum())} NaN/inf voxels")
    low, high = float(hu.min()), float(hu.max())
    if low >= -1.0 and high <= 1.0:
        raise InputError(f"{source}: values span [{low:g}, {high:g}]; looks normalised, not HU")


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> CTVolume:
    """Read a CT volume in HU from a DICOM folder, a DICOM file, NIfTI, NRRD or MHA.

    A folder is searched recursively for DICOM series; the CT series with the most slices is read unless
    series_uid names one. Raises InputError with a one-line reason for anything that is not a readable CT.
    """
    source = str(path)
    if not os.path.exists(source):
        raise InputError(f"{source}: no such file or folder")
    if os.path.isdir(source):
        image = _read_dicom_folder(source, series_uid)
    else:
        image = _read_single_file(source)
    array, spacing, origin, direction = image_to_array(image, source)
    hu = array.astype(np.float32, copy=False)
    _check_hu(hu, source)
    return CTVolume(hu, spacing, origin, direction, source)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read any image SimpleITK understands (used for labelmaps), InputError if it cannot."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read ({_first_line(error)})") from None


def to_image(array: np.ndarray, like: CTVolume) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array on the grid of like."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(like.spacing)
    image.SetOrigin(like.origin)
    image.SetDirection(like.direction)
    return image


def write_map(array: np.ndarray, like: CTVolume, path: str | os.PathLike) -> None:
    """Write a (z, y, x) map with the geometry of like; format from the extension (NRRD, NIfTI, MHA)."""
    target = Path(path)
    if not _has_extension(target, WRITABLE_EXTENSIONS):
        raise InputError(f"{target}: unsupported output format; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    if array.shape != like.shape:
        raise ValueError(f"map shape {array.shape} differs from volume shape {like.shape}")
    sitk.WriteImage(to_image(array, like), str(target), useCompression=True, compressionLevel=1)
