"""Projection-domain low-dose and kernel simulation on real CT slices (torch; one code path on CPU and GPU).

Model (parallel beam, the method behind the Mayo quarter-dose data, simplified to 2D):
1. HU -> linear attenuation mu = MU_WATER_PER_MM * (1 + HU / 1000), clipped at 0 (air). MU_WATER_PER_MM is water at
   70 keV, the effective energy of a 120 kVp beam. Pixels outside the inscribed reconstruction circle count as air.
2. Forward projection by rotate-and-sum (bilinear, as scikit-image's ``radon(circle=True)``): line integrals
   p (dimensionless) on a detector of one bin per pixel (bin size = pixel size in mm), ``views`` angles over 180 deg.
3. Counts at dose fraction d: N ~ Poisson(I0 d exp(-p)) + Normal(0, electronic_noise^2), floored at 1;
   p_d = -log(N / (I0 d)) minus the first-order log bias (I0 d exp(-p) + electronic^2) / (2 (I0 d exp(-p))^2).
4. Only the *extra* noise is inserted: the original image already holds the full-dose noise, so the ray-wise
   difference p_d - p is scaled to the variance the dose reduction adds, (1/d - 1)/lam + e^2 (1/d^2 - 1)/lam^2 with
   lam = I0 exp(-p) (= 1 - d of the dose-d variance without electronic noise), reconstructed and added.
5. I0 (photons per detector bin per view, unattenuated, full dose) is calibrated per slice and kernel so that the
   simulated full-dose noise equals the slice's own noise measured by the core (``analyse_noise``, soft tissue GNL):
   the noise of a unit-I0 reconstruction is measured by variance subtraction with the same tool.
6. Filtered back-projection (Kak-Slaney ramp as scikit-image's ``iradon``, linear interpolation) with a window:
   ``KERNELS["sharp"]`` (Shepp-Logan, full bandwidth, lung/bone style) and ``KERNELS["smooth"]`` (Hann to
   0.7 lp/mm, soft-tissue style). Kernel "native" keeps the original image (its own kernel) and inserts noise
   reconstructed with the smooth filter. Other kernels re-reconstruct the whole slice, so fewer ``views`` (sparse
   view) gives the streaks of undersampled acquisitions.

The original reconstruction kernel is unknown, so I0 is calibrated per output kernel, not shared between them.

Noise model "acquire" (``noise_model="acquire"``, for series of one acquisition reconstructed with several kernels):
in the default model ("insert") a re-reconstructed kernel inherits the original image's own noise, filtered again,
so a lung kernel's full-dose image keeps the soft texture of the original kernel (its NPS mean frequency did not rise
above the native image's). "acquire" removes the original noise first (non-local means, h from the measured noise),
projects that object, calibrates one I0 per slice with NATIVE_NOISE_FILTER so that the full-dose noise equals the
original's, and gives every kernel the full-dose quantum noise of that same I0 reconstructed with its own filter:
noise level and texture then follow the kernel, as on a scanner (a lung kernel ~3x the soft one's noise).
Kernel "native" stays the acquired image plus the extra noise of each dose, as in "insert".

Slice thickness (``thicken``): a thick slice is the mean of k adjacent thin ones, as scanners make thick
reconstructions from thin collimation. The simulated noise of each slice is independent, so averaging lowers it by
sqrt(k) while anatomy stays, as on real thick slices; the thickness becomes k x the slice spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ctqa.errors import InputError
from ctqa.physics.noise import analyse_noise
from ctqa.volume import CTVolume

#: Linear attenuation of water at 70 keV in 1/mm (NIST XCOM mu/rho 0.1937 cm^2/g, log-log between 60 and 80 keV).
MU_WATER_PER_MM = 0.01937
#: Projection angles over 180 degrees of a full (not sparse) acquisition.
DEFAULT_VIEWS = 720
#: Dose fractions of the default training set.
DEFAULT_DOSES = (1.0, 0.75, 0.5, 0.25, 0.1, 0.05)
#: Counts are floored here before the log (photon starvation).
COUNT_FLOOR = 1.0
#: HU at or below which a pixel is air; a whole CT slice has some around the body.
AIR_HU = -900.0
#: Angles reconstructed per chunk (bounds memory at batch x chunk x pixels floats).
_ANGLE_CHUNK = 2
_FORWARD_CHUNK = 16


@dataclass(frozen=True)
class ReconFilter:
    """FBP filter: Kak-Slaney ramp times a window ("ramp", "shepp-logan" or "hann") reaching zero at cutoff_lp_mm
    (line pairs per mm; None = the pixel grid's Nyquist frequency), times an optional mid-frequency boost
    1 + boost_gain * exp(-((f - boost_centre) / boost_width)^2) (f as a fraction of the cutoff): the edge
    enhancement of lung and bone kernels, whose MTF rises above 1 at mid frequencies."""

    window: str
    cutoff_lp_mm: float | None = None
    boost_gain: float = 0.0
    boost_centre: float = 0.5
    boost_width: float = 0.2


KERNELS = {
    "sharp": ReconFilter("shepp-logan"),
    "smooth": ReconFilter("hann", 0.7),
    # Lung/bone kernel (B70f-like): Shepp-Logan boosted around 0.45 Nyquist. On a real Mayo slice at 25 % dose its
    # noise is 3.0x the smooth kernel's (real B70f/B30f on one chest slice: 138/46 HU = 3.0) and its disk-edge MTF50
    # 0.52 lp/mm is above the plain ramp's 0.43 (Testing/test_simulation.py).
    "lung": ReconFilter("shepp-logan", None, boost_gain=2.8, boost_centre=0.45, boost_width=0.2),
}
#: Kernel classes in label order; "native" is the input's own kernel (new kernels are appended: labels keep).
KERNEL_NAMES = ("native", "sharp", "smooth", "lung")
NATIVE_NOISE_FILTER = KERNELS["smooth"]
NOISE_MODELS = ("insert", "acquire")
#: Non-local means strength for the object of the "acquire" model, times the slice's measured noise SD.
OBJECT_DENOISE_H = 0.8


@dataclass(frozen=True)
class Simulation:
    """Simulated slices for one kernel.

    hu: float32 (dose, z, y, x) HU, one image per entry of doses.
    reference: float32 (z, y, x) HU, the full-dose image of this kernel (the original for "native").
    i0: (z,) calibrated photons per detector bin per view at full dose; full_dose_noise_sd: (z,) HU measured.
    """

    kernel: str
    doses: tuple[float, ...]
    views: int
    hu: np.ndarray
    reference: np.ndarray
    i0: np.ndarray
    full_dose_noise_sd: np.ndarray


def thicken(hu: np.ndarray, slices: int) -> np.ndarray:
    """(..., z // slices, y, x) float32: each output slice the mean of `slices` adjacent slices of hu (..., z, y, x)
    (left-over slices at the end are dropped); `slices` = 1 returns the slices unchanged."""
    if slices < 1 or slices > hu.shape[-3]:
        raise InputError(f"cannot average {slices} adjacent slices of a stack of {hu.shape[-3]}")
    depth = hu.shape[-3] // slices * slices
    grouped = np.asarray(hu[..., :depth, :, :], np.float32)
    grouped = grouped.reshape(*hu.shape[:-3], depth // slices, slices, *hu.shape[-2:])
    return grouped.mean(axis=-3, dtype=np.float32)


def check_not_blank(hu: np.ndarray, source: str, what: str = "slice") -> np.ndarray:
    """hu, (z, y, x) HU, unchanged; InputError naming the first slice whose pixels all have one value."""
    array = np.asarray(hu)
    blank = np.flatnonzero(array.min(axis=(1, 2)) == array.max(axis=(1, 2)))
    if blank.size:
        raise InputError(f"{source}: {what} {blank[0]} is blank (every pixel {array[blank[0]].flat[0]:g} HU)")
    return hu


def check_ct_slices(hu: np.ndarray, source: str = "<array>") -> np.ndarray:
    """The slices as float32 (z, y, x) HU, or InputError when they cannot be whole CT slices in HU."""
    array = np.asarray(hu)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        raise InputError(f"{source}: shape {array.shape} looks like a colour (RGB) image, not CT slices")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InputError(f"{source}: expected a 2D slice or (z, y, x) slices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"{source}: pixel type {array.dtype} is not a CT in HU")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError(f"{source}: NaN/inf pixels")
    low, high = float(array.min()), float(array.max())
    if low >= -1.0 and high <= 1.0:
        raise InputError(
            f"{source}: values span [{low:g}, {high:g}]; looks normalised, not HU (convert with a declared scaling)"
        )
    if array.shape[1] != array.shape[2] or array.shape[1] < 32:
        raise InputError(f"{source}: slices of {array.shape[1]}x{array.shape[2]} pixels; need square slices >= 32")
    air = (array <= AIR_HU).mean(axis=(1, 2))
    if (air < 0.01).any():
        raise InputError(
            f"{source}: slice {int(np.argmin(air))} has no air (values {low:g}..{high:g}); "
            "need whole CT slices in HU with air around the body"
        )
    return check_not_blank(array, source)  # all air


def _fourier_filter(size: int, filt: ReconFilter, pixel_mm: float) -> np.ndarray:
    """rfft-shaped (size // 2 + 1,) FBP filter: Kak-Slaney ramp (as scikit-image) times the window."""
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    spatial = np.zeros(size)
    spatial[0] = 0.25
    spatial[1::2] = -1.0 / (np.pi * n) ** 2
    ramp = 2.0 * np.real(np.fft.rfft(spatial))
    nu = np.fft.rfftfreq(size) * 2.0  # fraction of the Nyquist frequency
    cutoff = 1.0 if filt.cutoff_lp_mm is None else filt.cutoff_lp_mm * 2.0 * pixel_mm
    x = nu / cutoff
    if filt.window == "ramp":
        window = np.ones_like(x)
    elif filt.window == "shepp-logan":
        window = np.sinc(x / 2.0)
    elif filt.window == "hann":
        window = 0.5 * (1.0 + np.cos(np.pi * np.minimum(x, 1.0)))
    else:
        raise ValueError(f"unknown filter window {filt.window!r}")
    window = window * (1.0 + filt.boost_gain * np.exp(-(((x - filt.boost_centre) / filt.boost_width) ** 2)))
    return ramp * np.where(x <= 1.0, window, 0.0)


class ParallelBeam:
    """Parallel-beam geometry for square (n, n) slices: views angles over [0, 180) deg, n detector bins of one pixel.

    Conventions equal scikit-image's radon/iradon with circle=True (rotation centre n // 2).
    """

    def __init__(self, size: int, views: int = DEFAULT_VIEWS, device: str | torch.device = "cpu"):
        self.size, self.views, self.device = size, views, torch.device(device)
        self.angles = torch.arange(views, dtype=torch.float64, device=self.device) * (math.pi / views)
        self.cos = torch.cos(self.angles).float()
        self.sin = torch.sin(self.angles).float()
        centre = size // 2
        coords = torch.arange(size, dtype=torch.float32, device=self.device) - centre
        rows, cols = torch.meshgrid(coords, coords, indexing="ij")
        self.inside = rows**2 + cols**2 <= centre**2  # (n, n) reconstruction circle
        self._rows, self._cols = rows[self.inside], cols[self.inside]
        self._coords = coords

    def project(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals (b, views, n) of (b, n, n) images in units of pixel x value (rotate and sum)."""
        n, centre = self.size, self.size // 2
        image = torch.where(self.inside, image, torch.zeros((), device=image.device, dtype=image.dtype))
        channels = image[None]  # slices as channels, angles as the batch of grid_sample
        s = self._coords[None, None, :]
        u = self._coords[None, :, None]
        out = []
        for start in range(0, self.views, _FORWARD_CHUNK):
            cos = self.cos[start : start + _FORWARD_CHUNK, None, None]
            sin = self.sin[start : start + _FORWARD_CHUNK, None, None]
            x = (centre + s * cos + u * sin) * (2.0 / (n - 1)) - 1.0
            y = (centre - s * sin + u * cos) * (2.0 / (n - 1)) - 1.0
            grid = torch.stack(torch.broadcast_tensors(x, y), dim=-1)
            rotated = torch.nn.functional.grid_sample(
                channels.expand(grid.shape[0], -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )
            out.append(rotated.sum(dim=2))  # (chunk, b, n): sum along the ray
        return torch.cat(out, dim=0).transpose(0, 1).contiguous()

    def fbp(self, sinogram: torch.Tensor, filt: ReconFilter, pixel_mm: float) -> torch.Tensor:
        """Filtered back-projection of (b, views, n) line integrals to (b, n, n); 0 outside the circle."""
        n = self.size
        padded = max(64, 2 ** math.ceil(math.log2(2 * n)))
        response = torch.as_tensor(_fourier_filter(padded, filt, pixel_mm), dtype=torch.float32, device=self.device)
        filtered = torch.fft.irfft(torch.fft.rfft(sinogram, n=padded, dim=-1) * response, n=padded, dim=-1)[..., :n]
        return self.backproject(filtered) * (math.pi / (2 * self.views))

    def backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Unfiltered linear-interpolation back-projection of (b, views, n) to (b, n, n), summed over views."""
        batch, n = sinogram.shape[0], self.size
        values = torch.nn.functional.pad(sinogram, (0, 1)).reshape(batch, -1)  # bin n is 0 (beyond the detector)
        offsets = torch.arange(_ANGLE_CHUNK, device=self.device)[:, None] * (n + 1)
        total = torch.zeros(batch, self._rows.numel(), device=self.device, dtype=sinogram.dtype)
        for start in range(0, self.views, _ANGLE_CHUNK):
            stop = min(start + _ANGLE_CHUNK, self.views)
            bins = (
                self._cols[None] * self.cos[start:stop, None] - self._rows[None] * self.sin[start:stop, None] + n // 2
            )
            lower = bins.floor().clamp(max=n - 1)
            index = (lower.long() + offsets[: stop - start] + start * (n + 1)).reshape(-1)
            weight = (bins - lower).reshape(-1)
            below, above = values.index_select(1, index), values.index_select(1, index + 1)
            total += torch.lerp(below, above, weight).reshape(batch, stop - start, -1).sum(dim=1)
        image = torch.zeros(batch, n, n, device=self.device, dtype=sinogram.dtype)
        image[:, self.inside] = total
        return image


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    """Linear attenuation in 1/mm from HU (water at 70 keV), clipped at 0."""
    return torch.clamp(MU_WATER_PER_MM * (1.0 + hu / 1000.0), min=0.0)


def measured_noise_sd(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    """(z,) noise SD in HU of each slice of (z, y, x) HU: the core's global noise level (GNL, the mode of local SDs
    in soft tissue) slice by slice; NaN where a slice has no soft tissue.

    The GNL rather than the flat-window median: re-reconstructed slices have correlated noise, which the core's
    flatness tests (made for a scanner's own noise texture) often reject everywhere.
    """
    return np.array([analyse_noise(CTVolume(s[None], (pixel_mm, pixel_mm, 1.0))).gnl for s in hu], dtype=np.float64)


def _fill_missing(values: np.ndarray, what: str, source: str) -> np.ndarray:
    """Per-slice values with NaN replaced by the median of the others; InputError when all are NaN."""
    if np.isnan(values).all():
        raise InputError(f"{source}: no flat soft tissue to measure {what}; cannot calibrate the dose simulation")
    return np.where(np.isnan(values), np.nanmedian(values), values)


def _check_doses(doses) -> tuple[float, ...]:
    doses = tuple(float(d) for d in doses)
    if not doses or any(not 0.0 < d <= 1.0 for d in doses):
        raise InputError(f"dose fractions must lie in (0, 1], got {doses}")
    return doses


def simulate(
    hu: np.ndarray,
    pixel_mm: float,
    doses=DEFAULT_DOSES,
    kernels=("native",),
    views: int = DEFAULT_VIEWS,
    electronic_noise: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    source: str = "<array>",
    noise_model: str = "insert",
) -> dict[str, Simulation]:
    """Low-dose versions of CT slices: (z, y, x) or (y, x) HU with square pixels of pixel_mm.

    Returns one Simulation per kernel name (see KERNEL_NAMES); electronic_noise is the SD of the detector's
    additive noise in photon counts per bin and view. views sets the projection angles over 180 deg: for "native"
    only the inserted noise uses them, so sparse-view streaks need "sharp" or "smooth". Reproducible for a given
    seed and device. noise_model: "insert" (default) or "acquire" (module docstring).
    """
    slices = check_ct_slices(hu, source)
    if noise_model not in NOISE_MODELS:
        raise InputError(f"unknown noise model {noise_model!r}; choose from {', '.join(NOISE_MODELS)}")
    doses = _check_doses(doses)
    unknown = [k for k in kernels if k not in KERNEL_NAMES]
    if unknown:
        raise InputError(f"unknown kernel {unknown[0]!r}; choose from {', '.join(KERNEL_NAMES)}")
    if views < 8 or pixel_mm <= 0:
        raise InputError(f"need at least 8 views and a positive pixel size (got {views}, {pixel_mm} mm)")
    geometry = ParallelBeam(slices.shape[1], views, device)
    generator = torch.Generator(device=geometry.device).manual_seed(seed)
    original = torch.as_tensor(slices, device=geometry.device)
    with torch.no_grad():
        if noise_model == "acquire":
            return _simulate_acquisition(
                slices, kernels, geometry, pixel_mm, doses, electronic_noise, generator, source
            )
        line_integrals = geometry.project(hu_to_mu(original) * pixel_mm)
        return {
            kernel: _simulate_kernel(
                kernel, original, line_integrals, geometry, pixel_mm, doses, electronic_noise, generator, source
            )
            for kernel in kernels
        }


def _extra_noise_sinogram(line_integrals, lam_full, dose, electronic, generator):
    """Log-domain noise (b, views, n) that takes full-dose data to dose fraction dose (steps 3 and 4)."""
    lam = lam_full * dose
    counts = torch.poisson(lam, generator=generator)
    if electronic:
        counts = counts + electronic * torch.randn(lam.shape, generator=generator, device=lam.device)
    noisy = -torch.log(counts.clamp(min=COUNT_FLOOR) / lam)  # p_d - p
    noisy -= (lam + electronic**2) / (2.0 * lam**2)  # first-order bias of the log
    dose_var = 1.0 / lam + electronic**2 / lam**2
    extra_var = (1.0 / dose - 1.0) / lam_full + electronic**2 * (1.0 / dose**2 - 1.0) / lam_full**2
    return noisy * torch.sqrt(extra_var / dose_var)


def _simulate_kernel(kernel, original, line_integrals, geometry, pixel_mm, doses, electronic, generator, source):
    """Simulation for one kernel from the noise-free line integrals (b, views, n) of the original (b, n, n) HU."""
    to_hu = 1000.0 / (pixel_mm * MU_WATER_PER_MM)
    filt = NATIVE_NOISE_FILTER if kernel == "native" else KERNELS[kernel]
    batch = original.shape[0]
    # Unit-I0 noise: the log-domain variance of a ray is exp(p) / I0; reconstructed with the slices themselves.
    white = torch.randn(line_integrals.shape, generator=generator, device=geometry.device)
    unit_noise = torch.exp(line_integrals / 2.0) * white
    if kernel == "native":
        reference = original
        unit = geometry.fbp(unit_noise, filt, pixel_mm) * to_hu
    else:
        recon = geometry.fbp(torch.cat([line_integrals, unit_noise]), filt, pixel_mm) * to_hu
        reference = torch.where(geometry.inside, recon[:batch] - 1000.0, original)
        unit = recon[batch:]
    reference_np, unit = reference.cpu().numpy(), unit.cpu().numpy()
    full_sd = _fill_missing(measured_noise_sd(reference_np, pixel_mm), "the full-dose noise", source)
    i0 = _calibrated_i0(reference_np, unit, full_sd, geometry, pixel_mm, source)
    return _lowered(
        kernel, reference, i0, full_sd, line_integrals, geometry, filt, pixel_mm, doses, electronic, generator
    )


def _calibrated_i0(reference, unit, full_sd, geometry, pixel_mm, source) -> np.ndarray:
    """(z,) I0 at which the noise of the unit-I0 reconstruction `unit` (z, y, x) equals full_sd (z,) HU on top of
    reference (z, y, x) HU, measured by variance subtraction with the core's GNL (step 5)."""
    body = (reference > -500.0) & geometry.inside.cpu().numpy()
    rough = np.array([u[m].std() if m.any() else np.nan for u, m in zip(unit, body)])
    scale = 2.0 * full_sd / _fill_missing(rough, "the simulated noise", source)
    total_sd = measured_noise_sd(reference + scale[:, None, None] * unit, pixel_mm)
    unit_sd = np.sqrt(np.maximum(total_sd**2 - full_sd**2, 1e-12)) / scale
    unit_sd = _fill_missing(np.where(np.isfinite(total_sd), unit_sd, np.nan), "the simulated noise", source)
    return (unit_sd / full_sd) ** 2


def _lowered(kernel, reference, i0, full_sd, line_integrals, geometry, filt, pixel_mm, doses, electronic, generator):
    """The Simulation of one kernel: reference (b, n, n) HU tensor at full dose plus the extra noise of each dose."""
    to_hu = 1000.0 / (pixel_mm * MU_WATER_PER_MM)
    reference_np = reference.cpu().numpy()
    lam_full = torch.as_tensor(i0, dtype=torch.float32, device=geometry.device)[:, None, None] * torch.exp(
        -line_integrals
    )
    images = reference[None].repeat(len(doses), 1, 1, 1)
    lowered = [index for index, dose in enumerate(doses) if dose < 1.0]
    if lowered:
        sinograms = [_extra_noise_sinogram(line_integrals, lam_full, doses[i], electronic, generator) for i in lowered]
        noise = geometry.fbp(torch.cat(sinograms), filt, pixel_mm) * to_hu
        images[lowered] += noise.reshape(len(lowered), *reference.shape)
    return Simulation(
        kernel=kernel,
        doses=doses,
        views=geometry.views,
        hu=images.cpu().numpy(),
        reference=reference_np,
        i0=i0,
        full_dose_noise_sd=full_sd,
    )


def denoised_object(slices: np.ndarray, noise_sd: np.ndarray) -> np.ndarray:
    """(z, y, x) float32 HU: each slice with its own noise removed (scikit-image non-local means, h =
    OBJECT_DENOISE_H x the slice's noise SD in HU), the object the "acquire" model projects."""
    from skimage.restoration import denoise_nl_means

    return np.stack(
        [
            denoise_nl_means(s, h=OBJECT_DENOISE_H * sd, sigma=sd, patch_size=5, patch_distance=6, fast_mode=True)
            for s, sd in zip(slices.astype(np.float64), noise_sd)
        ]
    ).astype(np.float32)


def _simulate_acquisition(slices, kernels, geometry, pixel_mm, doses, electronic, generator, source):
    """The "acquire" noise model (module docstring): one I0 per slice for every kernel."""
    to_hu = 1000.0 / (pixel_mm * MU_WATER_PER_MM)
    original_sd = _fill_missing(measured_noise_sd(slices, pixel_mm), "the acquired noise", source)
    objects = torch.as_tensor(denoised_object(slices, original_sd), device=geometry.device)
    line_integrals = geometry.project(hu_to_mu(objects) * pixel_mm)
    white = torch.randn(line_integrals.shape, generator=generator, device=geometry.device)
    unit_noise = torch.exp(line_integrals / 2.0) * white
    unit = geometry.fbp(unit_noise, NATIVE_NOISE_FILTER, pixel_mm) * to_hu
    recon_smooth = geometry.fbp(line_integrals, NATIVE_NOISE_FILTER, pixel_mm) * to_hu - 1000.0
    i0 = _calibrated_i0(recon_smooth.cpu().numpy(), unit.cpu().numpy(), original_sd, geometry, pixel_mm, source)
    lam_full = torch.as_tensor(i0, dtype=torch.float32, device=geometry.device)[:, None, None] * torch.exp(
        -line_integrals
    )
    out = {}
    if "native" in kernels:  # the acquired image itself, with the extra noise of each dose (as "insert")
        original = torch.as_tensor(slices, device=geometry.device)
        original_integrals = geometry.project(hu_to_mu(original) * pixel_mm)
        out["native"] = _simulate_kernel(
            "native", original, original_integrals, geometry, pixel_mm, doses, electronic, generator, source
        )
    for kernel in (k for k in kernels if k != "native"):
        filt = KERNELS[kernel]
        # the extra noise of dose 1/2 has the variance of the full dose, 1 / lam_full
        full_noise = _extra_noise_sinogram(line_integrals, lam_full, 0.5, electronic, generator)
        recon = geometry.fbp(line_integrals + full_noise, filt, pixel_mm) * to_hu
        reference = torch.where(geometry.inside, recon - 1000.0, objects)
        full_sd = measured_noise_sd(reference.cpu().numpy(), pixel_mm)
        out[kernel] = _lowered(
            kernel, reference, i0, full_sd, line_integrals, geometry, filt, pixel_mm, doses, electronic, generator
        )
    return out
