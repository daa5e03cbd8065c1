"""The lung: its quality window (W1500/L-600) and a lung mask from HU and connectivity (numpy/scipy only).

Lung mask (``lung_mask``), on one slice (y, x) or a volume (z, y, x):
1. Body: voxels above BODY_HU, the largest connected component, in-plane holes filled (lungs, airways and bowel
   gas are holes of the body).
2. Candidates: air-like voxels (below AIR_LIKE_HU) inside the body that are not connected, within their slice, to
   the air around the patient (in-plane connectivity, so an airway that leaves the volume at its top or bottom
   slice does not make the lungs "outside").
3. Components of the candidates (3D, 6-connected) are kept when they look like lung: the largest cross-section of
   at least MIN_LUNG_AREA_MM2 and a median above LUNG_MEDIAN_MIN_HU (parenchyma with its vessels is about -850 HU,
   -600 with ground glass; bowel and stomach gas, and the trachea, read below -900 HU); at most the
   MAX_LUNG_COMPONENTS largest.
4. Vessels and small nodules inside the lung (in-plane holes smaller than MAX_HOLE_MM2) are filled, and the rim is
   closed by CLOSING_MM in-plane, inside the body.

Limits: no anatomy prior, so a large gas pocket with lung-like density (stool mixed with gas) can pass, and dense
consolidation (above AIR_LIKE_HU) is left out unless it is a small hole.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ctqa.physics.components import SlabComponents
from ctqa.physics.ssim import SSIM_WINDOW_HU
from ctqa.slabs import map_slabs_in_order

#: HU window of lung-window quality: the lung display window, width 1500, level -600 (DESIGN.md).
LUNG_WINDOW_HU = (-1350.0, 150.0)
#: The windows of the quality maps, by name, in the order of a learned model's map channels.
QUALITY_WINDOWS_HU = {"soft_tissue": SSIM_WINDOW_HU, "lung": LUNG_WINDOW_HU}

BODY_HU = -500.0
AIR_LIKE_HU = -400.0
LUNG_MEDIAN_MIN_HU = -900.0
MIN_LUNG_AREA_MM2 = 500.0
MAX_LUNG_COMPONENTS = 2
MAX_HOLE_MM2 = 300.0
CLOSING_MM = 3.0

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def _as_volume(hu: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu)
    if hu.ndim == 2:
        return hu[None]
    if hu.ndim != 3:
        raise ValueError(f"hu must be (y, x) or (z, y, x), got shape {hu.shape}")
    return hu


def _border_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of an in-plane labelling (z, y, x) that touch the border of their slice."""
    edges = [labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]
    return np.unique(np.concatenate(edges))


def _fill_holes_in_plane(mask: np.ndarray, max_area_px: float | None = None) -> np.ndarray:
    """mask (z, y, x) with its in-plane holes filled (only holes of at most max_area_px pixels when given)."""
    background, count = ndimage.label(~mask, structure=_IN_PLANE)
    if count == 0:
        return mask
    fill = np.ones(count + 1, dtype=bool)
    fill[_border_labels(background)] = False
    fill[0] = False
    if max_area_px is not None:
        fill &= np.bincount(background.ravel(), minlength=count + 1) <= max_area_px
    return mask | fill[background]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """bool mask of the body (same shape as hu, (y, x) or (z, y, x) HU): the largest component above BODY_HU,
    in-plane holes (lungs, airways, gas) filled."""
    volume = _as_volume(hu)
    dense = volume > BODY_HU
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense.reshape(np.shape(hu))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return _fill_holes_in_plane(labels == sizes.argmax()).reshape(np.shape(hu))


#: Slices of a slab in the lung mask's passes (two slabs are computed at once, in the slab threads).
LUNG_SLAB_SLICES = 16


