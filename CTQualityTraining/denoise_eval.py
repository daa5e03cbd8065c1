"""Honest evaluation of low-dose CT denoisers on real quarter/full-dose Mayo pairs (``ctqa-train denoise-eval``).

Rows: the quarter-dose input (no processing), the full-dose reference (its noise and resolution only), scikit-image
non-local means and BM3D (the ``bm3d`` package) as baselines, and each given denoise model (``denoise_volume``;
with ``self_ensemble``, each also as the mean over the slice's eight rotations and flips).
Figures per pair (all images (y, x) HU, pair = one Mayo slice of 0.74 mm pixels), then means over the pairs:

- PSNR (dB): 10 log10(R^2 / MSE) against full dose over the whole slice, HU clipped to PSNR_RANGE_HU (R = 4096 HU:
  the [0, 1] scale of the .npy files, as RED-CNN's and CTformer's code compute it); its gain over the quarter dose;
  the same in the soft-tissue window SSIM_WINDOW_HU (R = 400 HU).
- SSIM: mean over the body (full dose > BODY_HU) of ``ssim_map`` against full dose (Noise2Quality settings).
- GNL (HU): ``analyse_noise`` of the slice (SLICE_MM thick), and its reduction (%) from the quarter dose.
- MTF50 (lp/mm): ``mtf.edge_mtf50`` at the body/air outline found on the full-dose image, and its ratio to the
  full-dose image's MTF50.
- s/slice: wall time of the denoiser on one slice (512 x 512 for the Mayo data).

Baseline strength, oracle-tuned on these very pairs (conservative: it favours the baselines): the noise estimate
sigma is the input's GNL (no reference needed); NLM h in NLM_FACTORS x sigma, BM3D sigma_psd in BM3D_FACTORS x
sigma (extended beyond an end while the best factor is that end); the factor with the best mean PSNR is
reported.

In-domain check (``val_data``): the same methods, at the settings they have on the Mayo pairs, on the simulated
val pairs of a denoising dataset (``ctqa-train denoise-data``) at ``val_doses``: PSNR gain over the simulated input.
A model that trails the baselines there too is short of capacity or training, not facing a domain shift.

Quality-map check (does the map of a denoised image claim more than it has?): for every image but the reference,
the default learned quality map (soft-tissue channel: predicted SSIM against the unseen full dose) against the true
SSIM map of that image vs full dose, over the body: their means, the mean signed error (predicted - true), the mean
absolute error and the Pearson r of the two maps over body pixels.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ctqa.errors import InputError
from ctqa.outputs import written_whole
from ctqa.physics.noise import analyse_noise
from ctqa.physics.ssim import SSIM_WINDOW_HU, ssim_map
from ctqa.volume import CTVolume

from .datasets import MAYO_PIXEL_MM
from .files import check_output_file
from .mtf import edge_mtf50

#: PSNR range (HU): values clipped to it, data range its width (the Mayo .npy scale).
PSNR_RANGE_HU = (-1024.0, 3071.0)
#: Slice thickness (mm) of the Mayo pairs, for the GNL.
SLICE_MM = 3.0
#: Body of a pair: full dose above this (HU).
BODY_HU = -500.0
#: Strength sweeps of the baselines, in multiples of the input's GNL.
NLM_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2)
BM3D_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5)
#: Steps a sweep may go on beyond its ends while its best factor is an end (tuned_baseline).
SWEEP_EXTENSIONS = 6
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
#: A map "claims more than it has" when its mean over the body exceeds the true SSIM's by more than this.
OVERCLAIM_TOLERANCE = 0.02
#: Acceptance of issue 12: PSNR gain (dB) and MTF50 within this fraction of full dose.
ACCEPT_GAIN_DB = 3.0
ACCEPT_MTF_TOLERANCE = 0.10
#: The learned quality map compared with the true SSIM map (registry name, channel).
QUALITY_MODEL = "n2q_default"
QUALITY_WINDOW = "soft_tissue"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Pair:
    """One Mayo slice: full dose (reference) and quarter dose, float32 (y, x) HU; body: full dose > BODY_HU;
    sigma: the quarter dose's GNL (HU), the baselines' noise estimate; full_mtf50 (lp/mm)."""

    case: str
    full: np.ndarray
    quarter: np.ndarray
    body: np.ndarray
    sigma: float
    full_mtf50: float


@dataclass(frozen=True)
class ImageMetrics:
    """Figures of one image of one pair (see module docstring); NaN where they do not apply (the reference)."""

    psnr_db: float
    gain_db: float
    psnr_soft_db: float
    ssim: float
    gnl_hu: float
    gnl_reduction_pct: float
    mtf50_lp_mm: float
    mtf50_ratio: float
    seconds: float


@dataclass(frozen=True)
class MapCheck:
    """Learned quality map vs the true SSIM map (vs full dose) of one image, over the body (dimensionless)."""

    predicted: float
    true: float
    signed_error: float
    abs_error: float
    pearson_r: float


@dataclass
class Row:
    """One method: kind "input", "reference", "baseline" or "model"; pairs: {case: figures}; maps: {case: check};
    sweep: {strength factor: mean PSNR (dB)} of a baseline's tuning."""

    name: str
    kind: str
    setting: str
    pairs: dict[str, ImageMetrics]
    maps: dict[str, MapCheck] = field(default_factory=dict)
    sweep: dict[float, float] = field(default_factory=dict)

    def mean(self, name: str) -> float:
        """Mean over the pairs of an ImageMetrics field."""
        return float(np.mean([getattr(m, name) for m in self.pairs.values()]))

    def map_mean(self, name: str) -> float:
        """Mean over the pairs of a MapCheck field."""
        return float(np.mean([getattr(m, name) for m in self.maps.values()]))


