"""DICOM series: discovery in folders, choice of the CT series, checks, slice order, and reading with SimpleITK.

pydicom reads the headers (pixel data deferred); SimpleITK reads pixels, geometry and rescale slope/intercept
(JPEG 2000 included). Every failure the user can cause raises InputError with one line naming the path; ITK/GDCM
warnings and pydicom's warnings are kept off stderr because what they warn about is checked here.

Refused:
- a file that is not a CT image (Modality other than CT, or missing without a CT SOP Class UID), has no pixel data
  (given directly) or has colour pixels; a truncated DICOM image file (alone, or anywhere in a folder);
- a folder without DICOM files, or with DICOM files but no images; two CT series of equal size (choose with --series);
- a series mixing slice sizes or slice orientations (ImageOrientationPatient), or with two slices at the same
  position (within DUPLICATE_MM);
- a series with missing slices or uneven spacing (a step off the median step by more than SPACING_TOLERANCE),
  unless regularize (--regularize) resamples it onto a regular grid.

Ignored: DICOM files without pixel data in a folder (DICOMDIR, structured reports, presentation states); those of
them that cannot be parsed (a DICOMDIR with the DICM magic but no dataset) are named in a note.

Noted (DicomRead.notes): CT recognised by its SOP Class UID because the Modality tag is missing; slices ordered by
InstanceNumber because positions are missing (spacing unchecked); an irregular series resampled by regularize.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from ctqa.errors import InputError, first_line
from ctqa.volume import Acquisition

#: SOP classes of CT images, accepted as CT when the Modality tag is missing (some anonymisers drop it).
CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}  # CT, Enhanced CT Image Storage
MODALITY_FROM_SOP_CLASS = "Modality tag missing; CT recognised by its SOP Class UID"
#: Slices closer than this along the slice normal (mm) are duplicates.
DUPLICATE_MM = 0.01
#: A step between slices is irregular when it differs from the median step by more than this (relative, mm).
SPACING_TOLERANCE = (0.01, 0.01)
#: ImageOrientationPatient cosines further apart than this belong to different orientations.
ORIENTATION_TOLERANCE = 1e-4
#: Value length pydicom uses for "undefined length" (sequences, encapsulated pixel data).
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass
class DicomSlice:
    """One image file of a series and where it lies."""

    path: str
    instance: int  # InstanceNumber, 0 when missing
    position: float | None  # mm along the slice normal; None without ImagePositionPatient/ImageOrientationPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines


@dataclass
class DicomSeries:
    """The image files of one DICOM series found in a folder, with what is needed to choose and read it."""

    uid: str
    modality: str  # upper case; "CT" also when only the SOP Class UID says so
    first_header: pydicom.Dataset
    slices: list[DicomSlice] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (rows, columns)


@dataclass
class DicomFolder:
    """What a folder holds: its image series (largest first) and how many DICOM files without pixel data it has."""

    series: list[DicomSeries]
    non_image_files: int
    unreadable_non_images: list[str] = field(default_factory=list)  # paths (relative) skipped: cannot be parsed


@dataclass
class DicomRead:
    """A DICOM volume as read: the SimpleITK image (rescale applied) and one-line notes for the user."""

    image: sitk.Image
    notes: list[str] = field(default_factory=list)
    header: pydicom.Dataset | None = None  # of the first slice: acquisition tags


@contextmanager
def _quiet_itk():
    """Keep ITK/GDCM warnings off stderr while reading (what they warn about is checked and reported here)."""
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)


def _raw_element(header: pydicom.Dataset, tag):
    """The element of tag as read from the file, without reading a deferred value."""
    try:
        return header.get_item(tag, keep_deferred=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x, which some Slicer versions ship, has no keep_deferred; same raw store
        return header._dict.get(tag)


def _truncation(header: pydicom.Dataset, path: str) -> str | None:
    """Why a DICOM file is truncated, or None; pydicom stops silently (or with a warning) at the end of a file."""
    if len(header) == 0:
        return "no data element after the file meta information can be read"
    last = _raw_element(header, max(header.keys()))  # the file's last element: DICOM sorts by tag
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return None
    missing = last.value_tell + last.length - os.path.getsize(path)
    if missing > 0:
        return f"{missing} byte{'s' if missing > 1 else ''} of {keyword_for_tag(last.tag) or last.tag} missing"
    if -8 < missing < 0:
        return "it ends inside a data element header"
    return None


def _read_header(path: str) -> tuple[pydicom.Dataset | None, str | None]:
    """(header with pixel data deferred, or None when the file is not DICOM; why it is truncated, or None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns at a truncation; _truncation says so in one line
            header = pydicom.dcmread(path, defer_size="1 KB")
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None, None
    return header, _truncation(header, path)


def read_dicom_header(path: str) -> pydicom.Dataset | None:
    """The header of a DICOM file (pixel data deferred, not loaded), or None when the file is not DICOM.

    Raises InputError for a truncated DICOM file.
    """
    header, reason = _read_header(path)
    if reason is not None:
        raise InputError(f"{path}: truncated DICOM file ({reason})")
    return header


def _modality(header: pydicom.Dataset) -> tuple[str, list[str]]:
    """Modality in upper case ("CT" for a CT SOP class without the tag, "" when unknown) and the notes it needs."""
    modality = str(header.get("Modality", "")).strip().upper()
    if modality:
        return modality, []
    meta = getattr(header, "file_meta", pydicom.Dataset())
    sop_class = str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    if sop_class in CT_SOP_CLASSES:
        return "CT", [MODALITY_FROM_SOP_CLASS]
    return "", []


def _check_ct_image(header: pydicom.Dataset, path: str) -> list[str]:
    """Refuse DICOM files that cannot be a CT volume slice; the notes to show about the file."""
    modality, notes = _modality(header)
    if modality != "CT":
        raise InputError(f"{path}: not a CT image (DICOM Modality is {modality or 'missing'})")
    if "PixelData" not in header:
        raise InputError(f"{path}: DICOM file has no pixel data")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: colour image ({header.get('PhotometricInterpretation', 'RGB')}), not a CT")
    return notes


def _slice(header: pydicom.Dataset, path: str) -> DicomSlice:
    """Where the slice of a header lies (position None when ImagePositionPatient or ImageOrientationPatient lack)."""
    instance = int(header.get("InstanceNumber", 0) or 0)
    try:
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        position = np.asarray(header.ImagePositionPatient, dtype=float)
    except (AttributeError, ValueError, TypeError):
        return DicomSlice(path, instance, None, None)
    if orientation.shape != (6,) or position.shape != (3,):
        return DicomSlice(path, instance, None, None)
    normal = np.cross(orientation[:3], orientation[3:])
    return DicomSlice(path, instance, float(position @ normal), tuple(orientation.tolist()))


def add_image(found: dict[str, DicomSeries], header: pydicom.Dataset, path: str, key: str | None = None) -> None:
    """File an image (its header, pixel data deferred) under its series in found, keyed by key (default: its
    SeriesInstanceUID, "" when missing)."""
    uid = str(header.get("SeriesInstanceUID", ""))
    entry = found.setdefault(uid if key is None else key, DicomSeries(uid, _modality(header)[0], header))
    entry.slices.append(_slice(header, path))
    entry.sizes.add((int(header.get("Rows", 0)), int(header.get("Columns", 0))))


def is_localizer(header: pydicom.Dataset) -> bool:
    """A localizer (scout) image: ImageType says LOCALIZER."""
    return "LOCALIZER" in [str(value).upper() for value in header.get("ImageType", [])]


def find_dicom_series(folder: str | os.PathLike) -> DicomFolder:
    """All DICOM image series under folder (recursively), any modality, largest first.

    Files without pixel data (DICOMDIR, reports, presentation states) are counted, not grouped. Raises InputError
    for a truncated DICOM file.
    """
    series: dict[str, DicomSeries] = {}
    non_image_files = 0
    unreadable: list[str] = []
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            header, truncation = _read_header(path)
            if header is None:
                continue
            if "PixelData" not in header:  # a DICOMDIR, report or presentation state: not part of any series
                non_image_files += 1
                if truncation is not None:
                    unreadable.append(os.path.relpath(path, folder))
                continue
            if truncation is not None:
                raise InputError(f"{path}: truncated DICOM file ({truncation})")
            add_image(series, header, path)
    ordered = sorted(series.values(), key=lambda s: len(s.slices), reverse=True)
    return DicomFolder(ordered, non_image_files, unreadable)


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
    if len(ct_series) > 1 and len(ct_series[0].slices) == len(ct_series[1].slices):
        uids = ", ".join(s.uid or "<no UID>" for s in ct_series if len(s.slices) == len(ct_series[0].slices))
        raise InputError(
            f"{folder}: mixed series, {len(ct_series)} CT series of equal size ({uids}); choose one with --series UID"
        )
    return ct_series[0]


def _check_orientations(entry: DicomSeries, folder: str) -> None:
    """Refuse a series whose slices have different ImageOrientationPatient."""
    oriented = [s for s in entry.slices if s.orientation is not None]
    for other in oriented[1:]:
        if np.max(np.abs(np.subtract(other.orientation, oriented[0].orientation))) > ORIENTATION_TOLERANCE:
            first, second = ([f"{v:.4g}" for v in s.orientation] for s in (oriented[0], other))
            raise InputError(
                f"{folder}: series {entry.uid or '<no UID>'} mixes slice orientations: ImageOrientationPatient "
                f"[{', '.join(first)}] in {oriented[0].path} but [{', '.join(second)}] in {other.path}"
            )


@dataclass
class SliceSteps:
    """Slice positions of a series in reading order and the steps that break their regular spacing."""

    positions: np.ndarray  # mm along the slice normal, ascending
    step: float  # mm, the median step (the lower one for an even count: one gap among three slices stays a gap)
    irregular: list[int]  # indices i of the steps positions[i] -> positions[i + 1] off the median step

    def describe_first(self) -> str:
        """The first irregular step in words: missing slices (a multiple of the step) or uneven spacing."""
        i = self.irregular[0]
        low, high = self.positions[i], self.positions[i + 1]
        gap = high - low
        multiple = round(gap / self.step)
        where = f"between slice positions {low:.2f} and {high:.2f} mm"
        more = f"; the first of {len(self.irregular)} irregular steps" if len(self.irregular) > 1 else ""
        if multiple >= 2 and not _off_step(gap, multiple * self.step):
            missing = f"{multiple - 1} slice{'s' if multiple > 2 else ''}"
            return f"missing slices: gap of {gap:.4g} mm {where} ({missing} of {self.step:.4g} mm missing{more})"
        return f"uneven slice spacing: step of {gap:.4g} mm {where} ({self.step:.4g} mm expected{more})"


def _off_step(step: float, expected: float) -> bool:
    """Whether step (mm) differs from the expected step by more than SPACING_TOLERANCE."""
    relative, absolute = SPACING_TOLERANCE
    return bool(abs(step - expected) > relative * expected + absolute)


def _slice_steps(slices: list[DicomSlice], folder: str) -> SliceSteps:
    """Positions in order and their irregular steps; refuses two slices at the same position (within DUPLICATE_MM)."""
    positions = np.array([s.position for s in slices])
    steps = np.diff(positions)
    duplicates = np.flatnonzero(steps < DUPLICATE_MM)
    if duplicates.size:
        i = duplicates[0]
        raise InputError(
            f"{folder}: duplicate slice position {positions[i]:.2f} mm (along the slice normal) in "
            f"{slices[i].path} and {slices[i + 1].path}"
        )
    step = float(np.sort(steps)[(len(steps) - 1) // 2]) if len(steps) else 0.0
    return SliceSteps(positions, step, [i for i, s in enumerate(steps) if _off_step(float(s), step)])


def _read_series(files: list[str], folder: str) -> sitk.Image:
    """The slice files, in this order, as one image (ITK takes origin, direction and in-plane spacing from them)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot read DICOM series ({first_line(error)})") from None


def _read_regularized(files: list[str], folder: str, steps: SliceSteps) -> sitk.Image:
    """The slices (files, at steps.positions) resampled to steps.step mm from the first to the last position.

    Each new slice interpolates linearly between the two acquired slices around it (as 3D Slicer's acquisition
    geometry regularization does). Returns float32; holds at most one copy of the volume beside the one read.
    """
    image = _read_series(files, folder)
    origin, direction, spacing = image.GetOrigin(), image.GetDirection(), image.GetSpacing()
    positions = steps.positions
    count = int(round((positions[-1] - positions[0]) / steps.step)) + 1
    targets = positions[0] + steps.step * np.arange(count)
    above = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    weights = np.clip((targets - positions[above - 1]) / (positions[above] - positions[above - 1]), 0.0, 1.0)
    acquired = sitk.GetArrayViewFromImage(image)
    resampled = np.empty((count, *acquired.shape[1:]), np.float32)
    for k, (j, w) in enumerate(zip(above, weights)):
        resampled[k] = (1.0 - w) * acquired[j - 1].astype(np.float64) + w * acquired[j].astype(np.float64)
    del acquired, image
    regular = sitk.GetImageFromArray(resampled)
    regular.SetOrigin(origin)
    regular.SetDirection(direction)
    regular.SetSpacing((*spacing[:2], steps.step))
    return regular


def read_dicom_folder(folder: str, series_uid: str | None = None, regularize: bool = False) -> DicomRead:
    """The CT series of a folder (the one named by series_uid, else the largest); see the module docstring.

    regularize: resample a series with missing slices or uneven spacing onto a regular grid instead of refusing it.
    """
    if not any(files for _, _, files in os.walk(folder)):
        raise InputError(f"{folder}: empty folder")
    found = find_dicom_series(folder)
    if not found.series:
        if found.non_image_files:
            raise InputError(
                f"{folder}: no DICOM images in folder ({found.non_image_files} DICOM files without pixel data)"
            )
        raise InputError(f"{folder}: no DICOM files in folder")
    read = _read_entry(_choose_series(found.series, folder, series_uid), folder, regularize)
    if found.unreadable_non_images:
        names = ", ".join(found.unreadable_non_images[:3]) + (" ..." if len(found.unreadable_non_images) > 3 else "")
        read.notes.append(
            f"skipped {len(found.unreadable_non_images)} DICOM file(s) without image data that cannot be parsed "
            f"({names})"
        )
    return read


def read_dicom_files(files: list[str], folder: str, regularize: bool = False) -> DicomRead:
    """The one series made of these DICOM files (a batch's discovery found them; folder names it in messages),
    read without scanning the folder again; checked as read_dicom_folder checks a series."""
    found: dict[str, DicomSeries] = {}
    for path in files:
        header = read_dicom_header(path)
        if header is None or "PixelData" not in header:
            raise InputError(f"{path}: not a DICOM image")
        add_image(found, header, path, key="")
    if not found:
        raise InputError(f"{folder}: no DICOM files")
    return _read_entry(found[""], folder, regularize)


def _read_entry(entry: DicomSeries, folder: str, regularize: bool) -> DicomRead:
    """Check and read one series found in folder (module docstring: what is refused, resampled or noted)."""
    notes = _check_ct_image(entry.first_header, entry.slices[0].path)
    if len(entry.sizes) > 1:
        raise InputError(f"{folder}: series {entry.uid or '<no UID>'} mixes slice sizes {sorted(entry.sizes)}")
    _check_orientations(entry, folder)
    if any(s.position is None for s in entry.slices):
        slices = sorted(entry.slices, key=lambda s: (s.instance, s.path))
        if len(slices) > 1:
            notes.append("slice positions missing: slices ordered by InstanceNumber, spacing not checked")
        return DicomRead(_read_series([s.path for s in slices], folder), notes, entry.first_header)
    slices = sorted(entry.slices, key=lambda s: (s.position, s.instance))
    steps = _slice_steps(slices, folder)
    if steps.irregular and not regularize:
        raise InputError(f"{folder}: {steps.describe_first()}; --regularize resamples onto a regular grid")
    files = [s.path for s in slices]
    if not steps.irregular:
        return DicomRead(_read_series(files, folder), notes, entry.first_header)
    image = _read_regularized(files, folder, steps)
    notes.append(
        f"{steps.describe_first()}: resampled to {image.GetSize()[2]} slices at {steps.step:.4g} mm (--regularize)"
    )
    return DicomRead(image, notes, entry.first_header)


def read_dicom_file(path: str, header: pydicom.Dataset) -> DicomRead:
    """One DICOM file (header: its pydicom header) as a one-slice (or multi-frame) volume."""
    notes = _check_ct_image(header, path)
    try:
        with _quiet_itk():
            return DicomRead(sitk.ReadImage(path), notes, header)
    except RuntimeError:
        raise InputError(f"{path}: cannot read (truncated or unsupported pixel data)") from None


def acquisition_of(header: pydicom.Dataset | None) -> Acquisition | None:
    """Acquisition tags of a DICOM header (None without a header); missing or unreadable tags are None."""
    if header is None:
        return None

    def number(keyword: str) -> float | None:
        try:
            value = header.get(keyword)
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    def text(*keywords: str) -> str | None:
        """The first of keywords that holds text; several values joined by "\\" as DICOM stores them."""
        for keyword in keywords:
            value = header.get(keyword, "") or ""
            if isinstance(value, pydicom.multival.MultiValue):
                value = "\\".join(str(item) for item in value)
            if str(value).strip():
                return str(value).strip()
        return None

    return Acquisition(
        manufacturer=text("Manufacturer"),
        kernel=text("ConvolutionKernel"),
        slice_thickness_mm=number("SliceThickness"),
        ctdivol_mgy=number("CTDIvol"),
        exposure_mas=number("Exposure"),
        tube_current_ma=number("XRayTubeCurrent"),
        kvp=number("KVP"),
        model_name=text("ManufacturerModelName"),
        protocol=text("ProtocolName", "SeriesDescription"),
    )
