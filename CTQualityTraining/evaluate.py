"""Evaluation of quality-map networks (``ctqa-train evaluate-maps``): Noise2Quality's Table 1 and real-pair checks.

Metrics between a predicted map P and the true SSIM map T of one slice (both (y, x), whole slice), averaged over
slices:
- SSIM: mean of the SSIM map between P and T with the N2Q settings of ``ssim.py`` (Gaussian 11 x 11, sigma 1.5,
  K1 0.01, K2 0.03, data range 1), both maps clipped to [0, 1] (true SSIM can be slightly negative at 5 % dose).
- MSE: mean((P - T)^2).
- NRMSE: ||P - T||_2 / ||T||_2 = RMSE / RMS(T), scikit-image's ``normalized_root_mse`` default ("euclidean").
  N2Q does not define its NRMSE; scikit-image's default is our assumption for comparing with its table.

Other results: dose_accuracy (dose head's class = true dose class) on simulated splits; the monotonicity check (the
mean predicted map over test slices per simulated dose must rise strictly with dose); on the real Mayo pairs the
true map is ssim_map(quarter dose, full dose) and the prediction is made from the quarter-dose slice alone.
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
from ctqa.physics.ssim import ssim_map

from .datasets import mayo_pair_files, read_mayo_pair
from .labels import DOSE_CLASSES

#: Published N2Q Table 1 (in-domain, N2Q variant): SSIM and NRMSE between predicted and true maps.
N2Q_PUBLISHED = {"ssim": 0.7664, "nrmse": 0.2437}
METRICS = ("ssim", "mse", "nrmse")
SPLIT_KEYS = ("hu", "reference", "ssim", "dose", "dose_class", "kernel_class", "method", "slice")


def map_metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """{"ssim", "mse", "nrmse"} between a predicted and a true SSIM map, both (y, x) (module docstring)."""
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    mse = float(np.mean((predicted - true) ** 2))
    structural = ssim_map(np.clip(predicted, 0, 1)[None], np.clip(true, 0, 1)[None], window=(0.0, 1.0))
    return {"ssim": float(structural.mean()), "mse": mse, "nrmse": float(np.sqrt(mse / np.mean(true**2)))}


def load_split(data: str | Path, split: str) -> dict[str, list]:
    """Simulated samples (with SSIM labels) of one split of a dataset: {key: list over samples}.

    Keys: "hu" int16 (y, x) HU, "reference" int16 (y, x) HU (full dose), "ssim" float16 (y, x), "dose",
    "dose_class", "kernel_class", "method", "slice" (per sample) and "source" (source id).
    """
    data = Path(data)
    try:
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{data}: not a dataset folder (no manifest.json)") from None
    out: dict[str, list] = {key: [] for key in SPLIT_KEYS + ("source",)}
    for source in manifest["sources"]:
        if source["split"] != split:
            continue
        shard_path = data / source["shard"]
        if not shard_path.is_file():
            raise InputError(f"{shard_path}: shard missing (rerun ctqa-train simulate to finish the dataset)")
        with np.load(shard_path) as shard:
            if "ssim" not in shard:
                continue  # acquired images without labels (LDCTIQAC2023)
            arrays = {key: shard[key] for key in SPLIT_KEYS}
        for index in range(len(arrays["hu"])):
            for key in SPLIT_KEYS:
                out[key].append(arrays[key][index])
            out["source"].append(source["id"])
    return out


def predict_samples(model: QualityNet, split: dict[str, list], device="cpu", batch_size: int = 8):
    """(quality maps: list of float32 (y, x), log dose (n,) or None) for every sample of a split, batched by size."""
    maps: list = [None] * len(split["hu"])
    log_dose = np.full(len(split["hu"]), np.nan, np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for index, hu in enumerate(split["hu"]):
        by_shape.setdefault(hu.shape, []).append(index)
    for indices in by_shape.values():
        volume = np.stack([split["hu"][i] for i in indices]).astype(np.float32)
        prediction = predict_volume(model, volume, batch_size=batch_size, device=device)
        for position, index in enumerate(indices):
            maps[index] = prediction.quality[position]
            if prediction.log_dose is not None:
                log_dose[index] = prediction.log_dose[position]
    return maps, None if model.dose_head is None else log_dose


def split_metrics(maps: list[np.ndarray], log_dose: np.ndarray | None, split: dict[str, list]) -> dict[str, float]:
    """Mean map metrics of predicted maps over a split's samples (+ "dose_accuracy" with dose estimates)."""
    per_sample = [map_metrics(p, t) for p, t in zip(maps, split["ssim"])]
    metrics = {key: float(np.mean([m[key] for m in per_sample])) for key in METRICS}
    if log_dose is not None:
        predicted = np.abs(np.log(DOSE_CLASSES)[None] - log_dose[:, None]).argmin(axis=1)
        metrics["dose_accuracy"] = float(np.mean(predicted == np.asarray(split["dose_class"])))
    return metrics


