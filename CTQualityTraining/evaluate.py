"""Evaluation of quality-map networks (``ctqa-train evaluate-maps``): Noise2Quality's Table 1 and real-pair checks.

Every metric is computed per window of the model (soft tissue -160..240 HU, lung -1350..150 HU; the true map of a
window is the SSIM in that window) and named "<window>/<metric>". Metrics between a predicted map P and the true
SSIM map T of one slice (both (y, x)), averaged over slices:
- ssim: mean over the whole slice of the SSIM map between P and T with the N2Q settings of ``ssim.py`` (Gaussian
  11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1), both maps clipped to [0, 1] (true SSIM can be slightly
  negative at 5 % dose).
- ssim_body: the same SSIM map averaged inside the body only (``lung.body_mask`` of the full-dose slice: lungs
  included, the air around the patient, where both maps are a trivial 1, left out).
- ssim_lung: the same inside the lung (``lung.lung_mask`` of the full-dose slice), over the slices with at least
  MIN_LUNG_PIXELS of lung; NaN when none has.
- mse: mean((P - T)^2); nrmse: ||P - T||_2 / ||T||_2 = RMSE / RMS(T), scikit-image's ``normalized_root_mse``
  default ("euclidean"). N2Q does not define its NRMSE; scikit-image's default is our assumption for comparing with
  its table.

Other results: dose_accuracy (dose head's class = true dose class) on simulated splits; the dose response per
window (the mean predicted map per simulated dose must rise strictly with dose: soft tissue over whole slices, lung
over the lung of the slices that have one); on the real Mayo pairs the true map is ssim_map(quarter dose, full
dose) and the prediction is made from the quarter-dose slice alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ctqa.errors import InputError
from ctqa.models import checkpoints
from ctqa.models.inference import predict_volume
from ctqa.models.networks import QualityNet
from ctqa.physics.lung import QUALITY_WINDOWS_HU, body_mask, lung_mask
from ctqa.physics.ssim import ssim_map

from .datasets import MAYO_PIXEL_MM, mayo_pair_files, read_mayo_pair
from .labels import DOSE_CLASSES

#: Published N2Q Table 1 (in-domain, N2Q variant): SSIM and NRMSE between predicted and true maps.
N2Q_PUBLISHED = {"ssim": 0.7664, "nrmse": 0.2437}
METRICS = ("ssim", "ssim_body", "ssim_lung", "mse", "nrmse")
#: Shard array of the true SSIM map of each window.
LABEL_KEYS = {"soft_tissue": "ssim", "lung": "ssim_lung"}
SPLIT_KEYS = ("hu", "reference", *LABEL_KEYS.values(), "dose", "dose_class", "kernel_class", "method", "slice")
#: A slice counts for ssim_lung and the lung dose response when its lung mask has at least this many pixels.
MIN_LUNG_PIXELS = 500


def map_metrics(
    predicted: np.ndarray, true: np.ndarray, body: np.ndarray | None = None, lung: np.ndarray | None = None
) -> dict[str, float]:
    """{"ssim", "ssim_body", "ssim_lung", "mse", "nrmse"} between a predicted and a true SSIM map, both (y, x)
    (module docstring); body and lung: bool (y, x) masks (None: that metric is NaN)."""
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    mse = float(np.mean((predicted - true) ** 2))
    structural = ssim_map(np.clip(predicted, 0, 1)[None], np.clip(true, 0, 1)[None], window=(0.0, 1.0))[0]

    def inside(mask: np.ndarray | None, least: int = 1) -> float:
        return float(structural[mask].mean()) if mask is not None and mask.sum() >= least else float("nan")

    return {
        "ssim": float(structural.mean()),
        "ssim_body": inside(body),
        "ssim_lung": inside(lung, MIN_LUNG_PIXELS),
        "mse": mse,
        "nrmse": float(np.sqrt(mse / np.mean(true**2))),
    }


def region_masks(reference_hu: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(body, lung) bool (y, x) masks of a full-dose slice (y, x) in HU with pixels of pixel_mm."""
    body = body_mask(reference_hu)
    return body, lung_mask(reference_hu, pixel_mm, body)


