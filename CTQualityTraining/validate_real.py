"""Real-data validation of the product's learned figures (``ctqa-train validate-real``): one table, rerun on every
model change.

Every image goes through the product itself: ``ctqa.pipeline.assess`` (quality map, physics noise, GNL) once, then
``ctqa.tasks.global_score.run`` for each score model compared. Checks, all on real CT in ../shared/data:

- dose pairs (mayo_ldct: 36 DICOM pairs of four patients, B30f and D45f; mayo_pairs: L506, two .npy pairs): quarter
  dose below full dose by the score and by the map mean; the soft-tissue map of the quarter dose against its true
  SSIM map (ssim_map(quarter, full) in -160..240 HU), as the SSIM between the two maps over the whole image and over
  the body (``evaluate.map_metrics``), and the bias of the map's body mean against the true map's body mean; the
  same bias on the held-out pairs at other doses (the full dose plus 0.5, 2 or 3 times the real quarter-minus-full
  noise, ``check_noise_gains``);
- the reader study (reader_study/abdomen, sets 1-5, and brain, sets 1-15; grey g <-> g/255 * W + L0 HU): the
  readers' quality of an image is the mean over readers of (contrast + structure) / 2 (both 1..5, low dose fixed at
  1, normal dose at 5). Per figure (score, map mean, -GNL: higher = better for all three): low dose below normal
  dose in every set, the mean Spearman with the readers within a set, pooled over all images, and the mean of the
  denoised images minus the normal dose's (readers: below 0);
- invariance on real slices (both doses of the mayo_pairs and of the first B30f mayo_ldct pair): the largest change
  of the score and of the map mean under a central crop to 70 %, padding to 140 % (-1024 HU), a left-right flip and
  a 90-degree rotation; and under a 0.7x field-of-view zoom (the central 70 % resampled to the full matrix, pixels
  0.7x) whether quarter dose still reads below full dose;
- the demo's dose ramp (``ctqa.sample``, dose 100 % -> 10 % over the slices): Spearman of the per-slice score and
  map mean with the slice index (the acceptance asks <= -0.9).
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from ctqa import pipeline
from ctqa.errors import InputError
from ctqa.models.registry import ModelSpec
from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.physics.ssim import ssim_map
from ctqa.sample import make_sample
from ctqa.tasks import global_score
from ctqa.volume import CTVolume

from .datasets import MAYO_PIXEL_MM
from .evaluate import MIN_LUNG_PIXELS, map_metrics, mayo_pairs, region_masks
from .score_features import read_pairs_csv, read_slice

#: Display windows of the reader-study PNGs (HU at grey 0, HU at grey 255) and their assumed pixel size (mm).
READER_WINDOWS_HU = {"abdomen": (-160.0, 240.0), "brain": (0.0, 80.0)}
READER_PIXEL_MM = 0.7
READER_THICKNESS_MM = 3.0
CROP_FRACTION = 0.7
PAD_FRACTION = 1.4
PAD_HU = -1024.0
#: Patients of the real pairs no bundled model was trained or tuned on (the denoised-SSIM map's reference noise was
#: chosen on the other three, the feature score trained on L096/L143/L192 and validated on L286).
HELD_OUT_PATIENTS = ("L286", "L506")
#: Column name of the hybrid score (--hybrid): the mean of the first two score models' scores.
HYBRID = "hybrid"


@dataclass
class Figures:
    """The product's figures of one image: score per score model (NaN when not scored), map body mean, GNL (HU),
    the quality map of each window {window: (y, x)}, and whether the score carried out-of-domain notes."""

    scores: dict[str, float]
    map_mean: float
    gnl: float
    window_maps: dict[str, np.ndarray] = field(repr=False)
    out_of_domain: dict[str, bool] = field(default_factory=dict)


class Assessor:
    """Runs the product on 2D slices: the map once, each score model on the same volume; hybrid: also the mean of
    the first two score models' scores (HYBRID)."""

    def __init__(self, map_model: str, score_models: list[str], hybrid: bool = False):
        self.map_spec = pipeline.resolve_model(map_model)
        self.score_specs: dict[str, ModelSpec] = {}
        for choice in score_models:
            spec = global_score.resolve(choice)
            if spec is None:
                raise InputError(f"--score-model {choice}: no such score model is installed")
            name = spec.name if choice == "default" else Path(choice).stem
            if name in self.score_specs:
                raise InputError(f"--score-model {choice}: {name} is named twice")
            self.score_specs[name] = spec
        if hybrid and len(self.score_specs) < 2:
            raise InputError("--hybrid needs two score models")
        self.hybrid = hybrid

    @property
    def names(self) -> list[str]:
        """The score columns: each model, then the hybrid."""
        return [*self.score_specs, *([HYBRID] if self.hybrid else [])]

    def with_hybrid(self, scores: dict[str, float | np.ndarray]) -> dict:
        if self.hybrid:
            first, second = list(self.score_specs)[:2]
            scores[HYBRID] = (np.asarray(scores[first]) + np.asarray(scores[second])) / 2.0
        return scores

    def __call__(self, hu: np.ndarray, pixel_mm: float, clipped_hu=None, thickness_mm: float = 3.0) -> Figures:
        volume = CTVolume(hu[None].astype(np.float32), (pixel_mm, pixel_mm, thickness_mm), clipped_hu=clipped_hu)
        result = pipeline.assess(volume, model=self.map_spec, series_model="physics", score_model=None, device="cpu")
        body_voxels = np.array([np.count_nonzero(np.isfinite(result.noise.noise_sd[0]))])
        scores, out = {}, {}
        for name, spec in self.score_specs.items():
            scored = global_score.run(volume, spec, body_voxels, "cpu")
            scores[name] = scored.summary.value if scored is not None else math.nan
            out[name] = bool(scored is None or scored.summary.domain_notes)  # not scored, or scored with a caveat
        summary = result.summary
        scores = {name: float(value) for name, value in self.with_hybrid(scores).items()}
        if self.hybrid:
            out[HYBRID] = any(out.values())
        return Figures(
            scores, _number(summary.global_quality_score), _number(summary.gnl_hu),
            {name: values[0] for name, values in result.quality_map.windows.items()}, out,
        )


