"""How far do the score's features and its training target agree with the radiologists? (``ctqa-train
reader-ceiling``)

The reader study (reader_study/abdomen, sets 1-5 of one Mayo patient, L506) asks the 0-4 score for a within-set
Spearman >= 0.6 and a pooled one >= 0.7 with the readers (docs/real_validation.md). Two of each set's 14 ratings are
anchors, not judgements (low dose fixed at 1, normal dose at 5), so every figure is also given on the 12 denoised
images of each set alone, and a row that knows only the image kind (low < denoised < normal) shows what the anchors
give by themselves. The rows:

- **full reference**: the mean SSIM of each image against its set's normal-dose image (``score_data.mean_ssim``, the
  surrogate every score model here is trained on), raw and after a Gaussian smoothing of both images;
- **single no-reference features** on the product's 0.7 mm grid: the two features of ``score_features``
  (``feature_score.slice_features``) and candidate measures of edges, texture and noise distribution
  (``candidate_measures``);
- **reader-trained fits**: least squares on the readers' own ratings, with the squares of the standardised
  features, fitted on four sets and scored on the fifth (leave one set out). They use the answers no product model
  may see; they show what these features carry with one simple model, not a bound on every model;
- the bundled score ``score_features`` on the same images (its features, its model).

The readers' quality of an image is ``validate_real.reader_ratings``: the mean over readers of (contrast + structure)
/ 2.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from ctqa.errors import InputError
from ctqa.models import feature_score
from ctqa.models.registry import resolve
from ctqa.outputs import written_whole
from ctqa.volume import CTVolume

from .files import check_output_file
from .score_data import mean_ssim
from .validate_real import (
    READER_PIXEL_MM,
    READER_THICKNESS_MM,
    READER_WINDOWS_HU,
    _spearman,
    image_kind,
    reader_ratings,
)

#: Smoothings (Gaussian sigma, mm) of both images before the full-reference SSIM.
FULL_REFERENCE_SMOOTHING_MM = (0.0, 0.6, 1.2)
#: A pixel belongs to the body when it lies this far (HU) above the window's floor (air, clipped).
BODY_ABOVE_FLOOR_HU = 40.0
#: Tissue (HU) in which the candidate measures are taken, inside the body.
TISSUE_HU = (-200.0, 300.0)
#: Gradient magnitude (HU per pixel, Gaussian sigma EDGE_SIGMA_PX) above which a tissue pixel is an edge, below
#: FLAT_GRADIENT a flat pixel.
EDGE_SIGMA_PX = 2.0
EDGE_GRADIENT = 15.0
FLAT_GRADIENT = 3.0
#: Feature sets of the oracles (names of ``feature_table`` columns).
ORACLE_SETS = (
    ("ln_noise_sd",),
    ("ln_noise_sd", "nps_frequency"),
    ("ln_noise_sd", "nps_frequency", "edge_to_flat_detail"),
    ("ln_noise_sd", "nps_frequency", "edge_to_flat_detail", "noise_kurtosis", "nps_high_share"),
    None,  # every feature
)


@dataclass(frozen=True)
class ReaderImage:
    """One reader-study image: set, file, kind (low, normal, denoised), readers' quality (1..5), HU (y, x)."""

    set_id: str
    file: str
    kind: str
    readers: float
    hu: np.ndarray


def read_images(folder: Path) -> list[ReaderImage]:
    """The abdomen reader-study images of folder (the window READER_WINDOWS_HU["abdomen"] mapped back to HU)."""
    low, high = READER_WINDOWS_HU["abdomen"]
    images = []
    for (set_id, file), (rating, _method) in sorted(reader_ratings(folder).items()):
        grey = np.asarray(Image.open(folder / file).convert("L"), np.float32)
        images.append(ReaderImage(set_id, file, image_kind(file), rating, grey / 255.0 * (high - low) + low))
    return images


