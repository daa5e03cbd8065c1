"""Regions of interest on the volume grid: from a labelmap file, a Slicer .seg.nrrd or a folder of binary masks.

Label images on another grid are resampled (nearest neighbour) onto the volume grid when their physical extents
overlap; otherwise InputError. Names come from, in order: a label table (--roi-names), the segment names stored
in a .seg.nrrd, the file name of a single binary mask or of each mask in a folder, else "label <value>".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctqa.errors import InputError
from ctqa.geometry import resample_onto
from ctqa.io import VOLUME_EXTENSIONS, read_image
from ctqa.volume import CTVolume

#: Most labels a labelmap may hold (TotalSegmentator has 117); more distinct values means an image, not labels.
MAX_LABELS = 255


@dataclass
class Roi:
    """One region on the volume grid: its label value, name and mask inside its bounding box.

    box: slices (z, y, x) of the bounding box, None when the region is empty; mask: bool array of the box.
    """

    value: int
    name: str
    box: tuple[slice, slice, slice] | None
    mask: np.ndarray | None

    @property
    def voxel_count(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Label names from a 3D Slicer colour table (`value name R G B A`) or a CSV/TSV of `value,name` lines."""
    names: dict[int, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read label table ({error.__class__.__name__})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in re.split(r"[,\t ]+", line) if f]
        if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
            if number == 1 and not fields[0].lstrip("-").isdigit():
                continue  # a CSV header line
            raise InputError(f"{path}: line {number} is not 'value name ...'")
        names[int(fields[0])] = fields[1]
    if not names:
        raise InputError(f"{path}: label table has no entries")
    return names


def _segment_names(image: sitk.Image) -> dict[int, str]:
    """Segment names stored by 3D Slicer in a .seg.nrrd (SegmentN_Name / SegmentN_LabelValue)."""
    names = {}
    for key in image.GetMetaDataKeys():
        match = re.fullmatch(r"Segment(\d+)_Name", key)
        if match:
            value_key = f"Segment{match.group(1)}_LabelValue"
            if value_key in image.GetMetaDataKeys():
                names[int(image.GetMetaData(value_key))] = image.GetMetaData(key)
    return names


def _layered_segments(image: sitk.Image, volume: CTVolume, source: str) -> list[Roi]:
    """One Roi per segment of a 3D Slicer .seg.nrrd whose segments overlap (one labelmap layer per component).

    Segment k is where layer SegmentK_Layer holds SegmentK_LabelValue; values are k + 1 in file order.
    """
    keys = set(image.GetMetaDataKeys())
    rois = []
    index = 0
    while f"Segment{index}_Name" in keys:
        layer = int(image.GetMetaData(f"Segment{index}_Layer")) if f"Segment{index}_Layer" in keys else 0
        label = int(image.GetMetaData(f"Segment{index}_LabelValue"))
        component = sitk.VectorIndexSelectionCast(image, layer)
        mask = labels_on_volume_grid(sitk.Cast(component == label, sitk.sitkUInt8), volume, source) > 0
        rois.append(roi_from_mask(mask, index + 1, image.GetMetaData(f"Segment{index}_Name")))
        index += 1
    return rois


def _stem(path: Path) -> str:
    name = path.name
    for extension in sorted(VOLUME_EXTENSIONS + (".seg.nrrd",), key=len, reverse=True):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return path.stem


def labels_on_volume_grid(image: sitk.Image, volume: CTVolume, source: str) -> np.ndarray:
    """Integer label array (z, y, x) of a label image on the volume grid; nearest-neighbour resampled if needed."""
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise InputError(f"{source}: not a 3D single-channel labelmap")
    check_looks_like_labels(sitk.GetArrayViewFromImage(image), source)
    labels = sitk.GetArrayFromImage(resample_onto(image, volume, source, "labelmap", linear=False))
    return labels.astype(np.int32, copy=False)


def check_looks_like_labels(values: np.ndarray, source: str) -> None:
    """Refuse an image that is not a labelmap: negative or non-integer values, or more than MAX_LABELS labels."""
    if not np.issubdtype(values.dtype, np.integer) and (not np.all(np.isfinite(values)) or np.any(values % 1)):
        raise InputError(f"{source}: not a labelmap (non-integer values); is it a CT image?")
    low = values.min()
    if low < 0:
        raise InputError(f"{source}: not a labelmap (negative value {low:g}); is it a CT image?")
    count = np.unique(values).size
    if count > MAX_LABELS + 1:
        raise InputError(f"{source}: not a labelmap ({count} distinct values, at most {MAX_LABELS} labels)")


def rois_from_labels(labels: np.ndarray, names: dict[int, str]) -> list[Roi]:
    """One Roi per named label and per label present (value > 0), in value order; named-but-absent ones are empty."""
    present = [int(v) for v in np.unique(labels) if v > 0]
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False)) if present else []
    rois = []
    for value in sorted(set(present) | set(names)):
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        mask = None if box is None else labels[box] == value
        rois.append(Roi(value, names.get(value, f"label {value}"), box, mask))
    return rois


def roi_from_mask(mask: np.ndarray, value: int, name: str) -> Roi:
    """One Roi from a bool (z, y, x) mask on the volume grid."""
    box = ndimage.find_objects(mask.astype(np.uint8))
    return Roi(value, name, box[0], mask[box[0]]) if box else Roi(value, name, None, None)


def load_rois(path: str | os.PathLike, volume: CTVolume, names_path: str | os.PathLike | None = None) -> list[Roi]:
    """ROIs on the grid of volume from a labelmap file, a .seg.nrrd or a folder of binary mask files."""
    source = Path(path)
    table = read_label_names(names_path) if names_path is not None else {}
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_EXTENSIONS))
        if not files:
            raise InputError(f"{source}: folder holds no mask files ({', '.join(VOLUME_EXTENSIONS)})")
        rois = []
        for value, file in enumerate(files, 1):
            mask = labels_on_volume_grid(read_image(file), volume, str(file)) > 0
            rois.append(roi_from_mask(mask, value, table.get(value, _stem(file))))
        return rois
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    image = read_image(source)
    if image.GetNumberOfComponentsPerPixel() > 1 and _segment_names(image):
        return _layered_segments(image, volume, str(source))
    labels = labels_on_volume_grid(image, volume, str(source))
    names = table or _segment_names(image)
    if not names and set(np.unique(labels)) <= {0, 1}:
        names = {1: _stem(source)}
    return rois_from_labels(labels, names)