def _shown(path: Path) -> str:
    """path relative to the working folder when inside it (a table that reads the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _number(value) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan


def _spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    if np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return 0.0  # a constant figure ranks nothing
    return float(spearmanr(a[keep], b[keep])[0])


def _figure_values(figures: Figures, names: list[str]) -> dict[str, float]:
    """{figure name: value, higher = better}: each score, the map mean and -GNL."""
    return {**{f"score {n}": figures.scores[n] for n in names}, "map mean": figures.map_mean, "-GNL": -figures.gnl}


def patient_of_case(case: str) -> str:
    """The patient of a real pair's case name (``real_pairs``): "L506_18 (B30)" and "L096 D45f z-611" -> L506, L096."""
    return case.split("_")[0].split()[0]


def real_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(case, quarter HU (y, x), full HU (y, x), pixel mm) of every real dose pair in data."""
    pairs = []
    for case, (quarter, full) in mayo_pairs(data / "mayo_pairs").items():
        pairs.append((f"{case} (B30)", quarter, full, MAYO_PIXEL_MM))
    for pair in read_pairs_csv(data / "mayo_ldct"):
        case = f"{pair.patient} {pair.kernel} z{pair.z_mm:g}"
        pairs.append((case, read_slice(pair.quarter), read_slice(pair.full), pair.pixel_mm))
    return pairs


def _agreement(predicted: np.ndarray, true: np.ndarray, body: np.ndarray, lung: np.ndarray, in_lung: bool):
    """(map_metrics of a predicted map (y, x) against a true SSIM map, the predicted mean minus the true mean in the
    body, or in the lung when in_lung; NaN when that region is too small)."""
    # outside the body the product's map is NaN; the true map is a trivial 1 there (air in both images)
    agreement = map_metrics(np.nan_to_num(predicted, nan=1.0), true, body, lung)
    region = (lung if in_lung else body) & np.isfinite(predicted)
    bias = predicted[region].mean() - true[region].mean() if region.sum() >= MIN_LUNG_PIXELS else math.nan
    return agreement, float(bias)


def check_pairs(assessor: Assessor, pairs, log) -> dict:
    names = assessor.names
    rows = []
    for index, (case, quarter, full, pixel_mm) in enumerate(pairs, 1):
        low, high = assessor(quarter, pixel_mm), assessor(full, pixel_mm)
        body, lung = region_masks(full, pixel_mm)
        truths = {w: ssim_map(quarter[None], full[None], QUALITY_WINDOWS_HU[w])[0] for w in low.window_maps}
        window_figures = {}
        for window, maps_key in (("soft_tissue", "map"), ("lung", "map_lung")):
            if window not in low.window_maps:
                continue
            agreement, bias = _agreement(low.window_maps[window], truths[window], body, lung, window == "lung")
            for name in ("ssim", "ssim_body", "ssim_lung"):
                window_figures[f"{maps_key}_{name}"] = agreement[name]
            window_figures[f"{maps_key}_bias"] = bias
        if "lung" in low.window_maps:  # the single-window alternative: the soft-tissue map shown inside the lung
            agreement, bias = _agreement(low.window_maps["soft_tissue"], truths["lung"], body, lung, True)
            window_figures["map_single_ssim_lung"], window_figures["map_single_bias"] = agreement["ssim_lung"], bias
        rows.append(
            {
                "case": case,
                "patient": patient_of_case(case),
                **window_figures,
                "map_quarter_below_full": low.map_mean < high.map_mean,
                **{f"score {n} quarter": low.scores[n] for n in names},
                **{f"score {n} full": high.scores[n] for n in names},
            }
        )
        log(f"  pair {index}/{len(pairs)} {case}")
    summary = {"pairs": len(rows), **_map_summary(rows, ""), "map_quarter_below_full": sum(
        r["map_quarter_below_full"] for r in rows)}
    held_out = [r for r in rows if r["patient"] in HELD_OUT_PATIENTS]
    summary.update({"held_out_pairs": len(held_out), **_map_summary(held_out, "held_out ")})
    for n in names:
        summary[f"score {n} quarter_below_full"] = sum(r[f"score {n} quarter"] < r[f"score {n} full"] for r in rows)
        summary[f"score {n} mean quarter"] = float(np.nanmean([r[f"score {n} quarter"] for r in rows]))
        summary[f"score {n} mean full"] = float(np.nanmean([r[f"score {n} full"] for r in rows]))
    return {"summary": summary, "rows": rows}


def _map_summary(rows: list[dict], prefix: str) -> dict[str, float]:
    """Means over rows of every map figure of check_pairs (NaN-aware: slices without lung), keys prefixed."""
    keys = [key for key in (rows[0] if rows else {}) if key.startswith("map") and key != "map_quarter_below_full"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a figure no slice has (no lung) is NaN
        return {f"{prefix}{key}": float(np.nanmean([row[key] for row in rows])) for key in keys}


def image_kind(file: str) -> str:
    """"low" (ldct.png), "normal" (ndct.png) or "denoised": the kind of a reader-study image by its file name."""
    return "low" if file.endswith("ldct.png") else "normal" if file.endswith("ndct.png") else "denoised"


def reader_ratings(folder: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """{(set, file): (mean over readers of (contrast + structure) / 2, method)} of a reader-study folder."""
    collected = defaultdict(list)
    methods = {}
    with (folder / "ratings.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            collected[(row["set"], row["file"])].append((float(row["contrast_1_5"]) + float(row["structure_1_5"])) / 2)
            methods[row["file"]] = row["method"]
    return {key: (float(np.mean(values)), methods[key[1]]) for key, values in collected.items()}


def check_reader_study(assessor: Assessor, folder: Path, window: tuple[float, float], log) -> dict:
    names = assessor.names
    ratings = reader_ratings(folder)
    images = []
    for index, ((set_id, file), (rating, method)) in enumerate(sorted(ratings.items()), 1):
        grey = np.asarray(Image.open(folder / file).convert("L"), np.float32)
        hu = grey / 255.0 * (window[1] - window[0]) + window[0]
        figures = assessor(hu, READER_PIXEL_MM, window, READER_THICKNESS_MM)
        kind = image_kind(file)
        images.append({"set": set_id, "file": file, "method": method, "kind": kind, "readers": rating,
                       "out_of_domain": figures.out_of_domain, **_figure_values(figures, names)})
        if index % 14 == 0:
            log(f"  {folder.name}: {index}/{len(ratings)} images")
    sets = sorted({image["set"] for image in images}, key=int)
    result = {}
    for figure in _figure_values(Figures({n: 0.0 for n in names}, 0.0, 0.0, {}), names):
        within, low_below, denoised_minus_normal = [], 0, []
        for set_id in sets:
            members = [image for image in images if image["set"] == set_id]
            within.append(_spearman([m["readers"] for m in members], [m[figure] for m in members]))
            value = {m["kind"]: m[figure] for m in members if m["kind"] != "denoised"}
            low_below += bool(value.get("low", math.nan) < value.get("normal", math.nan))
            denoised = [m[figure] for m in members if m["kind"] == "denoised"]
            denoised_minus_normal.append(float(np.nanmean(denoised)) - value.get("normal", math.nan))
        result[figure] = {
            "sets": len(sets),
            "low_below_normal": low_below,
            "within_set_spearman_mean": float(np.nanmean(within)),
            "within_set_spearman_min": float(np.nanmin(within)),
            "pooled_spearman": _spearman([m["readers"] for m in images], [m[figure] for m in images]),
            "denoised_minus_normal": float(np.nanmean(denoised_minus_normal)),
        }
    for n in names:
        result[f"score {n}"]["out_of_domain_share"] = float(np.mean([m["out_of_domain"][n] for m in images]))
    return {"summary": result, "images": images}


def crop(hu: np.ndarray, fraction: float) -> np.ndarray:
    height, width = hu.shape
    h, w = int(round(height * fraction)), int(round(width * fraction))
    top, left = (height - h) // 2, (width - w) // 2
    return hu[top : top + h, left : left + w]


def pad(hu: np.ndarray, fraction: float, value: float) -> np.ndarray:
    height, width = hu.shape
    extra_h, extra_w = int(round(height * (fraction - 1) / 2)), int(round(width * (fraction - 1) / 2))
    return np.pad(hu, ((extra_h, extra_h), (extra_w, extra_w)), constant_values=value)


def zoom(hu: np.ndarray, fraction: float) -> np.ndarray:
    """The central fraction of hu resampled (cubic) back to hu's matrix: pixels fraction x as large."""
    part = crop(hu, fraction)
    return ndimage.zoom(part, (hu.shape[0] / part.shape[0], hu.shape[1] / part.shape[1]), order=3)