@dataclass(frozen=True)
class InDomainRow:
    """One method on the simulated val pairs: its setting (as on the Mayo pairs) and mean PSNR gain (dB)."""

    name: str
    setting: str
    gain_db: float


@dataclass
class InDomainCheck:
    """The in-domain check: dataset, dose fractions, number of val pairs, one row per method."""

    data: str
    doses: list[float]
    pairs: int
    rows: list[InDomainRow]


@dataclass
class Evaluation:
    """All rows, in table order, and how they were made; in_domain: None without val_data."""

    rows: list[Row]
    cases: list[str]
    pixel_mm: float
    quality_model: str
    device: str
    torch_threads: int
    in_domain: InDomainCheck | None = None


def psnr(image: np.ndarray, reference: np.ndarray, window: tuple[float, float]) -> float:
    """PSNR (dB) of image against reference, both HU clipped to window, data range its width."""
    low, high = window
    a = np.clip(np.asarray(image, np.float64), low, high)
    b = np.clip(np.asarray(reference, np.float64), low, high)
    return float(10.0 * math.log10((high - low) ** 2 / np.mean((a - b) ** 2)))


def gnl(image: np.ndarray, pixel_mm: float) -> float:
    """Global noise level (HU) of one (y, x) slice (``analyse_noise``)."""
    return analyse_noise(CTVolume(image[None], spacing=(pixel_mm, pixel_mm, SLICE_MM))).gnl


def _mtf50(image: np.ndarray, full: np.ndarray, case: str, pixel_mm: float) -> float:
    try:
        return edge_mtf50(image, full, pixel_mm)
    except ValueError as error:
        raise InputError(f"pair {case}: no MTF50: {error}") from None


def measure(image: np.ndarray, pair: Pair, seconds: float, pixel_mm: float) -> ImageMetrics:
    """The figures of a processed (or the quarter-dose) image of pair."""
    ssim = ssim_map(image[None], pair.full[None])[0]
    psnr_db = psnr(image, pair.full, PSNR_RANGE_HU)
    noise = gnl(image, pixel_mm)
    mtf50 = _mtf50(image, pair.full, pair.case, pixel_mm)
    return ImageMetrics(
        psnr_db=psnr_db,
        gain_db=psnr_db - psnr(pair.quarter, pair.full, PSNR_RANGE_HU),
        psnr_soft_db=psnr(image, pair.full, SSIM_WINDOW_HU),
        ssim=float(ssim[pair.body].mean()),
        gnl_hu=noise,
        gnl_reduction_pct=100.0 * (1.0 - noise / pair.sigma),
        mtf50_lp_mm=mtf50,
        mtf50_ratio=mtf50 / pair.full_mtf50,
        seconds=seconds,
    )


