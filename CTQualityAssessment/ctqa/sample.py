"""A bundled demo sample: a synthetic abdominal CT phantom with a known low-dose noise insertion.

The phantom is a few ellipsoids (body with a subcutaneous fat ring, liver, spleen, kidneys, aorta, vertebral body,
a bowel-gas pocket) in HU, blurred slightly for partial volume. CT-like correlated noise (white Gaussian noise
filtered per slice with a ramp times a Gaussian apodisation, unit SD) is added at full dose to make the reference;
the low-dose CT adds an independent realisation with SD sd_full * sqrt(1/d - 1) per slice, so its total noise SD is
sd_full / sqrt(d), with the dose fraction d going linearly from 1.0 at the first slice to 0.1 at the last.
Everything is made here from a seed; nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctqa.errors import InputError
from ctqa.io import write_map
from ctqa.volume import CTVolume

SHAPE = (24, 256, 256)  # (z, y, x) voxels
SPACING = (1.5, 1.5, 2.5)  # (x, y, z) mm
#: (x, y, z) mm: the volume is centred at (0, 0, 0) with identity direction (LPS: x to patient left, y posterior).
ORIGIN = tuple(-(n - 1) * s / 2 for n, s in zip(SHAPE[::-1], SPACING))
FULL_DOSE_NOISE_SD = 10.0  # HU, noise SD of the reference (dose fraction 1)
DOSE_FRACTION_RANGE = (1.0, 0.1)  # dose fraction of the first and last slice of the low-dose CT
NOISE_F0 = 0.25  # cycles/voxel, apodisation of the noise power spectrum
PARTIAL_VOLUME_SIGMA = 0.7  # voxels, Gaussian blur of the phantom

LABEL_NAMES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "aorta", 6: "vertebra"}
LABEL_COLOURS = {  # RGB for the Slicer colour table
    1: (221, 130, 101),
    2: (157, 108, 162),
    3: (185, 102, 83),
    4: (111, 184, 210),
    5: (220, 20, 60),
    6: (241, 214, 145),
}

# Ellipsoids painted in this order (later ones overwrite earlier ones): HU, label (0 = none),
# centre (x, y, z) mm and semi-axes (x, y, z) mm. Large z semi-axes give slowly varying cross-sections.
_AIR_HU = -1000.0
_ELLIPSOIDS = (
    (-100.0, 0, (0.0, 0.0, 0.0), (165.0, 120.0, 600.0)),  # body outline, subcutaneous fat
    (40.0, 0, (0.0, 0.0, 0.0), (150.0, 105.0, 585.0)),  # soft tissue inside the 15 mm fat ring
    (60.0, 1, (-75.0, -5.0, 15.0), (65.0, 65.0, 90.0)),  # liver, patient right (low x)
    (50.0, 2, (105.0, 20.0, 20.0), (28.0, 45.0, 60.0)),  # spleen, patient left
    (30.0, 3, (-60.0, 62.0, -10.0), (22.0, 32.0, 50.0)),  # right kidney, posterior
    (30.0, 4, (60.0, 62.0, -5.0), (22.0, 32.0, 50.0)),  # left kidney, posterior
    (150.0, 5, (12.0, 25.0, 0.0), (11.0, 11.0, 400.0)),  # aorta with contrast, anterior of the spine
    (900.0, 6, (0.0, 65.0, 0.0), (22.0, 18.0, 300.0)),  # vertebral body, cortical rim
    (400.0, 6, (0.0, 65.0, 0.0), (19.0, 15.0, 297.0)),  # vertebral body, cancellous bone
    (-900.0, 0, (55.0, -40.0, -5.0), (12.0, 9.0, 20.0)),  # bowel gas pocket
)


@dataclass(frozen=True)
class Sample:
    """The demo sample.

    low_dose: the CT to assess (HU, integer values), noise SD FULL_DOSE_NOISE_SD / sqrt(dose_fraction) per slice.
    reference: the same phantom at full dose (the SSIM reference), noise SD FULL_DOSE_NOISE_SD.
    labels: uint8 (z, y, x) organ labelmap on the same grid, values as in label_names (0 = none).
    label_names: label value -> organ name.
    dose_fraction: (z,) dose fraction of each slice of low_dose.
    """

    low_dose: CTVolume
    reference: CTVolume
    labels: np.ndarray
    label_names: dict[int, str]
    dose_fraction: np.ndarray


def _grid_mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm, shaped to broadcast to (z, y, x): x (1, 1, nx), y (1, ny, 1), z (nz, 1, 1)."""
    nz, ny, nx = SHAPE
    x = ORIGIN[0] + SPACING[0] * np.arange(nx)
    y = ORIGIN[1] + SPACING[1] * np.arange(ny)
    z = ORIGIN[2] + SPACING[2] * np.arange(nz)
    return x[None, None, :], y[None, :, None], z[:, None, None]