def evaluate_split(model: QualityNet, split: dict[str, list], device="cpu") -> dict[str, float]:
    """Mean map metrics over the samples of a split (+ "dose_accuracy" for a model with a dose head)."""
    with torch.inference_mode():
        return split_metrics(*predict_samples(model, split, device), split)


def dose_response(maps: list[np.ndarray], split: dict[str, list]) -> dict:
    """Mean predicted and true map per simulated dose over a split's slices; "monotonic": the predicted mean rises
    strictly with dose, "monotonic_fraction": the share of (source, slice, kernel, method) series that do so."""
    dose_of = [round(float(d), 6) for d in split["dose"]]  # float32 in the shards
    doses = sorted(set(dose_of))
    predicted = {d: [] for d in doses}
    true = {d: [] for d in doses}
    series: dict[tuple, dict[float, float]] = {}
    for index, quality in enumerate(maps):
        dose = dose_of[index]
        predicted[dose].append(float(quality.mean()))
        true[dose].append(float(np.asarray(split["ssim"][index], np.float32).mean()))
        key = tuple(int(split[k][index]) for k in ("slice", "kernel_class", "method")) + (split["source"][index],)
        series.setdefault(key, {})[dose] = float(quality.mean())
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


def evaluate_mayo(model: QualityNet, pairs: dict, device="cpu") -> dict[str, dict]:
    """Per case: map metrics of the prediction from the quarter dose against ssim_map(quarter, full), the mean of
    both maps, the mean predicted map of the full-dose slice and (dose head) the estimated dose fraction."""
    results = {}
    for case, (quarter, full) in pairs.items():
        true = ssim_map(quarter[None], full[None])[0]
        prediction = predict_volume(model, np.stack([quarter, full]), device=device)
        result = map_metrics(prediction.quality[0], true)
        result.update(
            predicted_mean=float(prediction.quality[0].mean()),
            true_mean=float(true.mean()),
            full_dose_predicted_mean=float(prediction.quality[1].mean()),
        )
        if prediction.log_dose is not None:
            result["estimated_dose_fraction"] = float(np.exp(prediction.log_dose[0]))
        results[case] = result
    return results


def evaluate_runs(data: str | Path, runs, mayo: str | Path | None = None, device="cpu") -> dict:
    """Evaluate each run's final checkpoint (RUN_DIR/model) on the test split of data and on the Mayo pairs.

    Returns {"dataset", "test_samples", "test_sources", "variants": {name: {"run", "steps", "wall_time_s",
    "test": metrics, "dose_response", "mayo": {case: metrics}}}}; name is the run's variant (its run folder name
    when two runs share one).
    """
    test = load_split(data, "test")
    if not test["hu"]:
        raise InputError(f"{data}: the test split has no simulated samples")
    pairs = mayo_pairs(mayo) if mayo else {}
    results = {
        "dataset": str(data),
        "test_samples": len(test["hu"]),
        "test_sources": sorted(set(test["source"])),
        "variants": {},
    }
    for run in map(Path, runs):
        model, card = checkpoints.load(run / "model")
        variant = card["training"].get("variant", run.name)
        name = variant if variant not in results["variants"] else run.name
        with torch.inference_mode():
            maps, log_dose = predict_samples(model, test, device)
        metrics = split_metrics(maps, log_dose, test)
        results["variants"][name] = {
            "run": str(run),
            "steps": card["training"].get("step"),
            "wall_time_s": card["training"].get("wall_time_s"),
            "test": metrics,
            "dose_response": dose_response(maps, test),
            "mayo": evaluate_mayo(model, pairs, device) if pairs else {},
        }
    return results