def reference_metrics(pair: Pair, pixel_mm: float) -> ImageMetrics:
    """The full-dose image's own GNL and MTF50 (PSNR and SSIM against itself do not apply)."""
    noise = gnl(pair.full, pixel_mm)
    nan = float("nan")
    return ImageMetrics(
        nan, nan, nan, nan, noise, 100.0 * (1.0 - noise / pair.sigma), pair.full_mtf50, 1.0, seconds=nan
    )


def read_pairs(folder: str | Path, pixel_mm: float) -> list[Pair]:
    """The Mayo pairs of folder (one slice each), with body, sigma and the full dose's MTF50; InputError (one line)
    for a folder without pairs."""
    from .evaluate import mayo_pairs

    if not Path(folder).is_dir():
        raise InputError(f"{folder}: --pairs is not a folder (expected Mayo <case>_input.npy / <case>_target.npy)")
    return [
        Pair(case, full, quarter, full > BODY_HU, gnl(quarter, pixel_mm), _mtf50(full, full, case, pixel_mm))
        for case, (quarter, full) in mayo_pairs(folder).items()
    ]


def nl_means(image: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    """scikit-image non-local means on HU: h = factor x sigma, fast mode, patch 5, search distance 6."""
    from skimage.restoration import denoise_nl_means

    out = denoise_nl_means(
        np.asarray(image, np.float64),
        h=factor * sigma,
        sigma=sigma,
        patch_size=NLM_PATCH_SIZE,
        patch_distance=NLM_PATCH_DISTANCE,
        fast_mode=True,
    )
    return out.astype(np.float32)


def import_bm3d():
    """The bm3d module; InputError (one line) when it is not installed."""
    try:
        import bm3d
    except ImportError:
        raise InputError(
            "the bm3d package is not installed (pip install bm3d); pass --no-bm3d to leave out that baseline"
        ) from None
    return bm3d


def bm3d_denoise(image: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    """BM3D (white-noise sigma_psd = factor x sigma) on the image scaled to [0, 1] over PSNR_RANGE_HU, sigma_psd
    scaled alike (the scale barely matters: on a Mayo slice, running on HU / sigma gave the same image within 1 HU)."""
    low, high = PSNR_RANGE_HU
    scaled = (np.clip(np.asarray(image, np.float64), low, high) - low) / (high - low)
    out = import_bm3d().bm3d(scaled, factor * sigma / (high - low))
    return (out * (high - low) + low).astype(np.float32)


def _timed(function: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def _beyond_best_end(sweep: dict[float, float]) -> list[float]:
    """[the next factor beyond the end of the sweep that holds its best mean PSNR, by the spacing there], or []
    when the best is inside (or the next factor down would not be positive)."""
    tried, best = sorted(sweep), max(sweep, key=sweep.get)
    if best == tried[-1]:
        return [round(2 * best - tried[-2], 6)]
    if best == tried[0] and 2 * best - tried[1] > 0:
        return [round(2 * best - tried[1], 6)]
    return []


def tuned_baseline(
    name: str,
    denoise: Callable[[np.ndarray, float, float], np.ndarray],
    parameter: str,
    factors: tuple[float, ...],
    pairs: list[Pair],
    pixel_mm: float,
    log: Log,
) -> tuple[Row, dict[str, np.ndarray]]:
    """(row, {case: output}) of a baseline, denoise(quarter HU, sigma HU, factor), at the strength factor with the
    best mean PSNR over pairs; parameter names what the factor scales (for the row's setting). While the best factor
    is an end of the sweep, the sweep goes on beyond it by the spacing at that end (at most SWEEP_EXTENSIONS steps),
    so that the reported setting is a true optimum, not a limit of the grid."""
    sweep, runs = {}, {}
    todo = list(factors)
    while todo:
        factor = todo.pop(0)
        runs[factor] = {pair.case: _timed(lambda p=pair: denoise(p.quarter, p.sigma, factor)) for pair in pairs}
        sweep[factor] = float(np.mean([psnr(runs[factor][p.case][0], p.full, PSNR_RANGE_HU) for p in pairs]))
        log(f"{name}: factor {factor:g}: mean PSNR {sweep[factor]:.2f} dB")
        if not todo and len(sweep) < len(factors) + SWEEP_EXTENSIONS:
            todo = _beyond_best_end(sweep)
    best = max(sweep, key=sweep.get)
    chosen = runs[best]
    metrics = {p.case: measure(chosen[p.case][0], p, chosen[p.case][1], pixel_mm) for p in pairs}
    setting = f"{parameter} = {best:g} σ (best of {', '.join(f'{f:g}' for f in sorted(sweep))})"
    return Row(name, "baseline", setting, metrics, sweep=sweep), {case: out for case, (out, _) in chosen.items()}


def simulated_val_pairs(data: str | Path, doses: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(noisy, clean, pixel_mm) float32 HU of the val split's paired images at the dose fractions doses; InputError
    (one line) when there are none."""
    from .denoise import load_denoise_split

    samples = load_denoise_split(data, "val").paired_only()
    wanted = np.asarray(doses, np.float64)
    pairs = [
        (noisy.astype(np.float32), clean.astype(np.float32), pixel_mm)
        for noisy, clean, dose, pixel_mm in zip(samples.noisy, samples.clean, samples.dose, samples.pixel_mm)
        if np.isclose(dose, wanted, rtol=1e-6).any()
    ]
    if not pairs:
        raise InputError(f"{data}: no paired val images at dose {', '.join(f'{d:g}' for d in doses)}")
    return pairs


def in_domain_check(
    data: str | Path,
    doses: Sequence[float],
    pairs: list[tuple[np.ndarray, np.ndarray, float]],
    methods: Sequence[tuple[str, str, Callable[[np.ndarray, float], np.ndarray]]],
    log: Log,
) -> InDomainCheck:
    """Mean PSNR gain of each (name, setting, denoise(noisy HU, sigma HU)) on pairs, the simulated val pairs of data
    at doses (``simulated_val_pairs``); sigma is the noisy image's GNL, as on the Mayo pairs."""
    sigmas = [gnl(noisy, pixel_mm) for noisy, _, pixel_mm in pairs]
    before = [psnr(noisy, clean, PSNR_RANGE_HU) for noisy, clean, _ in pairs]
    rows = []
    for name, setting, denoise in methods:
        gains = [
            psnr(denoise(noisy, sigma), clean, PSNR_RANGE_HU) - input_psnr
            for (noisy, clean, _), sigma, input_psnr in zip(pairs, sigmas, before)
        ]
        rows.append(InDomainRow(name, setting, float(np.mean(gains))))
        log(f"in-domain: {name}: gain {rows[-1].gain_db:+.2f} dB")
    return InDomainCheck(str(data), [float(d) for d in doses], len(pairs), rows)


def _model_setting(card: dict) -> str:
    arch = card.get("architecture", {})
    return (
        f"{card.get('training', {}).get('method', '?')}; width {arch.get('width')}, space-to-depth "
        f"{arch.get('space_to_depth')}, non-local window {arch.get('nonlocal_window')}"
    )


def map_check(quality_net, image: np.ndarray, pair: Pair, device: str) -> MapCheck:
    """The learned map (QUALITY_WINDOW channel) of image vs the true SSIM map of image against full dose."""
    from ctqa.models.inference import predict_volume

    predicted = predict_volume(quality_net, image[None], device=device).maps[QUALITY_WINDOW][0][pair.body]
    true = ssim_map(image[None], pair.full[None])[0][pair.body]
    predicted, true = predicted.astype(np.float64), true.astype(np.float64)
    r = float(np.corrcoef(predicted, true)[0, 1]) if true.std() > 0 and predicted.std() > 0 else float("nan")
    return MapCheck(
        float(predicted.mean()),
        float(true.mean()),
        float((predicted - true).mean()),
        float(np.abs(predicted - true).mean()),
        r,
    )


def evaluate(
    pairs_folder: str | Path,
    models: Sequence[str] = (),
    labels: Sequence[str] = (),
    pixel_mm: float | None = None,
    device: str = "cpu",
    use_bm3d: bool = True,
    log: Log = lambda message: None,
    val_data: str | Path | None = None,
    val_doses: Sequence[float] = (0.25,),
    self_ensemble: bool = False,
) -> Evaluation:
    """Evaluate the baselines and models (bundled names or checkpoints) on the Mayo pairs of pairs_folder, and with
    val_data, the in-domain check on its simulated val pairs at val_doses; self_ensemble adds a row per model for
    its geometric self-ensemble."""
    import torch

    from ctqa.models import checkpoints, registry
    from ctqa.models.denoise_network import denoise_volume, load_denoise_model

    if labels and len(labels) != len(models):
        raise InputError(f"--label gives {len(labels)} names for {len(models)} models; give one per --model or none")
    if use_bm3d:
        import_bm3d()
    pixel_mm = pixel_mm or MAYO_PIXEL_MM
    denoisers = []
    for choice, label in zip(models, labels or models):
        spec = registry.resolve("denoise", choice)
        denoisers.append((label, *load_denoise_model(spec.card_path, device)))
    quality_spec = registry.resolve("quality_map", QUALITY_MODEL)
    quality_net, _ = checkpoints.load(quality_spec.card_path, device)
    pairs = read_pairs(pairs_folder, pixel_mm)
    val_pairs = simulated_val_pairs(val_data, val_doses) if val_data is not None else None
    nan = float("nan")
    log(f"{len(pairs)} pairs: {', '.join(p.case for p in pairs)}")
    outputs: dict[str, dict[str, np.ndarray]] = {}
    rows = [
        Row(
            "quarter dose (input)",
            "input",
            "no processing",
            {p.case: measure(p.quarter, p, nan, pixel_mm) for p in pairs},
        ),
        Row(
            "full dose (reference)",
            "reference",
            "routine dose",
            {p.case: reference_metrics(p, pixel_mm) for p in pairs},
        ),
    ]
    outputs[rows[0].name] = {p.case: p.quarter for p in pairs}
    baselines = [("non-local means (scikit-image)", nl_means, "h", NLM_FACTORS)]
    if use_bm3d:
        baselines.append(("BM3D", bm3d_denoise, "sigma_psd", BM3D_FACTORS))
    tuned = []  # (name, setting, denoise(noisy, sigma)) at the strength chosen on the pairs
    for name, function, parameter, factors in baselines:
        row, outputs[name] = tuned_baseline(name, function, parameter, factors, pairs, pixel_mm, log)
        rows.append(row)
        best = max(row.sweep, key=row.sweep.get)
        tuned.append((name, f"{parameter} = {best:g} σ", lambda image, sigma, f=function, b=best: f(image, sigma, b)))
    for (label, model, card), ensemble in itertools.product(denoisers, (False, True) if self_ensemble else (False,)):

        def denoised(image: np.ndarray, _sigma: float = 0.0, model=model, ensemble=ensemble) -> np.ndarray:
            return denoise_volume(model, image[None], device=device, self_ensemble=ensemble).hu[0]

        name = f"{label} + self-ensemble" if ensemble else label
        denoised(pairs[0].quarter[:64, :64])  # warm-up, not timed
        runs = {p.case: _timed(lambda p=p: denoised(p.quarter)) for p in pairs}
        metrics = {p.case: measure(runs[p.case][0], p, runs[p.case][1], pixel_mm) for p in pairs}
        setting = _model_setting(card) + ("; mean of 8 rotations and flips" if ensemble else "")
        rows.append(Row(name, "model", setting, metrics))
        outputs[name] = {case: out for case, (out, _) in runs.items()}
        log(f"{name}: mean PSNR {rows[-1].mean('psnr_db'):.2f} dB")
        tuned.append((name, setting, denoised))
    for row in rows:
        if row.kind != "reference":
            row.maps = {p.case: map_check(quality_net, outputs[row.name][p.case], p, device) for p in pairs}
    log("quality-map check done")
    in_domain = None
    if val_pairs is not None:
        in_domain = in_domain_check(val_data, val_doses, val_pairs, tuned, log)
    cases = [p.case for p in pairs]
    return Evaluation(rows, cases, pixel_mm, quality_spec.name, device, torch.get_num_threads(), in_domain)


def _f(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def acceptance(evaluation: Evaluation) -> list[str]:
    """One line per model: the issue's acceptance (gain >= ACCEPT_GAIN_DB, above every baseline, MTF50 ratio within
    ACCEPT_MTF_TOLERANCE of 1)."""
    baselines = [row for row in evaluation.rows if row.kind == "baseline"]
    lines = []
    for row in (r for r in evaluation.rows if r.kind == "model"):
        gain, ratio = row.mean("gain_db"), row.mean("mtf50_ratio")
        checks = [
            (gain >= ACCEPT_GAIN_DB, f"gain {gain:+.2f} dB ≥ {ACCEPT_GAIN_DB:g} dB"),
            *((gain > b.mean("gain_db"), f"above {b.name} ({b.mean('gain_db'):+.2f} dB)") for b in baselines),
            (abs(ratio - 1.0) <= ACCEPT_MTF_TOLERANCE, f"MTF50 ratio {ratio:.3f} within ±{ACCEPT_MTF_TOLERANCE:.0%}"),
        ]
        verdict = "passes" if all(ok for ok, _ in checks) else "fails"
        lines.append(f"- **{row.name}** {verdict}: " + "; ".join(f"{text} {'✓' if ok else '✗'}" for ok, text in checks))
    return lines


def markdown(evaluation: Evaluation, command: str) -> str:
    """The two tables with the command that made them and what their figures mean."""
    rows = evaluation.rows
    cases = ", ".join(evaluation.cases)
    lines = [
        "# Low-dose CT denoising on real Mayo quarter/full-dose pairs",
        "",
        f"Made by: `{command}`",
        "",
        f"Pairs: {cases} (AAPM–Mayo 2016, patient L506: quarter dose by the challenge's projection-domain noise "
        f"insertion, full dose = routine; {evaluation.pixel_mm:g} mm pixels, {SLICE_MM:g} mm slices). Every figure "
        "is the mean over the pairs; per-pair values are in the JSON file of the same name.",
        "",
        f"- **PSNR** (dB): 10 log10(4096² / MSE) against full dose over the whole slice, HU clipped to "
        f"[{PSNR_RANGE_HU[0]:g}, {PSNR_RANGE_HU[1]:g}] (data range 4096 HU, the [0, 1] scale of the .npy files as "
        "RED-CNN's and CTformer's code use it); **gain** over the quarter-dose input; **PSNR soft**: the same on "
        f"HU clipped to the soft-tissue window [{SSIM_WINDOW_HU[0]:g}, {SSIM_WINDOW_HU[1]:g}] (data range 400).",
        f"- **SSIM**: mean over the body (full dose > {BODY_HU:g} HU) of the SSIM map against full dose (Gaussian "
        "11×11, σ 1.5, K1 0.01, K2 0.03, soft-tissue window; `ctqa.physics.ssim`).",
        "- **GNL** (HU): global noise level (Christianson 2015: mode of 6 mm local SDs in soft tissue; "
        "`ctqa.physics.noise`) and its **reduction** from the quarter dose.",
        "- **MTF50** (lp/mm): spatial frequency where the MTF falls to 0.5, from the edge-spread function of the "
        "body/air outline (found on the full-dose image; only stretches with air outside, no table; "
        "`CTQualityTraining.mtf.edge_mtf50`); **ratio** to the full-dose image's MTF50.",
        f"- **s/slice**: wall time per slice ({evaluation.device}, {evaluation.torch_threads} torch threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        "",
        "| Method | Setting | PSNR (dB) | Gain (dB) | PSNR soft (dB) | SSIM | GNL (HU) | GNL reduction (%) "
        "| MTF50 (lp/mm) | MTF50 / full | s/slice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.mean
        lines.append(
            f"| {row.name} | {row.setting} | {_f(m('psnr_db'))} | {_f(m('gain_db'), sign=True)} | "
            f"{_f(m('psnr_soft_db'))} | {_f(m('ssim'), 4)} | {_f(m('gnl_hu'), 1)} | "
            f"{_f(m('gnl_reduction_pct'), 0)} | {_f(m('mtf50_lp_mm'), 3)} | {_f(m('mtf50_ratio'), 3)} | "
            f"{_f(m('seconds'), 3)} |"
        )
    lines += [
        "",
        "Notes:",
        "- The baselines are **oracle-tuned on the test pairs**: σ is each input's GNL (a no-reference estimate); "
        f"NLM h ∈ {{{', '.join(f'{f:g}' for f in NLM_FACTORS)}}}·σ (patch {NLM_PATCH_SIZE}, distance "
        f"{NLM_PATCH_DISTANCE}, fast mode) and BM3D sigma_psd ∈ {{{', '.join(f'{f:g}' for f in BM3D_FACTORS)}}}·σ "
        "(white-noise model, profile np, on HU scaled to [0, 1]), each sweep extended beyond an end while its best "
        "factor is that end; the factor with the best mean PSNR on these very pairs is reported. This favours the "
        "baselines, so the comparison is conservative.",
        "- MTF50 is measured at a ~1000 HU edge, which nonlinear denoisers keep best: it shows whether edges are "
        "blurred, not whether low-contrast detail survives (SSIM and PSNR soft speak to that).",
        "- Full dose is itself noisy (about half the quarter dose's noise SD), so PSNR and SSIM against it are "
        "bounded: a perfect denoiser does not reach infinite PSNR.",
    ]
    verdicts = acceptance(evaluation)
    if verdicts:
        lines += ["", "Acceptance (issue 12: gain ≥ 3 dB, above both baselines, MTF50 within 10 % of full dose):", ""]
        lines += verdicts
    lines += _in_domain_markdown(evaluation.in_domain)
    lines += [
        "",
        "## Does the quality map of a denoised image claim more than it has?",
        "",
        f"The learned quality map (`{evaluation.quality_model}`, soft-tissue channel: the SSIM against the unseen "
        "full dose it predicts from the image alone) against the true SSIM map of the same image vs the real full "
        "dose, over the body: means, mean signed error (predicted − true), mean absolute error and Pearson r of the "
        f"two maps over body pixels. It claims more than it has when predicted − true > {OVERCLAIM_TOLERANCE:g}.",
        "",
        "| Image | Learned map | True SSIM | Predicted − true | Mean abs. error | Pearson r | Claims more? |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.maps:
            continue
        error = row.map_mean("signed_error")
        lines.append(
            f"| {row.name} | {_f(row.map_mean('predicted'), 3)} | {_f(row.map_mean('true'), 3)} | "
            f"{_f(error, 3, sign=True)} | {_f(row.map_mean('abs_error'), 3)} | {_f(row.map_mean('pearson_r'), 3)} | "
            f"{'yes' if error > OVERCLAIM_TOLERANCE else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _in_domain_markdown(check: InDomainCheck | None) -> list[str]:
    if check is None:
        return []
    doses = ", ".join(f"{100 * d:g} %" for d in check.doses)
    lines = [
        "",
        "## In-domain check: simulated val pairs",
        "",
        f"The same methods at the same settings on the {check.pairs} simulated val pairs of `{check.data}` at dose "
        f"{doses} (real slices of patients never trained on, lowered by the projection simulation the models were "
        "trained with; clean = the slice itself or its full-dose re-reconstruction): mean PSNR gain over the "
        "simulated input, same PSNR as above. A model that trails the baselines here too is short of capacity or "
        "training, not facing a domain shift on the Mayo pairs.",
        "",
        "| Method | Setting | Gain (dB) |",
        "|---|---|---|",
    ]
    lines += [f"| {row.name} | {row.setting} | {_f(row.gain_db, sign=True)} |" for row in check.rows]
    return lines


def _finite(value):
    """JSON-safe: NaN/inf become None, recursively."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_json(evaluation: Evaluation, command: str) -> dict:
    """Everything of the tables, with per-pair values and the baselines' sweeps."""
    rows = []
    for row in evaluation.rows:
        entry = asdict(row)
        entry["mean"] = {f.name: row.mean(f.name) for f in fields(ImageMetrics)}
        if row.maps:
            entry["map_mean"] = {f.name: row.map_mean(f.name) for f in fields(MapCheck)}
        rows.append(entry)
    meta = {k: v for k, v in asdict(evaluation).items() if k != "rows"}
    return _finite({"command": command, **meta, "rows": rows})


def run_cli(args) -> None:
    """``ctqa-train denoise-eval``: validate the output, evaluate, write FILE.md and FILE.json."""
    out = Path(args.out)
    if out.suffix != ".md":
        raise InputError(f"{args.out}: --out must end in .md (the JSON is written beside it)")
    check_output_file(out)
    command = shlex.join(["ctqa-train", *args.argv])
    evaluation = evaluate(
        args.pairs,
        args.model,
        args.label,
        args.pixel_mm,
        args.device,
        use_bm3d=not args.no_bm3d,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        val_data=args.val_data,
        val_doses=args.val_dose,
        self_ensemble=args.self_ensemble,
    )
    report = markdown(evaluation, command)
    with written_whole(out.with_suffix(".json")) as partial:
        partial.write_text(json.dumps(as_json(evaluation, command), indent=2) + "\n", encoding="utf-8")
    with written_whole(out) as partial:
        partial.write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {out} and {out.with_suffix('.json')}")