def load_split(data: str | Path, split: str) -> dict[str, list]:
    """Simulated samples (with SSIM labels) of one split of a dataset: {key: list over samples}.

    Keys: "hu" int16 (y, x) HU, "reference" int16 (y, x) HU (full dose), "ssim" and "ssim_lung" float16 (y, x)
    (soft-tissue and lung window labels), "dose", "dose_class", "kernel_class", "method", "slice", "pixel_mm" (per
    sample) and "source" (source id). InputError for a dataset built before the lung-window labels.
    """
    data = Path(data)
    try:
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{data}: not a dataset folder (no manifest.json)") from None
    out: dict[str, list] = {key: [] for key in SPLIT_KEYS + ("pixel_mm", "source")}
    for source in manifest["sources"]:
        if source["split"] != split:
            continue
        shard_path = data / source["shard"]
        if not shard_path.is_file():
            raise InputError(f"{shard_path}: shard missing (rerun ctqa-train simulate to finish the dataset)")
        with np.load(shard_path) as shard:
            if "ssim" not in shard:
                continue  # acquired images without labels (LDCTIQAC2023)
            if "ssim_lung" not in shard:
                raise InputError(
                    f"{shard_path}: no lung-window labels (an older dataset); rebuild it with ctqa-train simulate"
                )
            arrays = {key: shard[key] for key in SPLIT_KEYS + ("pixel_mm",)}
        for index in range(len(arrays["hu"])):
            for key in SPLIT_KEYS + ("pixel_mm",):
                out[key].append(arrays[key][index])
            out["source"].append(source["id"])
    return out


