"""The volume type every part of the project exchanges: a CT in Hounsfield units with its geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Air in HU.
AIR_HU = -1024.0
#: Values below this are padding outside the reconstructed field of view (-2048, -3000, or -3024 on GE scanners): the
#: readers set them to AIR_HU before any measure or model sees them (io.read_volume). It lies well below air's own
#: noise (real air reads about -1000 +- a few tens of HU), which is kept as it is.
PADDING_BELOW_HU = -1500.0
#: The types CTVolume.hu keeps as they are (anything else becomes float32).
HU_DTYPES = (np.dtype(np.float32), np.dtype(np.int16))


@dataclass(frozen=True)
class Acquisition:
    """Acquisition tags of a DICOM series (first slice); None where a tag is missing.

    model_name: ManufacturerModelName (the scanner); protocol: ProtocolName, else SeriesDescription.
    """

    manufacturer: str | None = None
    kernel: str | None = None
    slice_thickness_mm: float | None = None
    ctdivol_mgy: float | None = None
    exposure_mas: float | None = None
    tube_current_ma: float | None = None
    kvp: float | None = None
    model_name: str | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class Grid:
    """The geometry of a (z, y, x) voxel array without its voxels (as CTVolume has it): shape, and spacing,
    origin, direction in ITK order, mm, LPS."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in HU with physical geometry.

    hu: (z, y, x) array in Hounsfield units (rescale slope/intercept already applied): float32, or int16 when a
        reader kept whole HU in the type they were stored in (``io.read_volume(compact=True)``: half the memory).
        Code that computes with it takes float32 slabs (``hu_slab``) instead of the whole array.
    spacing, origin: per axis in ITK order (x, y, z), mm, LPS physical space.
    direction: 3x3 direction cosines, row-major 9-tuple in ITK order (columns are the x, y, z axes).
    source: where the volume came from, for messages.
    scaling: how stored values became HU ("hu" when they were HU already; see scaling.py).
    clipped_hu: (low, high) HU the values were clipped to by a display window (voxels at the ends are censored),
        None for full-range CT.
    acquisition: DICOM acquisition tags (kernel, thickness, CTDIvol, mAs...), None for other formats.
    notes: one-line remarks about the input a user should see (e.g. a tag that was missing), in reading order.
    pixel_size_assumed: spacing is a placeholder, not read from the file (TIFF/.npy/PNG/JPEG/BMP without --pixel-mm).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    source: str = "<memory>"
    scaling: str = "hu"
    clipped_hu: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    acquisition: Acquisition | None = None
    pixel_size_assumed: bool = False

    def __post_init__(self):
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be (z, y, x), got shape {self.hu.shape}")
        if self.hu.dtype not in HU_DTYPES:
            object.__setattr__(self, "hu", self.hu.astype(np.float32))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in self.direction))
        object.__setattr__(self, "notes", tuple(self.notes))

    def hu_slab(self, start: int, stop: int) -> np.ndarray:
        """float32 HU of slices start..stop: a view of hu when it is float32, else a converted copy."""
        return np.asarray(self.hu[start:stop], dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return self.hu.shape

    def slice_positions_mm(self) -> np.ndarray:
        """Physical z (mm, LPS) of each slice centre, shape (z,)."""
        direction = np.asarray(self.direction).reshape(3, 3)
        k = np.arange(self.shape[0])
        return self.origin[2] + direction[2, 2] * self.spacing[2] * k
