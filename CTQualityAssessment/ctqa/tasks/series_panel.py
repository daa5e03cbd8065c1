"""Task series_class: the series panel (Chest CT-IQA) of one CT volume.

Physics measures (TG-220 water-equivalent diameter, NPS kernel index, normalised noise, SNR, BRISQUE), the window
and dose classes from the learned series network (``ctqa.models.series_network``; torch is imported only then)
and from the physics classifier beside it, the eq. 4 fitted score, and the DICOM tags that contradict a call.

The panel applies to body CT (chest, abdomen, pelvis: what the classifier was trained on): it is marked as not
applying, with the reason, when the water-equivalent diameter is below BODY_MIN_WED_MM (limbs, children, small
phantoms; an adult head, about 160-180 mm, is not caught by this) or the noise cannot be measured.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from ctqa.models import registry
from ctqa.models.registry import PHYSICS_MODEL, ModelSpec
from ctqa.physics.brisque import series_brisque
from ctqa.physics.noise import NoiseAnalysis
from ctqa.physics.series import (
    DOSE_LABELS,
    TYPICAL_WED_MM,
    WINDOW_LABELS,
    PhysicsClassifier,
    SeriesPhysics,
    class_call,
    series_physics,
)
from ctqa.results import ClassCall, SeriesMeasures
from ctqa.volume import Acquisition, CTVolume

BODY_MIN_WED_MM = 150.0
#: DICOM CTDIvol (mGy) at or below which an exposure is low dose (lung screening is <= 3 mGy for a standard
#: patient, ACR-STR), and at or above which it is routine or higher; between, the tag is not compared.
LOW_DOSE_CTDIVOL_MGY = 3.0
STANDARD_CTDIVOL_MGY = 8.0
#: Probability above which a call is firm enough to be contradicted by a tag.
FIRM_PROBABILITY = 0.8
SHARP_KERNEL_NAMES = {"LUNG", "BONE", "BONEPLUS", "EDGE", "SHARP", "YC", "YD", "L", "D"}
SOFT_KERNEL_NAMES = {"STANDARD", "SOFT", "SMOOTH", "DETAIL", "A", "B", "C"}
#: Siemens (B30f, Br40d, I26f, Hr64) and Canon/Toshiba (FC17, FC52) kernels: a number of 50 or more is sharp, below
#: 40 soft; 40-49 (e.g. Mayo's D45f) are medium-sharp and not compared.
SHARP_KERNEL_FROM, SOFT_KERNEL_BELOW = 50, 40
_NUMBERED_KERNEL = re.compile(r"^(?:[BDIHQ]R?|FC)(\d{2})", re.IGNORECASE)


def kernel_window(kernel: str | None) -> str | None:
    """ "lung" (sharp) or "soft_tissue" for a DICOM ConvolutionKernel name; None when the name is not known."""
    if not kernel:
        return None
    name = kernel.strip().upper()
    numbered = _NUMBERED_KERNEL.match(name)
    if numbered:
        number = int(numbered.group(1))
        if number >= SHARP_KERNEL_FROM:
            return "lung"
        return "soft_tissue" if number < SOFT_KERNEL_BELOW else None
    if name in SHARP_KERNEL_NAMES:
        return "lung"
    return "soft_tissue" if name in SOFT_KERNEL_NAMES else None


def tag_disagreements(acquisition: Acquisition | None, window: ClassCall | None, dose: ClassCall | None) -> tuple:
    """One sentence per DICOM tag that contradicts a firm call (kernel vs window, CTDIvol vs dose)."""
    if acquisition is None:
        return ()
    found = []
    tagged = kernel_window(acquisition.kernel)
    if window is not None and tagged and tagged != window.label and window.probability >= FIRM_PROBABILITY:
        found.append(
            f"DICOM kernel {acquisition.kernel} is a {tagged.replace('_', '-')} kernel; "
            f"the pixels say {window.label} (p {window.probability:.2f})"
        )
    ctdi = acquisition.ctdivol_mgy
    if dose is not None and ctdi and dose.probability >= FIRM_PROBABILITY:
        if dose.label == "standard" and ctdi <= LOW_DOSE_CTDIVOL_MGY:
            found.append(
                f"CTDIvol {ctdi:g} mGy is a low-dose exposure; the pixels say standard (p {dose.probability:.2f})"
            )
        if dose.label == "low" and ctdi >= STANDARD_CTDIVOL_MGY:
            found.append(f"CTDIvol {ctdi:g} mGy is a routine exposure; the pixels say low (p {dose.probability:.2f})")
    return tuple(found)


def _not_applying(measured: SeriesPhysics, noise: NoiseAnalysis) -> str | None:
    if measured.size_unknown:
        return measured.size_unknown
    if not math.isfinite(noise.gnl):
        return "the noise cannot be measured (no flat soft tissue), so the series cannot be classified"
    if not math.isfinite(measured.wed_mm):
        return "no body slice to measure the water-equivalent diameter on"
    if measured.wed_mm < BODY_MIN_WED_MM:
        return (
            f"water-equivalent diameter {measured.wed_mm:.0f} mm is below {BODY_MIN_WED_MM:.0f} mm: not a body CT "
            "(the classifier was trained on chest and abdomen CT)"
        )
    return None


def calls_card(spec: ModelSpec) -> dict:
    """The card that supplies the physics classifier and the eq. 4 fit: the learned model's own, or the default
    series model's (read as JSON, no torch) for the built-in physics choice; {} when no series model is installed."""
    if spec.is_learned:
        return spec.card
    default = registry.default_model(spec.task.name)
    return {} if default in (None, PHYSICS_MODEL) else registry.resolve(spec.task.name, default).card


