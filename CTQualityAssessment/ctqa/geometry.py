"""Physical geometry of image grids: same-grid tests, overlap, and resampling onto a CT volume's grid.

Used for everything that must line up with the assessed volume voxel for voxel: labelmaps (nearest neighbour) and
reference volumes (linear), both resampled by physical position (LPS, mm), never matched by array shape alone.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ctqa.errors import InputError
from ctqa.volume import CTVolume, Grid


def physical_bounds(size, spacing, origin, direction) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (mm) of an image grid (size and spacing in x, y, z), voxel edges included."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    corners = np.array(
        [[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5) for k in (-0.5, size[2] - 0.5)]
    )
    points = np.asarray(origin) + (corners * np.asarray(spacing)) @ direction.T
    return points.min(axis=0), points.max(axis=0)


def _with_geometry(image: sitk.Image, grid: CTVolume | Grid) -> sitk.Image:
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def volume_grid(volume: CTVolume) -> sitk.Image:
    """An empty SimpleITK image on the grid of volume (the reference image for resampling)."""
    return _with_geometry(sitk.Image(volume.shape[::-1], sitk.sitkUInt8), volume)


def image_on_grid(array: np.ndarray, grid: CTVolume | Grid) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array (copied) with the geometry of grid."""
    return _with_geometry(sitk.GetImageFromArray(array), grid)


def _grid_matches(size, spacing, origin, direction, volume: CTVolume) -> bool:
    return (
        tuple(size) == volume.shape[::-1]
        and np.allclose(spacing, volume.spacing, atol=1e-4)
        and np.allclose(origin, volume.origin, atol=1e-3)
        and np.allclose(direction, volume.direction, atol=1e-5)
    )


def same_grid(image: sitk.Image, volume: CTVolume) -> bool:
    """True when image has the size, spacing, origin and direction of volume (to 1e-4 mm / 1e-3 mm / 1e-5)."""
    return _grid_matches(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), volume)


def resample_onto(image: sitk.Image, volume: CTVolume, source: str, what: str, linear: bool) -> sitk.Image:
    """image resampled by physical position onto the grid of volume (unchanged when already on it).

    linear: linear interpolation with NaN outside image (float32), else nearest neighbour with 0 outside.
    InputError when the two do not overlap in space.
    """
    if same_grid(image, volume):
        return image
    low_a, high_a = physical_bounds(volume.shape[::-1], volume.spacing, volume.origin, volume.direction)
    low_b, high_b = physical_bounds(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    if np.any(np.minimum(high_a, high_b) <= np.maximum(low_a, low_b)):
        raise InputError(f"{source}: {what} does not overlap the volume {volume.source}")
    if linear:
        image = sitk.Cast(image, sitk.sitkFloat32)
        return sitk.Resample(image, volume_grid(volume), sitk.Transform(), sitk.sitkLinear, np.nan, sitk.sitkFloat32)
    return sitk.Resample(image, volume_grid(volume), sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def reference_on_grid(reference: CTVolume, volume: CTVolume) -> np.ndarray:
    """float32 (z, y, x) HU of reference on the grid of volume (linear, by physical position); NaN where it has none.

    InputError when they do not overlap. Flipped or shifted storage of the same anatomy lines up voxel for voxel.
    """
    geometry = (reference.shape[::-1], reference.spacing, reference.origin, reference.direction)
    if _grid_matches(*geometry, volume):
        return reference.hu
    image = image_on_grid(reference.hu, reference)
    resampled = resample_onto(image, volume, reference.source, "reference", linear=True)
    return sitk.GetArrayFromImage(resampled)