VARIANTS = {
    "crop 70 %": lambda hu: crop(hu, CROP_FRACTION),
    "pad 140 %": lambda hu: pad(hu, PAD_FRACTION, PAD_HU),
    "flip": lambda hu: hu[:, ::-1],
    "rot90": lambda hu: np.rot90(hu),
}


def _change(moved: float, base: float) -> float:
    """|moved - base|; infinite when either is missing (a variant that is not scored fails the check)."""
    change = abs(moved - base)
    return change if math.isfinite(change) else math.inf


def check_invariance(assessor: Assessor, pairs, log) -> dict:
    names = assessor.names
    figures = ["map mean", *(f"score {n}" for n in names)]
    largest = {f: {v: 0.0 for v in VARIANTS} for f in figures}
    zoom_ordered = {f: 0 for f in figures}
    zoom_change = {f: 0.0 for f in figures}
    for case, quarter, full, pixel_mm in pairs:
        zoomed = {}
        for dose, hu in (("quarter", quarter), ("full", full)):
            base = _figure_values(assessor(hu, pixel_mm), names)
            for variant, change in VARIANTS.items():
                moved = _figure_values(assessor(np.ascontiguousarray(change(hu)), pixel_mm), names)
                for f in figures:
                    largest[f][variant] = max(largest[f][variant], _change(moved[f], base[f]))
            zoomed[dose] = _figure_values(assessor(zoom(hu, CROP_FRACTION), pixel_mm * CROP_FRACTION), names)
            for f in figures:
                zoom_change[f] = max(zoom_change[f], _change(zoomed[dose][f], base[f]))
        for f in figures:
            zoom_ordered[f] += bool(zoomed["quarter"][f] < zoomed["full"][f])
        log(f"  invariance: {case}")
    return {
        "largest_change": largest,
        "zoom_change": zoom_change,
        "zoom_quarter_below_full": zoom_ordered,
        "pairs": len(pairs),
    }


