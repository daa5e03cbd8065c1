"""Reading CT volumes (DICOM folder or file, NIfTI, NRRD, MHA, 2D TIFF, NumPy .npy) and writing maps.

Pixels and geometry come from SimpleITK (DICOM through dicom.py), TIFF from tifffile, .npy from NumPy (no pickle).
Stored values become HU through a Scaling (scaling.py); without one they must look like HU. Every failure the user
can cause raises InputError with one line naming the path; notes a user should see go on CTVolume.notes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:  # the deflate ITK itself bundles: same format, about 2.5x faster than CPython's zlib at level 1
    from zlib_ng import zlib_ng as zlib
except ImportError:  # a Slicer where the zlib-ng wheel could not be installed: slower, same files
    import zlib

from ctqa import dicom
from ctqa.errors import InputError, first_line
from ctqa.geometry import image_on_grid
from ctqa.scaling import Scaling, check_plausible_hu, check_stored_type, rendering_scaling
from ctqa.scaling import parse as parse_scaling
from ctqa.slabs import map_slabs_in_order
from ctqa.staging import write_pieces
from ctqa.volume import AIR_HU, PADDING_BELOW_HU, CTVolume, Grid

#: Extensions SimpleITK reads as whole volumes (not DICOM).
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Extensions read without geometry (pixel size from --pixel-mm, else DEFAULT_PIXEL_MM).
GEOMETRY_FREE_EXTENSIONS = (".tif", ".tiff", ".npy")
#: Picture formats SimpleITK reads: whatever spacing they carry (a print resolution) is no pixel size in mm, so they
#: take their pixel size as the GEOMETRY_FREE_EXTENSIONS do.
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: Extensions we write maps to.
WRITABLE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")
DEFAULT_PIXEL_MM = 1.0
#: Slices compressed at a time when writing NRRD maps.
NRRD_SLAB_SLICES = 16
#: Bytes read at a time when scanning NIfTI voxels for NaN/inf.
NIFTI_CHUNK_BYTES = 64 << 20


def _has_extension(path: Path | str, extensions: tuple[str, ...]) -> bool:
    return str(path).lower().endswith(extensions)


#: Header separator and fields naming a detached data file: MetaImage (.mhd) and NRRD (.nhdr; both spellings).
_DATA_FILE_FIELDS = {".mhd": ("=", ("elementdatafile",)), ".nhdr": (":", ("data file", "datafile"))}
#: Values of those fields that name no single file beside the header (embedded data, lists, patterns).
_NOT_ONE_FILE = ("local", "list")


def detached_data_files(path: str | os.PathLike) -> tuple[str, ...]:
    """The data file a .mhd or .nhdr header names, as a path beside the header (existing), else (): other formats,
    embedded data, and lists or patterns of files (what SimpleITK reads then is not one file)."""
    header_format = next((f for ext, f in _DATA_FILE_FIELDS.items() if _has_extension(path, (ext,))), None)
    if header_format is None:
        return ()
    separator_char, fields = header_format
    try:
        with open(path, encoding="latin-1") as header:
            lines = header.read(1 << 16).splitlines()
    except OSError:
        return ()
    for line in lines:
        key, separator, value = line.partition(separator_char)
        value = value.strip()
        if not separator or key.strip().lower() not in fields:
            continue
        if value.lower().startswith(_NOT_ONE_FILE) or " " in value or "%" in value:
            return ()
        data = Path(path).parent / value
        return (str(data),) if data.is_file() else ()
    return ()


def _check_nifti_voxels(path: str) -> None:
    """Refuse a NIfTI file whose voxel data is truncated or holds NaN/inf (ITK's reader turns NaN into 0)."""
    import nibabel

    try:
        header = nibabel.load(path).header
    except Exception as error:  # nibabel raises several types for malformed headers
        raise InputError(f"{path}: cannot read NIfTI header ({first_line(error)})") from None
    dtype = header.get_data_dtype()
    expected = int(np.prod(header.get_data_shape())) * dtype.itemsize
    offset = int(header.get_data_offset())
    compressed = path.lower().endswith(".gz")
    if not compressed and os.path.getsize(path) < offset + expected:
        raise InputError(f"{path}: cannot read (truncated: {os.path.getsize(path) - offset} of {expected} data bytes)")
    if dtype.kind != "f":
        return
    remaining, non_finite = expected, 0
    with (gzip.open if compressed else open)(path, "rb") as handle:
        handle.seek(offset)
        while remaining > 0:
            try:
                chunk = handle.read(min(NIFTI_CHUNK_BYTES - NIFTI_CHUNK_BYTES % dtype.itemsize, remaining))
            except (OSError, EOFError) as error:
                raise InputError(f"{path}: cannot read ({first_line(error)})") from None
            if not chunk:
                raise InputError(f"{path}: cannot read (truncated: {expected - remaining} of {expected} data bytes)")
            values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype=dtype)
            non_finite += values.size - int(np.count_nonzero(np.isfinite(values)))
            remaining -= len(chunk)
    if non_finite:
        raise InputError(f"{path}: {non_finite} NaN/inf voxels")


