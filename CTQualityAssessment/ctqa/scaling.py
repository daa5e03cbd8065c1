"""How stored values become Hounsfield units (--scaling), and the check that what we call HU is plausible.

Scalings (HU = slope * value + intercept):
- ``hu``: the values are HU (DICOM rescale slope/intercept already applied by the reader). The default.
- ``hu+1024``: stored values HU + 1024 (DICOM without RescaleIntercept, many uint16 exports).
- ``ldctiqac2023``: LDCTIQAC2023 images, [0, 1] renderings of the abdominal window W350/L40: 0 = -135 HU,
  1 = 215 HU, values outside were clipped.
- ``mayo-npy``: (HU + 1024) / 4096, the Mayo/AAPM .npy convention.
- ``window:LOW,HIGH``: [0, 1] = LOW..HIGH HU, clipped outside (any other display-window rendering).

A clipped scaling records its HU range on the volume (CTVolume.clipped_hu): voxels at its ends are censored, and
the physics pass keeps its body threshold and noise windows away from them.

When no scaling is given, ``check_plausible_hu`` refuses data that cannot be HU and names the likely scaling;
a scaling given explicitly is trusted, apart from values outside its stored range.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ctqa.errors import InputError

#: Above this no CT scale reaches (extended-scale CT ends near 30710 HU).
MAX_HU = 32767.0
#: Fraction of voxels at both the minimum and the maximum above which an image counts as clipped by a window
#: (continuous CT values repeat their extremes on a handful of voxels; a window clips bone or air by the percent).
SATURATED_FRACTION = 0.001
#: Fraction of voxels strictly between the clip values that marks anatomy (not a two-level mask or phantom).
ANATOMY_FRACTION = 0.02
#: The rendering heuristics need a sample: smaller images pass to the checks that follow (slice size, noise).
MIN_HEURISTIC_VOXELS = 4096


@dataclass(frozen=True)
class Scaling:
    """A linear map from stored values to HU, the stored range it expects and the HU range it was clipped to."""

    name: str
    slope: float = 1.0
    intercept: float = 0.0
    stored_range: tuple[float, float] | None = None
    clipped_hu: tuple[float, float] | None = None

    def to_hu(self, values: np.ndarray, source: str) -> np.ndarray:
        """float32 HU from stored values; InputError when values leave the stored range."""
        values = np.asarray(values)
        if self.stored_range is not None:
            low, high = float(values.min()), float(values.max())
            if low < self.stored_range[0] - 1e-6 or high > self.stored_range[1] + 1e-6:
                raise InputError(
                    f"{source}: values span [{low:g}, {high:g}], outside the [{self.stored_range[0]:g}, "
                    f"{self.stored_range[1]:g}] that --scaling {self.name} expects"
                )
        if self.slope == 1.0 and self.intercept == 0.0:
            return values.astype(np.float32, copy=False)
        hu = values.astype(np.float32)
        hu *= np.float32(self.slope)
        hu += np.float32(self.intercept)
        return hu


HU = Scaling("hu")
NAMED = {
    "hu": HU,
    "hu+1024": Scaling("hu+1024", intercept=-1024.0),
    "ldctiqac2023": Scaling("ldctiqac2023", 350.0, -135.0, (0.0, 1.0), (-135.0, 215.0)),
    "mayo-npy": Scaling("mayo-npy", 4096.0, -1024.0, (0.0, math.inf)),  # not clipped: metal may exceed 1
}
CHOICES = (*NAMED, "window:LOW,HIGH")


def parse(text: str | None) -> Scaling:
    """The Scaling a --scaling value names (None = hu); InputError listing the choices otherwise."""
    if text is None:
        return HU
    key = text.strip().lower()
    if key in NAMED:
        return NAMED[key]
    match = re.fullmatch(r"window:\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)", key)
    if match:
        try:
            low, high = float(match.group(1)), float(match.group(2))
        except ValueError:
            low = high = math.nan
        if math.isfinite(low) and math.isfinite(high) and low < high:
            return Scaling(f"window:{low:g},{high:g}", high - low, low, (0.0, 1.0), (low, high))
    raise InputError(f"--scaling {text}: unknown scaling; choose {', '.join(CHOICES)}")


def check_stored_type(dtype: np.dtype, source: str) -> None:
    """Refuse 8-bit images: a display rendering (screenshot, windowed export), never HU (see rendering_scaling for
    the one exception: an unsigned 8-bit rendering of a display window the user names)."""
    if np.dtype(dtype).itemsize == 1:
        raise InputError(
            f"{source}: 8-bit image ({np.dtype(dtype)}): a display rendering, not CT values in HU (if it renders a "
            "known window, name it: --scaling window:LOW,HIGH)"
        )


def rendering_scaling(dtype: np.dtype, scaling: Scaling, explicit: bool) -> tuple[float, str | None]:
    """(divisor of the stored values, note) for an unsigned 8-bit rendering read with an explicit window scaling
    (window:LOW,HIGH or ldctiqac2023): grey g is g / 255 of the window, so g / 255 is the stored value the scaling
    expects; the note gives the quantisation step. (1.0, None) for anything else."""
    dtype = np.dtype(dtype)
    if not (explicit and dtype == np.uint8 and scaling.clipped_hu is not None and scaling.stored_range == (0.0, 1.0)):
        return 1.0, None
    step = (scaling.clipped_hu[1] - scaling.clipped_hu[0]) / 255.0
    note = (
        f"8-bit rendering of the window {scaling.clipped_hu[0]:g}..{scaling.clipped_hu[1]:g} HU: grey steps of "
        f"{step:.2f} HU; noise below about {step / math.sqrt(12):.1f} HU (the step's own rounding noise) is not "
        "measurable, and values outside the window are censored"
    )
    return 255.0, note


#: Values compared at a time by _count_equal.
COUNT_CHUNK = 1 << 24


def _count_equal(values: np.ndarray, value: float) -> int:
    """Number of elements of values equal to value, a chunk at a time (no volume-sized mask)."""
    flat = values.reshape(-1)
    return sum(int(np.count_nonzero(flat[i : i + COUNT_CHUNK] == value)) for i in range(0, flat.size, COUNT_CHUNK))


def check_plausible_hu(hu: np.ndarray, source: str) -> None:
    """Refuse values that cannot be a CT in HU, naming the scaling they probably need.

    Normalised data (all within [-1, 1] or a span of at most 2), no air or fat (minimum at or above -50 HU with
    bone-like maxima: stored values without the rescale intercept), or values clipped at both ends (a display
    window). Cropped HU volumes inside the body pass as long as they hold fat or air.
    """
    low, high = float(hu.min()), float(hu.max())
    if high - low <= 2.0:
        raise InputError(
            f"{source}: values span [{low:g}, {high:g}]: normalised, not HU; pass --scaling ldctiqac2023 "
            "(W350/L40 renderings), mayo-npy ((HU+1024)/4096) or window:LOW,HIGH"
        )
    if high > MAX_HU:
        raise InputError(
            f"{source}: values up to {high:g}, beyond any HU scale (extended scales end near 30000): a 16-bit "
            "rendering or raw detector values, not HU"
        )
    if low >= -50.0 and high >= 500.0:
        raise InputError(
            f"{source}: values span [{low:g}, {high:g}] with no air or fat: not HU; stored values without the "
            "rescale intercept? pass --scaling hu+1024 (or --scaling hu if these are HU)"
        )
    if low >= 0.0 and high <= 255.0 and hu.size >= MIN_HEURISTIC_VOXELS and not np.any(hu % 1):
        raise InputError(
            f"{source}: whole values within [{low:g}, {high:g}]: 8-bit display values stored in a wider type, not HU "
            "(or pass --scaling hu to use them as HU)"
        )
    if high - low < 2000.0 and hu.size >= MIN_HEURISTIC_VOXELS:
        at_low = _count_equal(hu, low) / hu.size
        at_high = _count_equal(hu, high) / hu.size
        between = 1.0 - at_low - at_high  # a windowed rendering has anatomy between its clip values
        if min(at_low, at_high) > SATURATED_FRACTION and between > ANATOMY_FRACTION:
            raise InputError(
                f"{source}: values clipped to [{low:g}, {high:g}] ({100 * at_low:.1f} % and {100 * at_high:.1f} % of "
                "voxels at the ends): a display-windowed export, not full-range HU (or pass --scaling hu to use it)"
            )
