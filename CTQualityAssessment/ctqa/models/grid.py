"""The physical grid of the learned models: the in-plane pixel sizes (mm) each model works at.

A network reads texture in pixels, so the same CT at another pixel size looks like another dose to it (the learned
quality map read a crop resampled to 0.52 mm pixels as much better quality than the same crop at 0.74 mm). Every
model card therefore states its grid as ``card["input"]["pixel_mm"] = [low, high]``: the pixel sizes it was
trained at. Slices with pixels inside that range run as they are; finer ones are resampled, anti-aliased, to the
nearest end of the range (averaging fine pixels lowers their noise as a coarser reconstruction would), the model runs
there, and its outputs are mapped back onto the input grid (``on_model_grid`` / ``to_input_grid``). Coarser slices
are not resampled up, which would smooth their noise: they run as they are, with a note. Field of view: the
convolutional models are invariant to it (they see the slice at its own size); the physics-feature score measures
only flat soft tissue (``feature_score``).

Resampling: a Gaussian of sigma (factor - 1) / 2 input pixels along each axis whose pixels grow by factor > 1
(scikit-image's anti-aliasing rule), then linear interpolation; back onto the input grid, linear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctqa.volume import CTVolume

#: Smallest in-plane size (voxels) a resampled slice keeps.
MIN_SIZE = 8


@dataclass(frozen=True)
class ModelGrid:
    """The pixel sizes (mm) a model was trained at: [low_mm, high_mm]."""

    low_mm: float
    high_mm: float

    @classmethod
    def from_card(cls, card: dict) -> ModelGrid | None:
        """The grid of a model card (``input.pixel_mm``: one size or [low, high]); None for a card without one."""
        value = card.get("input", {}).get("pixel_mm")
        if value is None:
            return None
        low, high = (value, value) if isinstance(value, (int, float)) else value
        return cls(float(low), float(high))

    def contains(self, pixel_mm: float) -> bool:
        """pixel_mm lies inside the grid (1 % slack)."""
        return self.low_mm * 0.99 <= pixel_mm <= self.high_mm * 1.01

    def target_mm(self, pixel_yx_mm: tuple[float, float]) -> float | None:
        """The square pixel size (mm) slices with pixels pixel_yx_mm (y, x) are resampled to: when an axis is finer
        than the grid, the larger pixel clipped into it; None otherwise. Slices coarser than the grid are never
        resampled up: interpolation would smooth their noise, where a finer reconstruction would show more of it
        (``coarser_note`` says so instead)."""
        if min(pixel_yx_mm) >= self.low_mm * 0.99:
            return None
        return float(np.clip(max(pixel_yx_mm), self.low_mm, self.high_mm))

    def coarser_note(self, model: str, pixel_yx_mm: tuple[float, float]) -> str | None:
        """The note for slices with pixels coarser than the grid (read as they are), None otherwise."""
        if max(pixel_yx_mm) <= self.high_mm * 1.01:
            return None
        return (
            f"{model} was trained at {self.describe()}: the {max(pixel_yx_mm):.2f} mm slices are read as they are "
            "(resampling them up would smooth their noise), outside its training domain"
        )

    def describe(self) -> str:
        if self.low_mm == self.high_mm:
            return f"{self.low_mm:g} mm pixels"
        return f"{self.low_mm:g}-{self.high_mm:g} mm pixels"

    def resampled_note(self, model: str, pixel_yx_mm: tuple[float, float], target_mm: float) -> str:
        """The summary note of a run whose slices were resampled onto this grid for model."""
        pixels = " x ".join(f"{pixel:.2f}" for pixel in sorted(set(pixel_yx_mm)))
        return (
            f"{model} works at {self.describe()}: the slices' {pixels} mm pixels were resampled to {target_mm:.2f} mm "
            "for it and its output mapped back"
        )


def resampled_shape(shape_yx: tuple[int, int], pixel_yx_mm: tuple[float, float], target_mm: float) -> tuple[int, int]:
    """(y, x) size of a slice of shape_yx with pixels pixel_yx_mm resampled to target_mm pixels (same extent)."""
    return tuple(max(MIN_SIZE, int(round(n * p / target_mm))) for n, p in zip(shape_yx, pixel_yx_mm))


def on_model_grid(hu: np.ndarray, pixel_yx_mm: tuple[float, float], target_mm: float) -> np.ndarray:
    """float32 (z, y', x'): every slice of hu (z, y, x) resampled from pixel_yx_mm to square target_mm pixels."""
    shape = resampled_shape(hu.shape[1:], pixel_yx_mm, target_mm)
    factors = [old / new for old, new in zip(hu.shape[1:], shape)]  # > 1: the pixels grow
    sigma = [0.0] + [max(0.0, (factor - 1.0) / 2.0) for factor in factors]
    source = np.asarray(hu, dtype=np.float32)
    if any(sigma):
        source = ndimage.gaussian_filter(source, sigma, mode="nearest")
    return ndimage.zoom(source, [1.0, *(1.0 / f for f in factors)], order=1, mode="nearest", grid_mode=True)


def to_input_grid(values: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """float32 (z, *shape_yx): slices of values (z, y', x') mapped back onto the input's (y, x) grid (linear)."""
    zoom = [1.0] + [new / old for new, old in zip(shape_yx, values.shape[1:])]
    return ndimage.zoom(np.asarray(values, np.float32), zoom, order=1, mode="nearest", grid_mode=True)