def _f(value, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict, command: str) -> str:
    """The evaluation as Markdown: Table 1 (test split), the Mayo pairs, the dose response, the command."""
    variants = results["variants"]
    lines = [
        "# Noise2Quality-style evaluation of the learned quality maps",
        "",
        f"Made by: `{command}`",
        "",
        "Metrics between predicted and true SSIM maps per slice, averaged over slices (definitions in "
        "`CTQualityTraining/evaluate.py`): SSIM = mean SSIM map between the two maps (N2Q settings, data range 1); "
        "MSE; NRMSE = ||P − T||₂ / ||T||₂ (= RMSE / RMS of the true map, scikit-image's default).",
        "",
        f"## Held-out simulated test split ({results['test_samples']} slices; patients never used in training)",
        "",
        f"Dataset `{results['dataset']}`, test sources: " + ", ".join(f"`{s}`" for s in results["test_sources"]) + ".",
        "",
        "| variant | steps | train time (s) | SSIM ↑ | MSE ↓ | NRMSE ↓ | dose class accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        t = v["test"]
        lines.append(
            f"| {name} | {v['steps']} | {_f(v['wall_time_s'], 0)} | {_f(t['ssim'])} | {_f(t['mse'], 5)} | "
            f"{_f(t['nrmse'])} | {_f(t.get('dose_accuracy'), 3)} |"
        )
    lines.append(
        f"| N2Q published (in-domain, its own data) | | | {N2Q_PUBLISHED['ssim']} | | {N2Q_PUBLISHED['nrmse']} | |"
    )
    cases = sorted({case for v in variants.values() for case in v["mayo"]})
    if cases:
        lines += [
            "",
            "## Real Mayo quarter-dose / full-dose pairs (never used in training)",
            "",
            "True map = SSIM map of the real quarter dose against the full dose; the prediction sees the "
            "quarter dose only. Also: mean of the predicted map on the full-dose slice (ideally ≈ 1) and the "
            "dose head's estimate for the quarter dose (ideally 0.25).",
            "",
            "| variant | case | SSIM ↑ | MSE ↓ | NRMSE ↓ | mean true | mean predicted "
            "| mean predicted, full dose | estimated dose |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            for case in cases:
                m = v["mayo"][case]
                lines.append(
                    f"| {name} | {case} | {_f(m['ssim'])} | {_f(m['mse'], 5)} | {_f(m['nrmse'])} | "
                    f"{_f(m['true_mean'])} | {_f(m['predicted_mean'])} | "
                    f"{_f(m['full_dose_predicted_mean'])} | {_f(m.get('estimated_dose_fraction'), 3)} |"
                )
    doses = next(iter(variants.values()))["dose_response"]["doses"]
    lines += [
        "",
        "## Dose response on the test split",
        "",
        "Mean predicted map per simulated dose (true mean in the last row); monotonic = the mean rises "
        "strictly with dose; series = share of single (slice, kernel) series that rise strictly.",
        "",
        "| variant | " + " | ".join(f"{d:g}" for d in doses) + " | monotonic | series |",
        "|---|" + "---|" * len(doses) + "---|---|",
    ]
    for name, v in variants.items():
        r = v["dose_response"]
        lines.append(
            f"| {name} | "
            + " | ".join(_f(x) for x in r["predicted_mean"])
            + f" | {'yes' if r['monotonic'] else 'no'} | {_f(r['monotonic_fraction'], 2)} |"
        )
    r = next(iter(variants.values()))["dose_response"]
    lines.append("| true map | " + " | ".join(_f(x) for x in r["true_mean"]) + " | | |")
    return "\n".join(lines) + "\n"