def make_phantom() -> tuple[np.ndarray, np.ndarray]:
    """The noise-free phantom: float32 HU (z, y, x) blurred for partial volume, and uint8 labels (z, y, x)."""
    x, y, z = _grid_mm()
    hu = np.full(SHAPE, _AIR_HU, dtype=np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for value, label, (cx, cy, cz), (ax, ay, az) in _ELLIPSOIDS:
        inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0
        hu[inside] = value
        labels[inside] = label
    return ndimage.gaussian_filter(hu, PARTIAL_VOLUME_SIGMA), labels


def _noise_filter(ny: int, nx: int) -> np.ndarray:
    """rfft2-shaped (ny, nx // 2 + 1) filter |f| exp(-(|f| / f0)^2), scaled so filtered unit white noise has unit SD."""
    fy = np.fft.fftfreq(ny)[:, None]
    radial = np.hypot(fy, np.fft.fftfreq(nx)[None, :])
    full = radial * np.exp(-((radial / NOISE_F0) ** 2))
    # irfft2(rfft2(w) * H) has variance mean(H^2) over the full frequency grid for unit white noise w
    scale = 1.0 / np.sqrt(np.mean(full**2))
    radial = np.hypot(fy, np.fft.rfftfreq(nx)[None, :])
    return scale * radial * np.exp(-((radial / NOISE_F0) ** 2))


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """CT-like noise of unit SD, float32 (..., y, x): white Gaussian noise band-passed per slice in 2D."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfft2(white) * _noise_filter(*shape[-2:]).astype(np.float32)
    return np.fft.irfft2(spectrum, s=shape[-2:]).astype(np.float32)


def make_sample(seed: int = 0) -> Sample:
    """The demo sample: phantom + full-dose noise (reference) and + extra low-dose noise (low_dose), from a seed."""
    rng = np.random.default_rng(seed)
    phantom, labels = make_phantom()
    full_dose_noise, extra_noise = correlated_noise(rng, (2, *SHAPE))
    dose_fraction = np.linspace(*DOSE_FRACTION_RANGE, SHAPE[0])
    extra_sd = FULL_DOSE_NOISE_SD * np.sqrt(1.0 / dose_fraction - 1.0)
    reference = np.rint(phantom + FULL_DOSE_NOISE_SD * full_dose_noise)
    low_dose = reference + np.rint(extra_sd[:, None, None].astype(np.float32) * extra_noise)
    source = f"synthetic abdominal phantom (seed {seed})"
    return Sample(
        low_dose=CTVolume(low_dose, SPACING, ORIGIN, source=f"{source}, low dose"),
        reference=CTVolume(reference, SPACING, ORIGIN, source=f"{source}, full dose"),
        labels=labels,
        label_names=dict(LABEL_NAMES),
        dose_fraction=dose_fraction,
    )


def write_colour_table(label_names: dict[int, str], path: str | os.PathLike) -> None:
    """Write label names as a 3D Slicer colour table (lines `value name R G B A`)."""
    lines = [f"# Color table file {Path(path).name}", f"# {len(label_names)} values"]
    for value, name in sorted(label_names.items()):
        red, green, blue = LABEL_COLOURS.get(value, (128, 128, 128))
        lines.append(f"{value} {name} {red} {green} {blue} 255")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sample(directory: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write the demo sample into directory (created if needed) and return the paths by role.

    Roles: "ct" (sample_ct.nrrd, the low-dose CT), "reference" (sample_reference_ct.nrrd), "labels"
    (sample_labels.nrrd, uint8) and "label_names" (sample_labels.txt, Slicer colour table). The CTs are stored as
    int16 HU. Raises InputError when directory is an existing file.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    sample = make_sample(seed)
    paths = {
        "ct": folder / "sample_ct.nrrd",
        "reference": folder / "sample_reference_ct.nrrd",
        "labels": folder / "sample_labels.nrrd",
        "label_names": folder / "sample_labels.txt",
    }
    write_map(sample.low_dose.hu.astype(np.int16), sample.low_dose, paths["ct"])
    write_map(sample.reference.hu.astype(np.int16), sample.reference, paths["reference"])
    write_map(sample.labels.astype(np.uint8), sample.low_dose, paths["labels"])
    write_colour_table(sample.label_names, paths["label_names"])
    return paths