@dataclass(frozen=True)
class Placement:
    """Where a model runs on a volume's slices (``place``): hu float32 (z, y', x') it sees (the volume's own array
    when not resampled), target_mm the pixel size it was resampled to (None: not resampled), notes for the summary."""

    hu: np.ndarray
    target_mm: float | None
    notes: tuple[str, ...]

    def back(self, values: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
        """values (z, y', x') on the input's (y, x) grid: mapped back when the slices were resampled."""
        return values if self.target_mm is None else to_input_grid(values, shape_yx)


def _target(volume: CTVolume, card: dict, model: str) -> tuple[float | None, tuple[str, ...]]:
    """(pixel size the slices of volume are resampled to for the model of card, None: as they are; notes)."""
    grid = ModelGrid.from_card(card)
    if grid is None:
        return None, ()
    pixel_yx = (volume.spacing[1], volume.spacing[0])
    target = grid.target_mm(pixel_yx)
    if target is None:
        coarser = grid.coarser_note(model, pixel_yx)
        return None, (coarser,) if coarser else ()
    return target, (grid.resampled_note(model, pixel_yx, target),)


def place(volume: CTVolume, card: dict, model: str) -> Placement:
    """The slices of volume as the model of card (named model in the notes) must see them (module docstring)."""
    target, notes = _target(volume, card, model)
    if target is None:
        return Placement(volume.hu, None, notes)
    return Placement(on_model_grid(volume.hu, (volume.spacing[1], volume.spacing[0]), target), target, notes)


@dataclass(frozen=True)
class SlabPlacement:
    """``place`` slab by slab: the model's view of slices start..stop is made when asked for (``slab``), so nothing
    of the volume's size is held. Each slice is resampled on its own, so slabs equal the slices of ``place``."""

    volume: CTVolume
    target_mm: float | None
    notes: tuple[str, ...]

    def slab(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, y', x') HU of slices start..stop as the model sees them."""
        hu = self.volume.hu_slab(start, stop)
        if self.target_mm is None:
            return hu
        return on_model_grid(hu, (self.volume.spacing[1], self.volume.spacing[0]), self.target_mm)

    def back(self, values: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
        """values (z, y', x') on the input's (y, x) grid: mapped back when the slices were resampled."""
        return values if self.target_mm is None else to_input_grid(values, shape_yx)


def place_slabs(volume: CTVolume, card: dict, model: str) -> SlabPlacement:
    """``place`` of volume for the model of card, made slab by slab (SlabPlacement)."""
    return SlabPlacement(volume, *_target(volume, card, model))
