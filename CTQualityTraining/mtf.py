"""In-plane resolution of a reconstruction: 50 % MTF by the edge method, from the circular edge of a disk phantom
(``disk_mtf50``) or from the body/air outline of a real patient slice (``edge_mtf50``).

Both bin the image by signed distance to the edge (oversampled edge-spread function, ESF_BIN_PX), differentiate to
the line-spread function, Hann-window it and Fourier transform (``esf_mtf50``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Radial bin width of the oversampled edge-spread function, in pixels.
ESF_BIN_PX = 0.1
#: The edge-spread function spans this many pixels on either side of the edge.
ESF_HALF_WIDTH_PX = 8.0
#: Body outline of a patient slice: where the Gaussian-smoothed (OUTLINE_SIGMA_PX) edge source crosses OUTLINE_HU.
OUTLINE_HU = -500.0
OUTLINE_SIGMA_PX = 1.0
#: Supersampling of the grid the outline is found on (each pixel's nearest outline sample is looked up there).
OUTLINE_SUPERSAMPLING = 4
#: Outline stretches kept: the smoothed source is below AIR_HU at AIR_CHECK_PX outside (no table, blanket or arm
#: there) and above TISSUE_HU at TISSUE_CHECK_PX inside.
AIR_HU = -900.0
TISSUE_HU = -300.0
AIR_CHECK_PX = (3.0, 6.0, 9.0)
TISSUE_CHECK_PX = 6.0
#: Fewer kept pixels within ESF_HALF_WIDTH_PX of the outline: no MTF50 (ValueError).
MIN_EDGE_PIXELS = 500


def disk_phantom(size: int, radius_px: float, inside_hu: float = 1000.0, body_hu: float = 0.0) -> np.ndarray:
    """float32 (size, size) HU: a water body filling 90 % of the field with a disk of radius_px, edge anti-aliased
    (4x4 supersampling), centred a quarter pixel off the grid so that the edge samples all sub-pixel phases."""
    sub = (np.arange(size * 4) + 0.5) / 4.0 - 0.5
    centre = size / 2.0 + 0.25
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    r = np.hypot(yy - centre, xx - centre)
    fine = np.where(r <= 0.45 * size, body_hu, -1000.0) + np.where(r <= radius_px, inside_hu - body_hu, 0.0)
    return fine.reshape(size, 4, size, 4).mean(axis=(1, 3)).astype(np.float32)


def esf_mtf50(distance_px: np.ndarray, values: np.ndarray, pixel_mm: float) -> float:
    """Spatial frequency (lp/mm) where the MTF falls to 0.5, from samples of an edge: their signed distance to it
    (pixels, either sign convention) and their values (HU), both 1-D.

    The samples within ESF_HALF_WIDTH_PX of the edge are averaged in bins of ESF_BIN_PX (the oversampled
    edge-spread function; empty bins interpolated), differentiated to the line-spread function, Hann-windowed and
    Fourier transformed; MTF50 by linear interpolation.
    """
    edges = np.arange(-ESF_HALF_WIDTH_PX, ESF_HALF_WIDTH_PX + ESF_BIN_PX / 2, ESF_BIN_PX)
    inside = np.abs(distance_px) < ESF_HALF_WIDTH_PX
    which = np.digitize(distance_px[inside], edges) - 1
    counts = np.bincount(which, minlength=edges.size - 1)[: edges.size - 1]
    sums = np.bincount(which, weights=values[inside], minlength=edges.size - 1)[: edges.size - 1]
    filled = counts > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    esf = np.interp(centres, centres[filled], sums[filled] / counts[filled])
    lsf = -np.gradient(esf) * np.hanning(esf.size)
    mtf = np.abs(np.fft.rfft(lsf))
    mtf /= mtf[0]
    freq = np.fft.rfftfreq(lsf.size, d=ESF_BIN_PX * pixel_mm)  # lp/mm
    below = int(np.argmax(mtf < 0.5))
    return float(np.interp(0.5, [mtf[below], mtf[below - 1]], [freq[below], freq[below - 1]]))


def disk_mtf50(image: np.ndarray, radius_px: float, pixel_mm: float) -> float:
    """MTF50 (lp/mm, ``esf_mtf50``) from the disk edge of disk_phantom(image.shape[0], radius_px, ...)."""
    size = image.shape[0]
    centre = size / 2.0 + 0.25
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - centre, xx - centre) - radius_px
    return esf_mtf50(distance.ravel(), image.ravel(), pixel_mm)


def _outline_mask(smoothed: np.ndarray, factor: int) -> np.ndarray:
    """bool (y * factor, x * factor): the body on a grid supersampled by factor (fine sample k of pixel i at
    i + k / factor): the largest component above OUTLINE_HU of the bilinearly interpolated smoothed source,
    holes filled."""
    height, width = smoothed.shape
    fy = np.arange(height * factor) / factor
    fx = np.arange(width * factor) / factor
    fine = np.empty((fy.size, fx.size), dtype=bool)
    for start in range(0, fy.size, 256):  # a few rows of coordinates at a time
        rows = fy[start : start + 256]
        coords = np.meshgrid(rows, fx, indexing="ij")
        fine[start : start + rows.size] = ndimage.map_coordinates(smoothed, coords, order=1, mode="nearest") > (
            OUTLINE_HU
        )
    labels, count = ndimage.label(fine)
    if count == 0:
        raise ValueError(f"no body outline: the edge source is nowhere above {OUTLINE_HU:g} HU")
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest)


def edge_mtf50(image: np.ndarray, edge_source: np.ndarray, pixel_mm: float) -> float:
    """MTF50 (lp/mm) of image (y, x) HU at the body/air outline of a patient slice, found on edge_source (y, x) HU
    (the full-dose image of the same slice; image itself for a phantom).

    Outline: the OUTLINE_HU crossing of edge_source smoothed by OUTLINE_SIGMA_PX (largest component, holes
    filled), found on a grid supersampled OUTLINE_SUPERSAMPLING times. Each pixel's signed distance to it (pixels,
    positive outside) is its distance to the outline linearised at q, the nearest fine sample on the other side
    (Euclidean distance transform): sub-pixel, free of the staircase of the fine grid. Only pixels whose nearest
    outline point has air outside (smoothed source < AIR_HU at AIR_CHECK_PX along the outward normal: no table,
    blanket or arm) and tissue inside (> TISSUE_HU at TISSUE_CHECK_PX) are binned (``esf_mtf50``).
    ValueError when fewer than MIN_EDGE_PIXELS pixels near the outline qualify.

    On a nonlinear denoiser this is the resolution of a 1000 HU edge, which such filters keep best: it does not
    speak for low-contrast detail.
    """
    if image.shape != edge_source.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and edge_source {edge_source.shape} must be the same (y, x) shape")
    factor = OUTLINE_SUPERSAMPLING
    smoothed = ndimage.gaussian_filter(np.asarray(edge_source, dtype=np.float64), OUTLINE_SIGMA_PX)
    body = _outline_mask(smoothed, factor)
    # q: for each pixel centre, the nearest fine sample on the other side of the outline (pixel coordinates)
    centres = (slice(None, None, factor), slice(None, None, factor))
    from_outside = ndimage.distance_transform_edt(~body, return_distances=False, return_indices=True)
    from_inside = ndimage.distance_transform_edt(body, return_distances=False, return_indices=True)
    q = np.where(body[centres], from_inside[(slice(None),) + centres], from_outside[(slice(None),) + centres])
    pixels = np.indices(smoothed.shape).reshape(2, -1)
    q = q.reshape(2, -1) / factor
    del from_outside, from_inside
    near = np.hypot(*(pixels - q)) < ESF_HALF_WIDTH_PX + 1.0
    pixels, q = pixels[:, near], q[:, near]
    # signed distance (positive outside) to the outline linearised at q: the source's level set through
    # f(q) + grad f(q) . (p - q) = OUTLINE_HU, with the outward normal n = -grad f / |grad f|
    level = ndimage.map_coordinates(smoothed, q, order=1)
    gradient = np.stack([ndimage.map_coordinates(g, q, order=1) for g in np.gradient(smoothed)])
    slope = np.maximum(np.hypot(*gradient), 1e-6)  # HU per pixel
    normal = -gradient / slope
    distance = (OUTLINE_HU - level) / slope + np.sum((pixels - q) * normal, axis=0)
    foot = pixels - distance * normal  # each pixel's nearest point on the outline
    keep = np.abs(distance) < ESF_HALF_WIDTH_PX
    keep &= ndimage.map_coordinates(smoothed, foot - TISSUE_CHECK_PX * normal, order=1, mode="nearest") > TISSUE_HU
    for step in AIR_CHECK_PX:
        keep &= ndimage.map_coordinates(smoothed, foot + step * normal, order=1, mode="nearest") < AIR_HU
    if np.count_nonzero(keep) < MIN_EDGE_PIXELS:
        raise ValueError(
            f"only {np.count_nonzero(keep)} pixels near a body/air outline with air outside (need {MIN_EDGE_PIXELS})"
        )
    values = np.asarray(image, dtype=np.float64).ravel()[near][keep]
    return esf_mtf50(distance[keep], values, pixel_mm)