def candidate_measures(hu: np.ndarray) -> dict[str, float]:
    """Candidate no-reference measures of one slice (y, x) HU on READER_PIXEL_MM pixels:

    - edge_sharpness: mean gradient magnitude at sigma 0.7 px over that at EDGE_SIGMA_PX, on edge pixels (falls as
      edges are blurred);
    - edge_to_flat_detail: RMS Laplacian of Gaussian (sigma 1 px) on edges over that on flat tissue (detail kept at
      edges against noise in flat tissue);
    - noise_kurtosis: excess kurtosis of the flat-patch residuals of the NPS (denoisers leave heavy tails);
    - nps_bandwidth, nps_high_share: SD of the NPS radial frequency (cycles/mm) and the power share above 0.4
      cycles/mm.
    """
    low = READER_WINDOWS_HU["abdomen"][0]
    # the PNGs clip air to the window's bottom (some denoisers dither it by a few grey levels): the body is what
    # stands clear of it, opened and filled, then eroded away from its edge
    body = ndimage.binary_opening(hu > low + BODY_ABOVE_FLOOR_HU, iterations=2)
    body = ndimage.binary_erosion(ndimage.binary_fill_holes(body), iterations=10)
    tissue = body & (hu > TISSUE_HU[0]) & (hu < TISSUE_HU[1])
    coarse = ndimage.gaussian_gradient_magnitude(hu, EDGE_SIGMA_PX)
    fine = ndimage.gaussian_gradient_magnitude(hu, 0.7)
    edges, flat = tissue & (coarse > EDGE_GRADIENT), tissue & (coarse < FLAT_GRADIENT)
    detail = ndimage.gaussian_laplace(hu, 1.0)
    spectrum = feature_score.flat_patch_spectrum(hu, READER_PIXEL_MM)
    residuals, power, radius = spectrum.residuals, spectrum.power, spectrum.radius
    mean_frequency = (radius * power).sum() / power.sum()
    return {
        "edge_sharpness": float(fine[edges].mean() / coarse[edges].mean()),
        "edge_to_flat_detail": float(np.sqrt((detail[edges] ** 2).mean() / (detail[flat] ** 2).mean())),
        "noise_kurtosis": float(stats.kurtosis(residuals.ravel())),
        "nps_bandwidth": float(np.sqrt(((radius - mean_frequency) ** 2 * power).sum() / power.sum())),
        "nps_high_share": float(power[radius > 0.4].sum() / power.sum()),
    }


def feature_table(images: list[ReaderImage]) -> dict[str, np.ndarray]:
    """{feature: (n,) values}: the product's FEATURES and the candidate measures of every image."""
    columns: dict[str, list[float]] = {}
    for image in images:
        volume = CTVolume(image.hu[None], (READER_PIXEL_MM, READER_PIXEL_MM, READER_THICKNESS_MM),
                          clipped_hu=READER_WINDOWS_HU["abdomen"])
        product = feature_score.slice_features(volume).values[0]
        for name, value in {**dict(zip(feature_score.FEATURES, product)), **candidate_measures(image.hu)}.items():
            columns.setdefault(name, []).append(float(value))
    return {name: np.array(values) for name, values in columns.items()}