def check_demo(assessor: Assessor) -> dict:
    """Spearman of the per-slice score and map mean with the slice index of the demo sample (dose falls with z)."""
    sample = make_sample()
    volume = sample.low_dose
    result = pipeline.assess(volume, model=assessor.map_spec, series_model="physics", score_model=None, device="cpu")
    body_voxels = np.array([np.count_nonzero(np.isfinite(plane)) for plane in result.noise.noise_sd])
    index = np.arange(volume.shape[0])
    per_slice = {}
    for name, spec in assessor.score_specs.items():
        scored = global_score.run(volume, spec, body_voxels, "cpu")
        per_slice[name] = scored.score if scored is not None else np.full(volume.shape[0], np.nan)
    ramp = {"map mean": _spearman(index, [row.stats.quality_mean for row in result.slices])}
    ramp.update({f"score {name}": _spearman(index, values) for name, values in assessor.with_hybrid(per_slice).items()})
    return ramp


#: Gains of the real noise (quarter minus full dose) added to the full dose in the other-dose check (1 = quarter).
CHECK_NOISE_GAINS = (0.5, 2.0, 3.0)


def check_noise_gains(assessor: Assessor, pairs, log) -> dict[str, dict[str, float]]:
    """{gain: {"soft_tissue": mean bias in the body, "lung": mean bias in the lung}} of the map of full dose + gain x
    (quarter - full) against its true map, over the held-out pairs: the real noise texture at other doses."""
    held_out = [pair for pair in pairs if patient_of_case(pair[0]) in HELD_OUT_PATIENTS]
    found = {}
    for gain in CHECK_NOISE_GAINS:
        biases: dict[str, list[float]] = {"soft_tissue": [], "lung": []}
        for case, quarter, full, pixel_mm in held_out:
            image = (full + np.float32(gain) * (quarter - full)).astype(np.float32)
            maps = assessor(image, pixel_mm).window_maps
            regions = dict(zip(("soft_tissue", "lung"), region_masks(full, pixel_mm)))
            for window, predicted in maps.items():
                region = regions[window] & np.isfinite(predicted)
                if region.sum() >= MIN_LUNG_PIXELS:
                    true = ssim_map(image[None], full[None], QUALITY_WINDOWS_HU[window])[0]
                    biases[window].append(float(predicted[region].mean() - true[region].mean()))
        found[f"{gain:g}"] = {w: float(np.nanmean(v)) if v else math.nan for w, v in biases.items()}
        log(f"  noise x {gain:g}: {len(held_out)} held-out pairs")
    return found