def fitted_score(fit: dict, lung: float, low: float, snr: float, brisque: float) -> float:
    """Eq. 4 of Chest CT-IQA with the card's coefficients (b0 + b1 P_lung + b2 P_low + b3 SNR + b4 BRISQUE),
    clipped to the 0-4 scale; NaN when a regressor is missing."""
    values = (1.0, lung, low, snr, brisque)
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return min(4.0, max(0.0, sum(b * v for b, v in zip(fit["coefficients"], values))))


def run(volume: CTVolume, noise: NoiseAnalysis, spec: ModelSpec, device: str = "cpu") -> SeriesMeasures:
    """The series panel of volume (module docstring) with the series_class model spec (learned or "physics")."""
    measured = series_physics(volume, noise)
    panel = SeriesMeasures(
        applies=True,
        note=None,
        water_equivalent_diameter_mm=math.nan if measured.pixel_mm_estimated else measured.wed_mm,  # not measured
        kernel_index=measured.kernel_index_per_mm,
        kernel_index_patches=measured.nps_patches,
        noise_normalised_hu=measured.noise_normalised_hu,
        slice_thickness_mm=measured.slice_thickness_mm,
        snr=noise.snr,
        brisque=series_brisque(volume.hu, noise.body_mask),
        acquisition=volume.acquisition,
    )
    reason = _not_applying(measured, noise)
    if reason is not None:
        return replace(panel, applies=False, note=reason)
    card = calls_card(spec)
    physics = PhysicsClassifier.from_dict(card["physics_classifier"]) if "physics_classifier" in card else None
    physics_calls = physics.classify(measured) if physics is not None else None
    p_lung, p_low = physics.probabilities(measured) if physics_calls else (math.nan, math.nan)
    window, dose = (physics_calls.window, physics_calls.dose) if physics_calls else (None, None)
    notes, learned = [], False
    if measured.pixel_mm_estimated:
        notes.append(
            f"no pixel size in the file: {measured.pixel_mm:.2f} mm estimated from the body (an adult trunk of "
            f"{TYPICAL_WED_MM:g} mm water-equivalent diameter); the calls depend on it"
        )
    if spec.is_learned and card.get("calls", {}).get("source", "learned") == "learned":
        from ctqa.models import series_network
        from ctqa.models.inference import resolve_device

        model, _ = series_network.load(spec.card_path, resolve_device(device)[0])
        reading = series_network.predict_series(
            model, card, volume.hu, measured.pixel_mm, measured.slice_thickness_mm, measured.wed_mm
        )
        if reading is None:
            notes.append("no 64-pixel crop of body fits the series network: physics calls shown")
        else:
            learned = True
            p_lung, p_low = reading.lung_probability, reading.low_dose_probability
            window, dose = class_call(WINDOW_LABELS, p_lung), class_call(DOSE_LABELS, p_low)
    elif spec.is_learned:
        notes.append(f"physics calls: the series network validated worse ({card['calls']['reason']})")
    if window is None:
        notes.append(
            "no series model is installed: window and dose are not classified"
            if physics is None
            else "no flat soft tissue to measure the kernel index in: window and dose are not classified"
        )
    elif window.label == "lung" and not learned:
        notes.append("the physics dose call does not allow for a lung kernel's higher noise: read it with care")
    score = fitted_score(card["score_fit"], p_lung, p_low, panel.snr, panel.brisque) if "score_fit" in card else None
    return replace(
        panel,
        note="; ".join(notes) or None,
        window=window,
        dose=dose,
        physics=physics_calls,
        fitted_score=score,
        classifier=spec.name if learned else None,
        calls_from=None if window is None else ("learned" if learned else "physics"),
        series_model=card.get("name") if card else None,
        tag_disagreements=tag_disagreements(volume.acquisition, window, dose),
    )