def predict_samples(model: QualityNet, split: dict[str, list], device="cpu", batch_size: int = 8):
    """(maps: list over samples of {window: float32 (y, x)}, log dose (n,) or None) for every sample of a split,
    batched by size."""
    maps: list = [None] * len(split["hu"])
    log_dose = np.full(len(split["hu"]), np.nan, np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for index, hu in enumerate(split["hu"]):
        by_shape.setdefault(hu.shape, []).append(index)
    for indices in by_shape.values():
        volume = np.stack([split["hu"][i] for i in indices]).astype(np.float32)
        prediction = predict_volume(model, volume, batch_size=batch_size, device=device)
        for position, index in enumerate(indices):
            maps[index] = {window: quality[position] for window, quality in prediction.maps.items()}
            if prediction.log_dose is not None:
                log_dose[index] = prediction.log_dose[position]
    return maps, None if model.dose_head is None else log_dose


def split_masks(split: dict[str, list]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(body, lung) masks of every sample of a split, from its full-dose reference (``region_masks``)."""
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    masks = []
    for index, reference in enumerate(split["reference"]):
        key = (split["source"][index], int(split["slice"][index]), int(split["kernel_class"][index]))
        if key not in cache:
            cache[key] = region_masks(reference, float(split["pixel_mm"][index]))
        masks.append(cache[key])
    return masks


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def split_metrics(
    maps: list[dict[str, np.ndarray]],
    log_dose: np.ndarray | None,
    split: dict[str, list],
    masks: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Mean map metrics "<window>/<metric>" of predicted maps over a split's samples (+ "dose_accuracy" with dose
    estimates); masks: ``split_masks(split)`` when already made."""
    masks = split_masks(split) if masks is None else masks
    metrics = {}
    for window in maps[0]:
        truths = split[LABEL_KEYS[window]]
        per_sample = [map_metrics(p[window], t, *m) for p, t, m in zip(maps, truths, masks)]
        metrics.update({f"{window}/{key}": _nanmean([m[key] for m in per_sample]) for key in METRICS})
    if log_dose is not None:
        predicted = np.abs(np.log(DOSE_CLASSES)[None] - log_dose[:, None]).argmin(axis=1)
        metrics["dose_accuracy"] = float(np.mean(predicted == np.asarray(split["dose_class"])))
    return metrics


def evaluate_split(
    model: QualityNet, split: dict[str, list], device="cpu", masks: list | None = None
) -> dict[str, float]:
    """Mean map metrics over the samples of a split (+ "dose_accuracy" for a model with a dose head); masks:
    ``split_masks(split)`` when already made."""
    with torch.inference_mode():
        return split_metrics(*predict_samples(model, split, device), split, masks)


def dose_response(
    maps: list[dict[str, np.ndarray]], split: dict[str, list], window: str = "soft_tissue", lungs: list | None = None
) -> dict:
    """Mean predicted and true map of one window per simulated dose over a split's slices (whole slices, or only
    inside lungs: bool (y, x) masks per sample, slices with fewer than MIN_LUNG_PIXELS left out); "monotonic": the
    predicted mean rises strictly with dose, "monotonic_fraction": the share of (source, slice, kernel, method)
    series that do so. Empty lists when no slice counts."""
    dose_of = [round(float(d), 6) for d in split["dose"]]  # float32 in the shards
    used = [i for i in range(len(maps)) if lungs is None or lungs[i].sum() >= MIN_LUNG_PIXELS]
    doses = sorted({dose_of[i] for i in used})
    predicted = {d: [] for d in doses}
    true = {d: [] for d in doses}
    series: dict[tuple, dict[float, float]] = {}
    for index in used:
        dose, region = dose_of[index], slice(None) if lungs is None else lungs[index]
        mean = float(maps[index][window][region].mean())
        predicted[dose].append(mean)
        true[dose].append(float(np.asarray(split[LABEL_KEYS[window]][index], np.float32)[region].mean()))
        key = tuple(int(split[k][index]) for k in ("slice", "kernel_class", "method")) + (split["source"][index],)
        series.setdefault(key, {})[dose] = mean
    means = [float(np.mean(predicted[d])) for d in doses]
    rising = [all(np.diff([s[d] for d in sorted(s)]) > 0) for s in series.values() if len(s) > 1]
    return {
        "doses": doses,
        "predicted_mean": means,
        "true_mean": [float(np.mean(true[d])) for d in doses],
        "monotonic": bool(np.all(np.diff(means) > 0)),
        "monotonic_fraction": float(np.mean(rising)) if rising else float("nan"),
    }


def mayo_pairs(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{case: (quarter-dose HU (y, x), full-dose HU (y, x))} from <case>_input.npy / <case>_target.npy slices."""
    pairs = {}
    for case, target, quarter in mayo_pair_files(Path(folder)):
        full, low = read_mayo_pair(target, quarter)
        if full.shape[0] != 1:
            raise InputError(f"{target}: {full.shape[0]} slices; expected one 2D slice")
        pairs[case] = (low[0], full[0])
    if not pairs:
        raise InputError(f"{folder}: no Mayo pairs (<case>_input.npy + <case>_target.npy)")
    return pairs


def evaluate_mayo(model: QualityNet, pairs: dict, device="cpu", pixel_mm: float = MAYO_PIXEL_MM) -> dict[str, dict]:
    """Per case and window ("<window>/<key>"): map metrics of the prediction from the quarter dose against
    ssim_map(quarter, full) in that window, the mean of both maps and the mean predicted map of the full-dose
    slice; and (dose head) the estimated dose fraction."""
    results = {}
    for case, (quarter, full) in pairs.items():
        prediction = predict_volume(model, np.stack([quarter, full]), device=device)
        masks = region_masks(full, pixel_mm)
        result = {}
        for window, quality in prediction.maps.items():
            true = ssim_map(quarter[None], full[None], QUALITY_WINDOWS_HU[window])[0]
            metrics = map_metrics(quality[0], true, *masks)
            metrics.update(
                predicted_mean=float(quality[0].mean()),
                true_mean=float(true.mean()),
                full_dose_predicted_mean=float(quality[1].mean()),
            )
            result.update({f"{window}/{key}": value for key, value in metrics.items()})
        if prediction.log_dose is not None:
            result["estimated_dose_fraction"] = float(np.exp(prediction.log_dose[0]))
        results[case] = result
    return results


def evaluate_runs(data: str | Path, runs, mayo: str | Path | None = None, device="cpu") -> dict:
    """Evaluate each run's final checkpoint (RUN_DIR/model) on the test split of data and on the Mayo pairs.

    Returns {"dataset", "test_samples", "test_sources", "variants": {name: {"run", "steps", "wall_time_s",
    "variant", "windows", "test": metrics, "dose_response", "mayo": {case: metrics}}}}; name is the run folder's
    name.
    """
    test = load_split(data, "test")
    if not test["hu"]:
        raise InputError(f"{data}: the test split has no simulated samples")
    pairs = mayo_pairs(mayo) if mayo else {}
    masks = split_masks(test)
    results = {
        "dataset": str(data),
        "test_samples": len(test["hu"]),
        "test_sources": sorted(set(test["source"])),
        "variants": {},
    }
    for run in map(Path, runs):
        model, card = checkpoints.load(run / "model")
        name = run.name
        with torch.inference_mode():
            maps, log_dose = predict_samples(model, test, device)
        metrics = split_metrics(maps, log_dose, test, masks)
        lungs = [lung for _, lung in masks]
        results["variants"][name] = {
            "run": str(run),
            "variant": card["training"].get("variant"),
            "steps": card["training"].get("step"),
            "wall_time_s": card["training"].get("wall_time_s"),
            "windows": list(model.config.windows),
            "test": metrics,
            "dose_response": {
                window: dose_response(maps, test, window, lungs if window == "lung" else None)
                for window in model.config.windows
            },
            "mayo": evaluate_mayo(model, pairs, device) if pairs else {},
        }
    return results


def _f(value, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


WINDOW_TITLES = {"soft_tissue": "soft tissue", "lung": "lung"}


def markdown(results: dict, command: str) -> str:
    """The evaluation as Markdown: Table 1 per window (test split), the Mayo pairs, the dose response, the command."""
    variants = results["variants"]
    windows = list(dict.fromkeys(w for v in variants.values() for w in v["windows"]))
    lines = [
        "# Noise2Quality-style evaluation of the learned quality maps",
        "",
        f"Made by: `{command}`",
        "",
        "Metrics between predicted and true SSIM maps per slice, averaged over slices, for each window the model "
        "predicts (soft tissue −160…240 HU, lung −1350…150 HU; definitions in `CTQualityTraining/evaluate.py`): "
        "SSIM = mean SSIM map between the two maps (N2Q settings, data range 1) over the whole slice; SSIM body = "
        "the same inside the body only (air around the patient, a trivial 1 in both maps, left out); SSIM lung = "
        "inside the lung mask (`ctqa/physics/lung.py`, slices with at least "
        f"{MIN_LUNG_PIXELS} lung pixels); MSE; NRMSE = ||P − T||₂ / ||T||₂ (= RMSE / RMS of the true map, "
        "scikit-image's default). – = not predicted by that model (single-window models) or no such region.",
        "",
        f"## Held-out simulated test split ({results['test_samples']} slices; patients never used in training)",
        "",
        f"Dataset `{results['dataset']}`, test sources: " + ", ".join(f"`{s}`" for s in results["test_sources"]) + ".",
    ]
    for window in windows:
        lines += [
            "",
            f"### {WINDOW_TITLES[window]} window",
            "",
            "| run | variant | steps | train time (s) | SSIM ↑ | SSIM body ↑ | SSIM lung ↑ | MSE ↓ | NRMSE ↓ "
            "| dose class accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            t = {key: v["test"].get(f"{window}/{key}") for key in METRICS}
            lines.append(
                f"| {name} | {v['variant']} | {v['steps']} | {_f(v['wall_time_s'], 0)} | {_f(t['ssim'])} | "
                f"{_f(t['ssim_body'])} | "
                f"{_f(t['ssim_lung'])} | {_f(t['mse'], 5)} | {_f(t['nrmse'])} | "
                f"{_f(v['test'].get('dose_accuracy'), 3)} |"
            )
        if window == "soft_tissue":
            lines.append(
                f"| N2Q published (in-domain, its own data) | N2Q | | | {N2Q_PUBLISHED['ssim']} | | | | "
                f"{N2Q_PUBLISHED['nrmse']} | |"
            )
    cases = sorted({case for v in variants.values() for case in v["mayo"]})
    if cases:
        lines += [
            "",
            "## Real Mayo quarter-dose / full-dose pairs (never used in training)",
            "",
            "True map = SSIM map of the real quarter dose against the full dose in the window; the prediction sees "
            "the quarter dose only. Also: mean of the predicted map on the full-dose slice (ideally ≈ 1) and the "
            "dose head's estimate for the quarter dose (ideally 0.25). Both slices (pelvis, abdomen) hold no lung.",
            "",
            "| run | case | window | SSIM ↑ | SSIM body ↑ | MSE ↓ | NRMSE ↓ | mean true | mean predicted "
            "| mean predicted, full dose | estimated dose |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            for case in cases:
                m = v["mayo"][case]
                for window in v["windows"]:
                    g = {key.split("/", 1)[1]: value for key, value in m.items() if key.startswith(f"{window}/")}
                    lines.append(
                        f"| {name} | {case} | {WINDOW_TITLES[window]} | {_f(g['ssim'])} | {_f(g['ssim_body'])} | "
                        f"{_f(g['mse'], 5)} | {_f(g['nrmse'])} | {_f(g['true_mean'])} | {_f(g['predicted_mean'])} | "
                        f"{_f(g['full_dose_predicted_mean'])} | {_f(m.get('estimated_dose_fraction'), 3)} |"
                    )
    for window in windows:
        responses = {name: v["dose_response"][window] for name, v in variants.items() if window in v["dose_response"]}
        reference = next((r for r in responses.values() if r["doses"]), None)
        if reference is None:
            continue
        where = "whole slices" if window == "soft_tissue" else "inside the lung mask of the slices that have one"
        lines += [
            "",
            f"## Dose response on the test split, {WINDOW_TITLES[window]} window",
            "",
            f"Mean predicted map per simulated dose over {where} (true mean in the last row); monotonic = the mean "
            "rises strictly with dose; series = share of single (slice, kernel) series that rise strictly.",
            "",
            "| run | " + " | ".join(f"{d:g}" for d in reference["doses"]) + " | monotonic | series |",
            "|---|" + "---|" * len(reference["doses"]) + "---|---|",
        ]
        for name, r in responses.items():
            lines.append(
                f"| {name} | "
                + " | ".join(_f(x) for x in r["predicted_mean"])
                + f" | {'yes' if r['monotonic'] else 'no'} | {_f(r['monotonic_fraction'], 2)} |"
            )
        lines.append("| true map | " + " | ".join(_f(x) for x in reference["true_mean"]) + " | | |")
    return "\n".join(lines) + "\n"