def check_map_model(map_model: str, pairs, log) -> dict:
    """The quality map's rows of the table for one map model: the real pairs, the bias at other noise levels, the
    invariance of its mean and the demo's ramp."""
    assessor = Assessor(map_model, [])
    return {
        "pairs": check_pairs(assessor, pairs, log)["summary"],
        "noise_gains": check_noise_gains(assessor, pairs, log),
        "invariance": check_invariance(assessor, _invariance_pairs(pairs), log),
        "demo_ramp": check_demo(assessor)["map mean"],
    }


def _invariance_pairs(pairs):
    """The pairs of the invariance check: the two mayo_pairs and the first B30f mayo_ldct pair."""
    return [*pairs[:2], next(p for p in pairs if "B30f" in p[0])]


def validate(
    data: str | Path,
    map_model: str,
    score_models: list[str],
    hybrid: bool = False,
    log=print,
    map_models: tuple[str, ...] = (),
) -> dict:
    data = Path(data)
    needed = [data / "mayo_pairs", data / "mayo_ldct" / "pairs.csv", *(
        data / "reader_study" / region / "ratings.csv" for region in READER_WINDOWS_HU
    )]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise InputError(f"{data}: not the shared data folder ({missing[0]} is missing)")
    started = time.time()
    assessor = Assessor(map_model, score_models, hybrid)
    log("real dose pairs")
    pairs = real_pairs(data)
    models = {n: _shown(s.card_path) for n, s in assessor.score_specs.items()}
    if hybrid:
        models[HYBRID] = f"mean of {' and '.join(list(assessor.score_specs)[:2])}"
    results = {"score_models": models,
               "map_model": assessor.map_spec.name}
    results["pairs"] = check_pairs(assessor, pairs, log)
    log("reader study")
    results["reader_abdomen"] = check_reader_study(
        assessor, data / "reader_study" / "abdomen", READER_WINDOWS_HU["abdomen"], log
    )
    results["reader_brain"] = check_reader_study(
        assessor, data / "reader_study" / "brain", READER_WINDOWS_HU["brain"], log
    )
    log("invariance")
    results["invariance"] = check_invariance(assessor, _invariance_pairs(pairs), log)
    log("demo ramp")
    results["demo_ramp"] = check_demo(assessor)
    log("other noise levels")
    results["map_models"] = {
        assessor.map_spec.name: {
            "pairs": results["pairs"]["summary"],
            "noise_gains": check_noise_gains(assessor, pairs, log),
            "invariance": results["invariance"],
            "demo_ramp": results["demo_ramp"]["map mean"],
        }
    }
    for other in map_models:
        name = pipeline.resolve_model(other).name
        if name not in results["map_models"]:
            log(f"quality map {name}")
            results["map_models"][name] = check_map_model(other, pairs, log)
    results["seconds"] = round(time.time() - started, 1)
    return results