def _candidates(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Step 2 on a slab (z, y, x): air-like voxels inside the body not connected, within their slice, to the air
    around the patient."""
    air = hu < AIR_LIKE_HU
    air_labels, count = ndimage.label(air, structure=_IN_PLANE)
    excluded = np.zeros(count + 1, dtype=bool)  # by air label: touches the air around the patient (0: not air)
    excluded[air_labels[air & ~inside]] = True
    excluded[0] = True
    return inside & ~excluded[air_labels]


def _median_of_members(hu: np.ndarray, slab_labels, labels: list[int], component: np.ndarray) -> dict[int, float]:
    """np.median of the HU of each component in labels (one more pass over the slabs): from exact value counts for
    integer HU, else from the gathered values."""
    wanted = np.zeros(int(component.max()) + 1, dtype=bool)
    wanted[labels] = True
    integer = np.asarray(hu[:0]).dtype in (np.int16, np.int8, np.uint8)
    counts = {label: np.zeros(1 << 16, dtype=np.int64) for label in labels} if integer else None
    values: dict[int, list[np.ndarray]] = {label: [] for label in labels}
    for start, ids in slab_labels():
        members = component[ids]
        if not wanted[members].any():
            continue
        slab = hu[start : start + len(ids)]
        for label in labels:
            selected = slab[members == label]
            if not selected.size:
                continue
            if integer:
                counts[label] += np.bincount(selected.astype(np.int64).ravel() + 32768, minlength=1 << 16)
            else:
                values[label].append(selected)
    medians = {}
    for label in labels:
        if integer:
            cumulative = np.cumsum(counts[label])
            total = int(cumulative[-1])
            upper = int(np.searchsorted(cumulative, total // 2 + 1)) - 32768  # the element at index total // 2
            lower = int(np.searchsorted(cumulative, (total - 1) // 2 + 1)) - 32768  # at (total - 1) // 2
            medians[label] = (lower + upper) / 2.0
        else:
            medians[label] = float(np.median(np.concatenate(values[label])))
    return medians


def _lung_slabs(hu, pixel_mm: float, inside, write) -> None:
    """The lung mask (module docstring) of hu (z, y, x) HU with the body mask inside (z, y, x), both indexable by
    slab (arrays or staging.SlabMap), passed to write(start, lung slab) slab by slab: three passes over the slabs
    (the first and the last computed in the slab threads), holding only bit-packed candidates and per-component
    counts besides a few slabs (the result equals one 3D labelling of the whole volume)."""
    from ctqa.staging import PackedMask

    depth = hu.shape[0]
    candidates = PackedMask(hu.shape)
    components = SlabComponents()

    def find(start: int, stop: int) -> np.ndarray:
        return _candidates(np.asarray(hu[start:stop]), np.asarray(inside[start:stop], dtype=bool))

    for start, found in map_slabs_in_order(find, depth, LUNG_SLAB_SLICES):  # labelled here: one label array at a time
        candidates.write(start, found)
        components.add(*ndimage.label(found))
    component, sizes, areas = components.finish()

    def slab_ids(start: int, stop: int) -> np.ndarray:
        """Provisional ids (z, y, x) of the slab from start, labelled again as in the first pass."""
        labels, _ = ndimage.label(candidates.read(start, stop))
        return np.where(labels > 0, labels + components.offsets[start // LUNG_SLAB_SLICES], 0)

    def slab_labels():
        """(start, provisional ids) of each slab, in slab order, one slab at a time."""
        for start in range(0, depth, LUNG_SLAB_SLICES):
            yield start, slab_ids(start, min(start + LUNG_SLAB_SLICES, depth))

    count = len(sizes) - 1
    kept = []
    if count > 0:
        pixel_area = float(pixel_mm) ** 2
        order = np.argsort(-sizes[1:]) + 1
        large = []
        for label in order:  # sorted by size: the first too small a cross-section ends the list
            if areas[label] * pixel_area < MIN_LUNG_AREA_MM2:
                break
            large.append(int(label))
        medians = _median_of_members(hu, slab_labels, large, component) if large else {}
        for label in large:
            if len(kept) == MAX_LUNG_COMPONENTS:
                break
            if medians[label] > LUNG_MEDIAN_MIN_HU:
                kept.append(label)
    if not kept:
        for start in range(0, depth, LUNG_SLAB_SLICES):
            write(start, np.zeros((min(start + LUNG_SLAB_SLICES, depth) - start, *hu.shape[1:]), dtype=bool))
        return
    is_kept = np.zeros(count + 1, dtype=bool)
    is_kept[kept] = True
    kept_ids = is_kept[component]  # by provisional id
    radius = max(1, int(round(CLOSING_MM / pixel_mm)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))

    def lung_slab(start: int, stop: int) -> np.ndarray:
        """The lung mask (bool (z, y, x)) of slices start..stop: kept components, closed and filled in-plane."""
        labels, slab_count = ndimage.label(candidates.read(start, stop))  # as in the first pass
        offset = components.offsets[start // LUNG_SLAB_SLICES]
        kept_labels = kept_ids[offset : offset + slab_count + 1].copy()  # by slab label: ids are offset + label
        kept_labels[0] = False
        lung = kept_labels[labels].view(np.uint8)
        for plane in lung:  # in-plane closing, slice by slice (OpenCV: several times faster than scipy.ndimage)
            if plane.any():
                cv2.morphologyEx(plane, cv2.MORPH_CLOSE, disk, dst=plane)
        body = np.asarray(inside[start:stop], dtype=bool)
        return _fill_holes_in_plane(lung.view(bool) & body, MAX_HOLE_MM2 / (float(pixel_mm) ** 2))

    for start, lung in map_slabs_in_order(lung_slab, depth, LUNG_SLAB_SLICES):
        write(start, lung)


def lung_mask(hu: np.ndarray, pixel_mm: float, body: np.ndarray | None = None) -> np.ndarray:
    """bool lung mask (same shape as hu, (y, x) or (z, y, x) HU) with in-plane pixels of pixel_mm (module
    docstring); body: a body mask to use instead of ``body_mask(hu)``. Empty where no lung is seen."""
    volume = _as_volume(hu)
    inside = _as_volume(body_mask(hu) if body is None else np.asarray(body, dtype=bool))
    lung = np.zeros(volume.shape, dtype=bool)

    def write(start: int, values: np.ndarray) -> None:
        lung[start : start + len(values)] = values

    _lung_slabs(volume, pixel_mm, inside, write)
    return lung.reshape(np.shape(hu))


def packed_lung_mask(volume_hu, pixel_mm: float, body):
    """The lung mask of a (z, y, x) volume (``lung_mask``) as a bit-packed staging.PackedMask, from hu and a body
    mask that may be staging.SlabMaps (read slab by slab: nothing of the volume's size is held)."""
    from ctqa.staging import PackedMask

    lung = PackedMask(volume_hu.shape)
    _lung_slabs(volume_hu, pixel_mm, body, lung.write)
    return lung