def _read_with_sitk(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read ({first_line(error)})") from None


def _read_geometry_free(path: str) -> np.ndarray:
    """(z, y, x) or (y, x) array of a TIFF or .npy file; InputError for colour or unreadable files."""
    try:
        if _has_extension(path, (".npy",)):
            array = np.load(path, allow_pickle=False)
        else:
            import tifffile

            array = tifffile.imread(path)
    except Exception as error:  # OSError, ValueError, and tifffile's own TiffFileError in older versions
        raise InputError(f"{path}: cannot read ({first_line(error)})") from None
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype.kind in "iuf":
        array = _grey_channel(array, path)
    if array.ndim not in (2, 3) or array.dtype.kind not in "iuf":
        raise InputError(
            f"{path}: {array.ndim}D {array.dtype} array of shape {array.shape}; expected a grey 2D or 3D image"
        )
    return array


def _grey_channel(channels: np.ndarray, source: str) -> np.ndarray:
    """The first channel of (..., 3 or 4) RGB(A) values whose R, G and B are equal (grey stored as colour);
    InputError naming what it is otherwise."""
    if channels.shape[-1] in (3, 4) and np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(
        channels[..., 0], channels[..., 2]
    ):
        return np.ascontiguousarray(channels[..., 0])
    raise InputError(f"{source}: {channels.shape[-1]}-channel colour image (R, G, B differ), not a CT")


def _as_3d(image: sitk.Image, source: str) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        grey = sitk.GetImageFromArray(_grey_channel(sitk.GetArrayFromImage(image), source))
        grey.CopyInformation(image)
        image = grey
    if image.GetDimension() == 2:
        return sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{source}: {image.GetDimension()}D image; expected a 2D slice or a 3D volume")
    return image


def _whole_hu(stored: np.ndarray, scaling: Scaling, low: float, high: float) -> np.ndarray | None:
    """int16 HU of integer stored values spanning low..high under a whole-number scaling without slope (hu,
    hu+1024) when every value fits int16 (stored itself when it is int16 HU already); None otherwise (the volume is
    then float32)."""
    intercept = scaling.intercept
    if stored.dtype.kind not in "iu" or scaling.slope != 1.0 or intercept != round(intercept):
        return None
    info = np.iinfo(np.int16)
    if low + intercept < info.min or high + intercept > info.max:
        return None
    if stored.dtype == np.int16 and intercept == 0:
        return stored
    hu = np.empty(stored.shape, dtype=np.int16)
    for start in range(0, stored.shape[0], NRRD_SLAB_SLICES):
        part = slice(start, start + NRRD_SLAB_SLICES)
        hu[part] = stored[part].astype(np.int32) + int(intercept)
    return hu


def _to_volume(
    stored: np.ndarray,
    geometry: tuple,
    source: str,
    scaling: Scaling,
    explicit: bool,
    notes,
    acquisition=None,
    compact: bool = False,
    owned: bool = False,
) -> CTVolume:
    """CTVolume from stored values (z, y, x) with the checks every format shares; compact: int16 HU when the values
    are whole HU that fit it (``_whole_hu``), else float32; owned: stored is a writable array nothing else uses (it
    may become the volume's own, without a copy)."""
    if stored.size == 0:
        raise InputError(f"{source}: image has no voxels")
    divisor, rendering_note = rendering_scaling(stored.dtype, scaling, explicit)
    if rendering_note is not None:
        stored = stored.astype(np.float32) / np.float32(divisor)
        notes = [*notes, rendering_note]
    check_stored_type(stored.dtype, source)
    low, high = stored.min(), stored.max()
    if low == high:
        raise InputError(f"{source}: all {stored.size} voxels equal {low:g}: a blank image")
    if stored.dtype.kind == "f":
        finite = np.isfinite(stored)
        if not finite.all():
            raise InputError(f"{source}: {stored.size - int(np.count_nonzero(finite))} NaN/inf voxels")
        del finite
    hu = _whole_hu(stored, scaling, float(low), float(high)) if compact else None
    if hu is None:
        hu = scaling.to_hu(stored, source)
    if hu is stored and not owned:
        hu = hu.copy()  # never keep a view of a reader's buffer
    if not explicit:
        check_plausible_hu(hu, source)
    for start in range(0, hu.shape[0], NRRD_SLAB_SLICES):  # a slab at a time: no volume-sized mask
        part = hu[start : start + NRRD_SLAB_SLICES]
        part[part < PADDING_BELOW_HU] = AIR_HU  # padding outside the field of view (-2048, -3024) is air
    spacing, origin, direction = geometry
    return CTVolume(hu, spacing, origin, direction, source, scaling.name, scaling.clipped_hu, tuple(notes), acquisition)


def read_volume(
    path: str | os.PathLike,
    series_uid: str | None = None,
    scaling: str | None = None,
    regularize: bool = False,
    pixel_mm: float | None = None,
    dicom_files: list[str] | None = None,
    compact: bool = False,
) -> CTVolume:
    """Read a CT volume in HU from a DICOM folder or file, NIfTI, NRRD, MHA, 2D/3D TIFF or .npy.

    series_uid: the DICOM series to read from a folder (default: the CT series with the most slices).
    scaling: see scaling.py; None means "hu" with the plausibility check, any explicit value is trusted.
    regularize: resample DICOM series with gaps or uneven spacing onto a regular grid instead of refusing them.
    pixel_mm: pixel size (and slice spacing) for TIFF/.npy, which store none, and pictures (PICTURE_EXTENSIONS),
        whose stored spacing is no size in mm (default DEFAULT_PIXEL_MM, noted).
    dicom_files: the files of one DICOM series in the folder path, read without scanning it (a batch found them).
    compact: keep whole HU stored in an integer type as int16 (CTVolume.hu; half the memory of float32; what
    ``ctqa assess`` and batch runs read with), else float32.
    Raises InputError with a one-line reason for anything that is not a readable CT.
    """
    source = str(path)
    chosen = parse_scaling(scaling)
    if not os.path.exists(source):
        raise InputError(f"{source}: no such file or folder")
    notes: list[str] = []
    header = None
    if _has_extension(source, GEOMETRY_FREE_EXTENSIONS + PICTURE_EXTENSIONS):
        if _has_extension(source, GEOMETRY_FREE_EXTENSIONS):
            stored = _read_geometry_free(source)
            stored = stored[None] if stored.ndim == 2 else stored
        else:
            stored = _image_array(_as_3d(_read_with_sitk(source), source))
        size = DEFAULT_PIXEL_MM if pixel_mm is None else float(pixel_mm)
        if pixel_mm is None:
            notes.append(f"no pixel spacing stored in {Path(source).name}; assumed {size:g} mm (set --pixel-mm)")
        geometry = ((size, size, size), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        volume = _to_volume(stored, geometry, source, chosen, scaling is not None, notes, None, compact, True)
        return dataclasses.replace(volume, pixel_size_assumed=pixel_mm is None)
    if os.path.isdir(source):
        if dicom_files:
            found = dicom.read_dicom_files(list(dicom_files), source, regularize)
        else:
            found = dicom.read_dicom_folder(source, series_uid, regularize)
        image, notes, header = found.image, found.notes, found.header
    else:
        header = dicom.read_dicom_header(source)
        if header is not None and ("Modality" in header or "PixelData" in header or "SOPClassUID" in header):
            found = dicom.read_dicom_file(source, header)
            image, notes, header = found.image, found.notes, found.header
        else:
            if _has_extension(source, (".nii", ".nii.gz")):
                _check_nifti_voxels(source)
            image = _read_with_sitk(source)
    image = _as_3d(image, source)
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    stored = _image_array(image) if compact else sitk.GetArrayViewFromImage(image)
    acquisition = dicom.acquisition_of(header)
    return _to_volume(stored, geometry, source, chosen, scaling is not None, notes, acquisition, compact, compact)


class _ImageBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy and keeps the image alive as long as an array uses it."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        interface = dict(sitk.GetArrayViewFromImage(image).__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable: the image is ours alone
        self.__array_interface__ = interface


def _image_array(image: sitk.Image) -> np.ndarray:
    """A writable (z, y, x) ndarray over image's own pixel buffer (no copy: a whole volume is not held twice while
    it is read); the array keeps the image alive. For an image nothing else refers to."""
    return np.asarray(_ImageBuffer(image))


def with_acquisition_from(volume: CTVolume, dicom_file: str | os.PathLike) -> CTVolume:
    """volume with the acquisition tags of dicom_file (a file of the series the volume was exported from); its own
    tags are kept when it has some. InputError (one line) when the file is not a readable DICOM image."""
    if volume.acquisition is not None:
        return volume
    header = dicom.read_dicom_header(str(dicom_file)) if os.path.isfile(dicom_file) else None
    if header is None or "PixelData" not in header:
        raise InputError(f"{dicom_file}: not a DICOM image file (--acquisition-from)")
    return dataclasses.replace(volume, acquisition=dicom.acquisition_of(header))


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read any image SimpleITK understands (used for labelmaps), InputError if it cannot."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    return _read_with_sitk(str(path))


#: NRRD type names of the dtypes maps and labelmaps are written in (teem's format spec).
NRRD_TYPES = {
    "uint8": "uchar", "int8": "signed char", "uint16": "ushort", "int16": "short", "uint32": "uint", "int32": "int",
    "float32": "float", "float64": "double",
}  # fmt: skip


def _nrrd_header(array: np.ndarray, like: CTVolume | Grid, encoding: str) -> bytes:
    """NRRD 0004 header of a (z, y, x) array in LPS space with like's geometry (teem's format spec)."""
    direction = np.asarray(like.direction).reshape(3, 3)
    axes = [direction[:, axis] * like.spacing[axis] for axis in range(3)]  # columns are the x, y, z axes

    def vector(values) -> str:
        return "(" + ",".join(f"{float(v):.17g}" for v in values) + ")"

    lines = [
        "NRRD0004",
        f"type: {NRRD_TYPES[array.dtype.name]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}",
        "space directions: " + " ".join(vector(axis) for axis in axes),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {encoding}",
        f"space origin: {vector(like.origin)}",
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _deflate_slab(data: np.ndarray, last: bool) -> bytes:
    """Raw deflate (level 1) of one slab, ended by a sync flush so that the slabs concatenate into one stream."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _slab_data(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Slices start..stop of array as a C-contiguous little-endian array (the NRRD data order; the slab itself when
    it is one already)."""
    return np.ascontiguousarray(array[start:stop], dtype=array.dtype.newbyteorder("<"))


def _write_raw_nrrd(array: np.ndarray, like: CTVolume | Grid, path: Path) -> None:
    """Write an uncompressed NRRD slab by slab: for files a program reads back at once (disk-speed, no CPU)."""
    with open(path, "wb") as handle:
        handle.write(_nrrd_header(array, like, "raw"))
        for start in range(0, array.shape[0], NRRD_SLAB_SLICES):
            for piece in write_pieces(_slab_data(array, start, start + NRRD_SLAB_SLICES)):
                handle.write(piece)


def _write_nrrd(array: np.ndarray, like: CTVolume | Grid, path: Path) -> None:
    """Write a gzip-encoded NRRD slab by slab, the slabs compressed in the slab threads (zlib releases the GIL).

    The slabs' raw deflate streams, each ended by a sync flush, form one valid deflate stream (as pigz does), so
    the file is a single ordinary gzip member. Only a few slabs are in flight (slabs.map_slabs_in_order), so memory
    stays small; SimpleITK would first copy the whole map into an image. Written in pieces (staging.write_pieces).
    """
    depth = array.shape[0]

    def compress(start: int, stop: int) -> tuple[np.ndarray, bytes]:
        data = _slab_data(array, start, stop)
        return data, _deflate_slab(data, last=stop == depth)

    crc, size = 0, 0
    with open(path, "wb") as handle:
        handle.write(_nrrd_header(array, like, "gzip"))
        handle.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip member header: deflate, mtime 0
        for _, (data, compressed) in map_slabs_in_order(compress, depth, NRRD_SLAB_SLICES):
            for piece in write_pieces(compressed):
                handle.write(piece)
            crc, size = zlib.crc32(data, crc), size + data.nbytes
        handle.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def write_map(array: np.ndarray, like: CTVolume | Grid, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a (z, y, x) map with the geometry of like (a CTVolume or a Grid); format from the extension.

    NRRD (the output contract's format) is streamed in slabs, so writing needs no copy of the map (which may be a
    staging.SlabMap: only a few slabs are read at a time); compress=False writes it uncompressed (temporary files
    another process reads at once).
    """
    target = Path(path)
    if not _has_extension(target, WRITABLE_EXTENSIONS):
        raise InputError(f"{target}: unsupported output format; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    if array.shape != like.shape:
        raise ValueError(f"map shape {array.shape} differs from volume shape {like.shape}")
    try:
        if _has_extension(target, (".nrrd",)) and array.dtype.name in NRRD_TYPES:
            (_write_nrrd if compress else _write_raw_nrrd)(array, like, target)
        else:
            image = image_on_grid(np.asarray(array), like)
            sitk.WriteImage(image, str(target), useCompression=True, compressionLevel=1)
    except OSError as error:
        raise InputError(f"{target}: cannot write ({error.strerror or error})") from None
    except RuntimeError as error:
        raise InputError(f"{target}: cannot write ({first_line(error)})") from None