def _f(value, digits: int = 2) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(results: dict, command: str) -> str:
    names = list(results["score_models"])
    pairs, abdomen, brain = results["pairs"]["summary"], results["reader_abdomen"]["summary"], results[
        "reader_brain"]["summary"]
    invariance, ramp = results["invariance"], results["demo_ramp"]
    count = pairs["pairs"]
    lines = [
        "# Real-data validation",
        "",
        f"Made by: `{command}` ({results['seconds']:.0f} s on the CPU). Definitions: "
        "`CTQualityTraining/validate_real.py`. Quality map: "
        f"`{results['map_model']}`; score models: "
        + ", ".join(f"`{n}` ({source})" for n, source in results["score_models"].items())
        + ". The brain images are a 0…80 HU window export: no soft tissue (−100…150 HU) survives in them, so no "
        "noise, no map and no score are measured there (the out-of-domain check of the table).",
        "",
        "## The 0-4 score and the other figures",
        "",
        "| check | acceptance | " + " | ".join(f"score `{n}`" for n in names) + " | map mean | -GNL |",
        "|---|---|" + "---|" * (len(names) + 2),
    ]

    def row(check: str, goal: str, values: list) -> None:
        lines.append(f"| {check} | {goal} | " + " | ".join(values) + " |")

    figures = [f"score {n}" for n in names]
    row("real pairs: quarter < full", f"{count}/{count}",
        [f"{pairs[f'{f} quarter_below_full']}/{count}" for f in figures]
        + [f"{pairs['map_quarter_below_full']}/{count}", "–"])
    row("real pairs: mean quarter / full", "",
        [f"{_f(pairs[f'{f} mean quarter'])} / {_f(pairs[f'{f} mean full'])}" for f in figures] + ["", ""])
    for title, study in (("abdomen", abdomen), ("brain (out of domain)", brain)):
        keys = [*figures, "map mean", "-GNL"]
        sets = study[keys[0]]["sets"]
        row(f"reader {title}: low < normal dose", f"{sets}/{sets}" if title == "abdomen" else "",
            [f"{study[k]['low_below_normal']}/{sets}" for k in keys])
        row(f"reader {title}: within-set Spearman mean (min)", "≥ 0.6" if title == "abdomen" else "",
            [f"{_f(study[k]['within_set_spearman_mean'])} ({_f(study[k]['within_set_spearman_min'])})" for k in keys])
        row(f"reader {title}: pooled Spearman", "≥ 0.7" if title == "abdomen" else "",
            [_f(study[k]["pooled_spearman"]) for k in keys])
        row(f"reader {title}: denoised − normal dose (mean)", "< 0" if title == "abdomen" else "",
            [_f(study[k]["denoised_minus_normal"]) for k in keys])
        row(f"reader {title}: images not scored or with an out-of-domain note", "",
            [f"{100 * study[k]['out_of_domain_share']:.0f} %" for k in figures] + ["", ""])
    for variant in VARIANTS:
        row(f"invariance: largest change, {variant}", "score ≤ 0.3, map ≤ 0.05",
            [_f(invariance["largest_change"][f][variant]) for f in figures]
            + [_f(invariance["largest_change"]["map mean"][variant], 3), "–"])
    row("invariance: largest change, 0.7x zoom (pixels 0.7x)", "",
        [_f(invariance["zoom_change"][f]) for f in figures] + [_f(invariance["zoom_change"]["map mean"], 3), "–"])
    n = invariance["pairs"]
    row("invariance: 0.7x zoom, quarter < full", f"{n}/{n}",
        [f"{invariance['zoom_quarter_below_full'][f]}/{n}" for f in figures]
        + [f"{invariance['zoom_quarter_below_full']['map mean']}/{n}", "–"])
    row("demo ramp: Spearman with slice index", "≤ −0.9", [_f(ramp[f]) for f in figures] + [_f(ramp["map mean"]), "–"])
    lines += ["", *map_markdown(results["map_models"]), ""]
    return "\n".join(lines)