def full_reference(images: list[ReaderImage], smoothing_mm: float) -> np.ndarray:
    """(n,) mean SSIM of each image against its set's normal dose, both smoothed by smoothing_mm first."""
    normal = {image.set_id: image.hu for image in images if image.kind == "normal"}
    sigma = smoothing_mm / READER_PIXEL_MM

    def smoothed(hu: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(hu, sigma) if sigma else hu

    return np.array([mean_ssim(smoothed(i.hu)[None], smoothed(normal[i.set_id]), i.file)[0] for i in images])


def agreement(images: list[ReaderImage], values: np.ndarray) -> dict[str, float]:
    """Spearman of values with the readers within each set (mean, min) and pooled, over all images and over the
    denoised ones alone (no anchors); denoised minus normal (mean over sets)."""
    readers = np.array([image.readers for image in images])
    sets = np.array([image.set_id for image in images])
    denoised = np.array([image.kind == "denoised" for image in images])
    normal = np.array([image.kind == "normal" for image in images])
    figures = {}
    for prefix, chosen in (("", np.ones(len(images), bool)), ("denoised_", denoised)):
        within = [_spearman(readers[chosen & (sets == s)], values[chosen & (sets == s)]) for s in np.unique(sets)]
        figures |= {f"{prefix}within_mean": float(np.mean(within)), f"{prefix}within_min": float(np.min(within)),
                    f"{prefix}pooled": _spearman(readers[chosen], values[chosen])}
    gaps = [values[denoised & (sets == s)].mean() - values[normal & (sets == s)].mean() for s in np.unique(sets)]
    return {**figures, "denoised_minus_normal": float(np.mean(gaps))}


def kind_only(images: list[ReaderImage]) -> np.ndarray:
    """(n,) 0 for low dose, 1 for denoised, 2 for normal dose: what the anchors give without any judgement."""
    return np.array([{"low": 0.0, "denoised": 1.0, "normal": 2.0}[image.kind] for image in images])


def oracle(images: list[ReaderImage], columns: list[np.ndarray]) -> np.ndarray:
    """(n,) leave-one-set-out predictions of the readers' quality by least squares on the standardised features and
    their squares (fitted on the other sets, applied to the left-out one)."""
    readers = np.array([image.readers for image in images])
    sets = np.array([image.set_id for image in images])
    features = np.stack(columns, axis=1)
    scaled = (features - features.mean(axis=0)) / features.std(axis=0)
    design = np.concatenate([np.ones((len(images), 1)), scaled, scaled**2], axis=1)
    predicted = np.empty(len(images))
    for held_out in np.unique(sets):
        fit = sets != held_out
        weights, *_ = np.linalg.lstsq(design[fit], readers[fit], rcond=None)
        predicted[~fit] = design[~fit] @ weights
    return predicted


def bundled_score(features: dict[str, np.ndarray], model_name: str = "score_features") -> np.ndarray:
    """(n,) the bundled feature score of each image, from its product features."""
    model, _card = feature_score.load_feature_model(resolve("global_score", model_name).card_path)
    values = np.stack([features[name] for name in feature_score.FEATURES], axis=1)
    return model.predict(feature_score.SliceFeatures(values))[0]


def ceilings(data: str | Path, log=print) -> list[tuple[str, str, dict[str, float]]]:
    """[(group, row name, agreement)] of every ceiling (module docstring), in table order."""
    folder = Path(data) / "reader_study" / "abdomen"
    if not (folder / "ratings.csv").is_file():
        raise InputError(f"{folder}: no reader study here (ratings.csv); pass --data ../shared/data")
    images = read_images(folder)
    log(f"{len(images)} reader-study images: measuring features")
    features = feature_table(images)
    rows = [
        ("baseline", "image kind only (low < denoised < normal)", agreement(images, kind_only(images))),
        ("bundled", "score_features (trained on dose pairs)", agreement(images, bundled_score(features))),
    ]
    for smoothing in FULL_REFERENCE_SMOOTHING_MM:
        rows.append(("full reference", f"SSIM against the normal dose, smoothing {smoothing:g} mm",
                     agreement(images, full_reference(images, smoothing))))
    for name, values in features.items():
        rows.append(("single feature", name, agreement(images, values)))
    for chosen in ORACLE_SETS:
        names = list(features) if chosen is None else list(chosen)
        rows.append(("reader-trained fit, leave one set out", " + ".join(names),
                     agreement(images, oracle(images, [features[n] for n in names]))))
    return rows


def markdown(rows: list[tuple[str, str, dict[str, float]]], command: str, seconds: float) -> str:
    def number(value: float) -> str:
        return "–" if not math.isfinite(value) else f"{value:.2f}"

    lines = [
        "# The 0-4 score against the reader study: features, target and reader-trained fits",
        "",
        f"Made by: `{command}` ({seconds:.0f} s on the CPU). Definitions: `CTQualityTraining/reader_ceiling.py`. "
        "Acceptance of the score (issue 21): within-set Spearman ≥ 0.6 (every set), pooled ≥ 0.7, denoised − "
        "normal < 0. \"Denoised only\": the 12 denoised images of each set, without the two anchored ones (low dose "
        "fixed at 1, normal at 5). Single features are signed as measured (higher = more of it).",
        "",
        "| group | figure | within-set mean (min) | pooled | denoised only: within-set mean (min) | denoised only: "
        "pooled | denoised − normal |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, name, values in rows:
        lines.append(
            f"| {group} | {name} | {number(values['within_mean'])} ({number(values['within_min'])}) | "
            f"{number(values['pooled'])} | {number(values['denoised_within_mean'])} "
            f"({number(values['denoised_within_min'])}) | {number(values['denoised_pooled'])} | "
            f"{number(values['denoised_minus_normal'])} |"
        )
    return "\n".join(lines) + "\n"


def run_cli(args) -> None:
    out = check_output_file(args.out)
    started = time.time()
    rows = ceilings(args.data)
    text = markdown(rows, "ctqa-train " + shlex.join(args.argv), time.time() - started)
    with written_whole(out) as partial:
        partial.write_text(text, encoding="utf-8")
    print(text + f"wrote {out}")