def map_markdown(map_models: dict) -> list[str]:
    """The quality-map table: one column per map model (check_map_model's figures)."""
    names = list(map_models)
    first = map_models[names[0]]
    count, held_out = first["pairs"]["pairs"], first["pairs"]["held_out_pairs"]
    lines = [
        "## The quality map on the real pairs",
        "",
        "Agreement = SSIM between the map and the true SSIM map (quarter dose against its full dose) of the same "
        "window (`evaluate.map_metrics`): soft-tissue window over the whole image and over the body, lung window "
        f"inside the lung; bias = the map's mean minus the true map's mean there. Held out = {held_out} pairs of "
        f"{' and '.join(HELD_OUT_PATIENTS)}, which no bundled model was trained or tuned on. Noise x g: the full "
        "dose plus g times the real noise of its quarter dose (quarter minus full; g = 1 is the quarter dose), "
        "against its true map: the real noise texture at other doses.",
        "",
        "| check | acceptance | " + " | ".join(f"map `{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]

    def row(check: str, goal: str, values: list[str]) -> None:
        lines.append(f"| {check} | {goal} | " + " | ".join(values) + " |")

    for prefix, title in (("", f"all {count} pairs"), ("held_out ", f"held out ({held_out})")):
        def figure(key: str) -> list[str]:
            return [_f(map_models[n]["pairs"].get(prefix + key, math.nan), 3) for n in names]

        row(f"{title}: soft tissue, whole image", "≥ 0.80", figure("map_ssim"))
        row(f"{title}: soft tissue, body", "≥ 0.45", figure("map_ssim_body"))
        row(f"{title}: soft tissue, bias in the body", "±0.05", figure("map_bias"))
        row(f"{title}: lung window, inside the lung", "", figure("map_lung_ssim_lung"))
        row(f"{title}: lung window, bias in the lung", "", figure("map_lung_bias"))
        row(f"{title}: single window (soft tissue) inside the lung", "< lung window", figure("map_single_ssim_lung"))
        row(f"{title}: single window (soft tissue), bias in the lung", "", figure("map_single_bias"))
    for gain in CHECK_NOISE_GAINS:
        for window, region in (("soft_tissue", "body"), ("lung", "lung")):
            row(f"held out, noise x {gain:g}: {window.replace('_', ' ')} bias in the {region}", "±0.05",
                [_f(map_models[n]["noise_gains"][f"{gain:g}"][window], 3) for n in names])
    row("quarter < full (map mean)", f"{count}/{count}",
        [f"{map_models[n]['pairs']['map_quarter_below_full']}/{count}" for n in names])
    for variant in VARIANTS:
        row(f"invariance: largest change of the mean, {variant}", "≤ 0.05",
            [_f(map_models[n]["invariance"]["largest_change"]["map mean"][variant], 3) for n in names])
    pairs = first["invariance"]["pairs"]
    row("invariance: 0.7x zoom, quarter < full", f"{pairs}/{pairs}",
        [f"{map_models[n]['invariance']['zoom_quarter_below_full']['map mean']}/{pairs}" for n in names])
    row("demo ramp: Spearman of the mean with slice index", "≤ −0.9", [_f(map_models[n]["demo_ramp"]) for n in names])
    return lines


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_cli(args) -> None:
    out = Path(args.out)
    results = validate(args.data, args.model, args.score_model, args.hybrid, map_models=tuple(args.map_model or ()))
    command = "ctqa-train " + " ".join(args.argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, command), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(_jsonable({"command": command, **results}), indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")

