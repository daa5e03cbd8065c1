"""Chest CT-IQA series classifier: training data from a simulated dataset, training, evaluation, physics classifier
and the eq. 4 score fit.

Series: every (source, kernel, dose) of a dataset built by ``ctqa-train simulate`` (kernels native / smooth / lung,
all slices of each source so that neighbours are adjacent) is one series; thick series are made by averaging
``THICKNESS_FACTORS`` adjacent slices (``projection.thicken``). Labels:

- window: "lung" for the lung kernel, "soft_tissue" for the smooth kernel and for the source's own (soft-tissue)
  reconstruction ("native"); other kernels are not labelled.
- dose: "standard" at dose fractions >= STANDARD_MIN_DOSE of the source acquisition (taken as routine exposure),
  "low" at <= LOW_MAX_DOSE; fractions in between are left unlabelled (they still train the regression heads). A
  source whose DICOM CTDIvol is already a low-dose exposure is "low" at every fraction.
- SNR: the core's (soft-tissue mean HU + 1000) / GNL; BRISQUE: ``ctqa.physics.brisque.series_brisque`` (both per
  thick slice, averaged over the slices a sample covers).
- fitted-score target: the dataset's surrogate 0-4 score per slice (labels.surrogate_score: the mean SSIM against
  the full-dose image of the same kernel over the body, mapped linearly from [0.5, 1] to [0, 4]).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import spearmanr
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.models import registry, series_network
from ctqa.models.registry import read_json
from ctqa.models.series_network import (
    DOSES,
    WINDOWS,
    SeriesNet,
    SeriesNetConfig,
    crop_centres,
    network_input,
    predict_series,
    side_features,
)
from ctqa.physics.brisque import series_brisque
from ctqa.physics.noise import analyse_noise
from ctqa.physics.series import (
    LEGACY_FEATURES,
    PhysicsClassifier,
    feature_values,
    series_physics,
    slice_thickness_mm,
)
from ctqa.tasks.series_panel import LOW_DOSE_CTDIVOL_MGY
from ctqa.volume import Acquisition, CTVolume

from .export import register
from .projection import KERNEL_NAMES, thicken
from .trainer import hardware, manifest_sha256

THICKNESS_FACTORS = (1, 2)
STANDARD_MIN_DOSE = 0.7
LOW_MAX_DOSE = 0.3
WINDOW_OF_KERNEL = {"native": "soft_tissue", "smooth": "soft_tissue", "lung": "lung"}
#: Stack depths of training batches and how often each is drawn: single slices from every source, deeper stacks
#: only from the sources with adjacent slices (half of the batches, so that these few volumes do not dominate).
DEPTHS = (1, 2, 4)
LOG_EVERY = 100  # steps between loss lines on stderr when there is no progress bar
DEPTH_WEIGHTS = (0.5, 0.25, 0.25)


@dataclass
class Series:
    """One simulated series (thin slices); per-slice targets per thickness factor k are filled by ``measure``.

    hu: float32 (z, y, x) HU; window / dose: class index or -1 (unlabelled); score: (z,) surrogate 0-4 per slice.
    snr[k], brisque[k], wed[k]: (z // k,) per thick slice (NaN where not measurable).
    """

    id: str
    group: str
    split: str
    hu: np.ndarray
    pixel_mm: float
    thickness_mm: float
    dose_fraction: float
    window: int
    dose: int
    score: np.ndarray
    snr: dict[int, np.ndarray] = field(default_factory=dict)
    brisque: dict[int, np.ndarray] = field(default_factory=dict)
    wed: dict[int, np.ndarray] = field(default_factory=dict)

    def thick(self, k: int) -> np.ndarray:
        return thicken(self.hu, k)


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values, NaN when there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def dose_label(dose: float, source_ctdivol_mgy: float | None = None) -> int:
    """Index in DOSES of a dose fraction of the source acquisition, -1 between the classes. A source whose CTDIvol
    tag is already a low-dose exposure (<= series_panel.LOW_DOSE_CTDIVOL_MGY) is low at every fraction."""
    if source_ctdivol_mgy is not None and source_ctdivol_mgy <= LOW_DOSE_CTDIVOL_MGY:
        return DOSES.index("low")
    if dose >= STANDARD_MIN_DOSE:
        return DOSES.index("standard")
    return DOSES.index("low") if dose <= LOW_MAX_DOSE else -1


def _source_acquisition(path: str) -> tuple[float, float | None]:
    """(slice thickness mm: DICOM SliceThickness, else the slice spacing; CTDIvol mGy or None) of a source."""
    volume = read_volume(path)
    return float(slice_thickness_mm(volume) or volume.spacing[2]), (
        volume.acquisition.ctdivol_mgy if volume.acquisition is not None else None
    )


def load_series(data: str | Path) -> list[Series]:
    """Every labelled-kernel series of a dataset (module docstring), in manifest order."""
    data = Path(data)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    out = []
    for source in manifest["sources"]:
        with np.load(data / source["shard"]) as shard:
            arrays = {key: shard[key] for key in ("hu", "dose", "kernel_class", "slice", "score", "pixel_mm")}
        thickness, ctdivol = _source_acquisition(source["path"])
        for kernel_index, kernel in enumerate(KERNEL_NAMES):
            if kernel not in WINDOW_OF_KERNEL:
                continue
            for dose in np.unique(arrays["dose"]):
                chosen = np.flatnonzero((arrays["kernel_class"] == kernel_index) & (arrays["dose"] == dose))
                if chosen.size == 0:
                    continue
                chosen = chosen[np.argsort(arrays["slice"][chosen])]
                out.append(
                    Series(
                        id=f"{source['id']}:{kernel}:{float(dose):g}",
                        group=source["group"],
                        split=source["split"],
                        hu=arrays["hu"][chosen].astype(np.float32),
                        pixel_mm=float(arrays["pixel_mm"][chosen[0]]),
                        thickness_mm=thickness,
                        dose_fraction=float(dose),
                        window=WINDOWS.index(WINDOW_OF_KERNEL[kernel]),
                        dose=dose_label(float(dose), ctdivol),
                        score=arrays["score"][chosen].astype(np.float32),
                    )
                )
    return out


def _slice_measures(hu: np.ndarray, pixel_mm: float, thickness_mm: float) -> tuple[float, float, float]:
    """(SNR, BRISQUE, water-equivalent diameter mm) of one (y, x) HU slice, as the product measures them."""
    volume = CTVolume(hu[None], (pixel_mm, pixel_mm, thickness_mm))
    noise = analyse_noise(volume)
    measured = series_physics(volume, noise)
    return noise.snr, series_brisque(volume.hu, noise.body_mask), measured.wed_mm


def measure(series: list[Series], cache: Path | None = None, progress: bool = True) -> None:
    """Fill the per-thick-slice targets of every series (cached in `cache`, an .npz keyed by series id and k)."""
    stored = dict(np.load(cache)) if cache is not None and cache.is_file() else {}
    for item in tqdm(series, desc="measure", unit="series", disable=not progress):
        for k in THICKNESS_FACTORS:
            if item.hu.shape[0] < k:
                continue
            key = f"{item.id}|{k}"
            if key not in stored:
                thick = item.thick(k)
                stored[key] = np.array([_slice_measures(s, item.pixel_mm, item.thickness_mm * k) for s in thick])
            item.snr[k], item.brisque[k], item.wed[k] = stored[key].T
    if cache is not None:
        np.savez(cache, **stored)


@dataclass(frozen=True)
class SeriesTrainSettings:
    steps: int = 1500
    batch: int = 24
    lr: float = 2e-3
    weights: tuple[float, float, float, float] = (1.0, 1.0, 0.3, 0.3)  # lambda1..4: window, dose, SNR, BRISQUE
    variant: str = "separate"
    seed: int = 0


def target_statistics(series: list[Series]) -> dict:
    """Mean and SD of the SNR and BRISQUE targets over the training series (the card's "targets")."""
    stats = {}
    for name in ("snr", "brisque"):
        values = np.concatenate([getattr(s, name)[k] for s in series for k in getattr(s, name)])
        values = values[np.isfinite(values)]
        stats[name] = {"mean": float(values.mean()), "sd": float(values.std() + 1e-6)}
    return stats


class StackSampler:
    """Random augmented training stacks. Per batch a depth from DEPTHS (at most config.depth); per stack a series
    with that many thick slices, its thickness factor, a start slice, a crop inside the body, a 90-degree rotation
    and a flip."""

    def __init__(self, series: list[Series], config: SeriesNetConfig, stats: dict, rng: np.random.Generator):
        self.series, self.config, self.stats, self.rng = series, config, stats, rng
        self.thick = {(i, k): s.thick(k) for i, s in enumerate(series) for k in s.snr}

    def _one(self, depth: int) -> tuple[np.ndarray, np.ndarray, int, int, float, float]:
        views = [(i, k) for (i, k), stack in self.thick.items() if stack.shape[0] >= depth]
        index, k = views[int(self.rng.integers(len(views)))]
        item, stack = self.series[index], self.thick[(index, k)]
        start = int(self.rng.integers(0, stack.shape[0] - depth + 1))
        slab = stack[start : start + depth]
        half = self.config.crop // 2
        centres = crop_centres(slab[depth // 2], self.config.crop, 1, self.rng)
        if centres.size == 0:
            return self._one(depth)
        row, col = centres[0]
        crop = np.rot90(slab[:, row - half : row + half, col - half : col + half], int(self.rng.integers(4)), (1, 2))
        if self.rng.integers(2):
            crop = crop[:, :, ::-1]
        span = slice(start, start + depth)
        side = side_features(item.thickness_mm * k, item.pixel_mm, finite_mean(item.wed[k][span]))
        return (
            np.ascontiguousarray(crop),
            side,
            item.window,
            item.dose,
            finite_mean(item.snr[k][span]),
            finite_mean(item.brisque[k][span]),
        )

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """{"x": (B, 3, D, crop, crop), "side": (B, 3), "window", "dose": (B,) class or -1, "snr", "brisque": (B,)
        standardised (NaN where unmeasured)}."""
        usable = [d <= self.config.depth and any(s.shape[0] >= d for s in self.thick.values()) for d in DEPTHS]
        weights = np.array(DEPTH_WEIGHTS) * usable
        depth = int(self.rng.choice(DEPTHS, p=weights / weights.sum()))
        items = [self._one(depth) for _ in range(size)]
        standardised = {
            name: (torch.tensor([item[column] for item in items], dtype=torch.float32) - self.stats[name]["mean"])
            / self.stats[name]["sd"]
            for column, name in ((4, "snr"), (5, "brisque"))
        }
        return {
            "x": network_input(torch.from_numpy(np.stack([item[0] for item in items]))),
            "side": torch.from_numpy(np.stack([item[1] for item in items])),
            "window": torch.tensor([item[2] for item in items]),
            "dose": torch.tensor([item[3] for item in items]),
            **standardised,
        }


def loss_terms(out: dict, batch: dict, weights) -> dict[str, torch.Tensor]:
    """Weighted multitask loss: CE(window) + CE(dose, unlabelled ignored) + MSE(SNR) + MSE(BRISQUE) (NaN ignored)."""
    terms = {
        "window_ce": torch.nn.functional.cross_entropy(out["window_logits"], batch["window"]),
        "dose_ce": torch.nn.functional.cross_entropy(out["dose_logits"], batch["dose"], ignore_index=-1)
        if (batch["dose"] >= 0).any()
        else out["dose_logits"].sum() * 0.0,
    }
    for name in ("snr", "brisque"):
        known = torch.isfinite(batch[name])
        terms[f"{name}_mse"] = (
            ((out[name][known] - batch[name][known]) ** 2).mean() if known.any() else out[name].sum() * 0.0
        )
    terms["total"] = sum(w * t for w, t in zip(weights, list(terms.values())))
    return terms


def train(data: str | Path, out: str | Path, settings: SeriesTrainSettings, progress: bool = True) -> Path:
    """Train the series network on the train split of data; fit the physics classifier and the eq. 4 score on the
    same split; write the checkpoint out (X.json + X.safetensors) and return its card path."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    series = load_series(data)
    measure(series, Path(data) / "series_measures.npz", progress)
    training = [s for s in series if s.split == "train"]
    if not training:
        raise InputError(f"{data}: no series in the train split")
    config = SeriesNetConfig(variant=settings.variant)
    stats = target_statistics(training)
    sampler = StackSampler(training, config, stats, rng)
    model = SeriesNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps, pct_start=0.05)
    started = time.monotonic()
    bar = tqdm(range(settings.steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        batch = sampler.batch(settings.batch)
        model.train()
        terms = loss_terms(model(batch["x"], batch["side"]), batch, settings.weights)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        schedule.step()
        if step % LOG_EVERY == 0:
            figures = {name: f"{value.item():.3f}" for name, value in terms.items()}
            bar.set_postfix(figures)
            if not progress:
                print(f"step {step}: {figures}", file=sys.stderr, flush=True)
    model.eval()
    minutes = (time.monotonic() - started) / 60.0
    card = {
        "name": out.name,
        "description": "Chest CT-IQA series classifier: window (lung / soft tissue) and dose (low / standard) "
        "classes, SNR and BRISQUE regression, from simulated series of real anatomy",
        "targets": stats,
        "training": {
            "settings": settings.__dict__,
            "dataset_manifest_sha256": manifest_sha256(data),
            "train_series": len(training),
            "train_groups": sorted({s.group for s in training}),
            "hardware": hardware(torch.device("cpu")),
            "minutes": round(minutes, 1),
            "labels": {
                "window": "lung kernel -> lung; smooth and native (soft-tissue) kernels -> soft_tissue",
                "dose": f"dose fraction >= {STANDARD_MIN_DOSE} of the source acquisition -> standard, "
                f"<= {LOW_MAX_DOSE} -> low",
            },
        },
    }
    physics = fit_physics_classifier(training)
    card["physics_classifier"] = physics.to_dict()
    card["calls"] = choose_calls(model, card, physics, [s for s in series if s.split == "val"])
    card["score_fit"] = fit_score(training, view_probabilities(model, card, physics, training))
    return series_network.save(model, card, out)


def choose_calls(model: SeriesNet, card: dict, physics: PhysicsClassifier, validation: list[Series]) -> dict:
    """Which classifier the product shows ({"source": "learned"|"physics", "reason"}): the learned network only
    when its mean window and dose accuracy on the validation split is at least the physics classifier's."""
    if not validation:
        return {"source": "learned", "reason": "no validation split to compare on"}
    results = split_metrics(model, card, physics, validation)
    accuracy = {
        name: (results[name]["window"]["accuracy"] + results[name]["dose"]["accuracy"]) / 2
        for name in ("learned", "physics")
    }
    source = "learned" if accuracy["learned"] >= accuracy["physics"] else "physics"
    return {
        "source": source,
        "reason": f"validation accuracy learned {accuracy['learned']:.3f}, physics {accuracy['physics']:.3f} "
        f"(mean of window and dose, {results['views']} views)",
    }


def view_probabilities(model: SeriesNet, card: dict, physics: PhysicsClassifier, series: list[Series]) -> dict:
    """{(series id, k): (P(lung), P(low))} of every thickness view from the classifier card["calls"] names."""
    if card["calls"]["source"] == "learned":
        return {
            key: (math.nan, math.nan) if p is None else (p.lung_probability, p.low_dose_probability)
            for key, p in read_all(model, card, series).items()
        }
    return {(item.id, k): physics.probabilities(m) for item, k, m in physics_features(series)}


def _series_views(series: list[Series]):
    """(series, k, thick slices) for every thickness factor of every series."""
    for item in series:
        for k in item.snr:
            yield item, k, item.thick(k)


def read_all(model: SeriesNet, card: dict, series: list[Series]) -> dict[tuple[str, int], object]:
    """{(series id, k): SeriesPrediction} for every thickness view of the series."""
    return {
        (item.id, k): predict_series(model, card, thick, item.pixel_mm, item.thickness_mm * k, finite_mean(item.wed[k]))
        for item, k, thick in _series_views(series)
    }


def physics_features(series: list[Series]) -> list[tuple[Series, int, object]]:
    """(series, k, SeriesPhysics) for every thickness view (the product's physics measures of the whole series)."""
    out = []
    for item, k, thick in _series_views(series):
        thickness = Acquisition(slice_thickness_mm=item.thickness_mm * k)  # as the product reads it from the tags
        volume = CTVolume(thick, (item.pixel_mm, item.pixel_mm, item.thickness_mm * k), acquisition=thickness)
        out.append((item, k, series_physics(volume, analyse_noise(volume))))
    return out


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, names: tuple[str, ...], l2: float = 1e-3, balanced: bool = False
) -> dict:
    """Logistic regression (scipy BFGS, L2 l2 on standardised features) of labels (1, 0; rows < 0 and rows with a
    NaN feature are left out) on features (n, len(names)): a PhysicsClassifier model dict. balanced: both classes
    weigh the same in the loss (a rare class then moves the boundary to the middle of the gap, not to its own side)."""
    x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
    keep = np.isfinite(x).all(axis=1) & (y >= 0)
    x, y = x[keep], y[keep]
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([np.ones(len(x)), (x - mean) / sd])
    weight = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9)) if balanced else np.ones(len(y))

    def loss(beta):
        logits = z @ beta
        return float(np.mean(weight * (np.logaddexp(0.0, logits) - y * logits)) + l2 * beta[1:] @ beta[1:])

    beta = minimize(loss, np.zeros(z.shape[1]), method="BFGS").x
    return {"features": list(names), "mean": mean.tolist(), "sd": sd.tolist(), "coefficients": beta.tolist()}


def fit_physics_classifier(series: list[Series]) -> PhysicsClassifier:
    """Logistic regressions (``fit_logistic``) of the window and of the dose class on the legacy physics features
    (kernel index per pixel, ln normalised noise) of every labelled simulated view; ``ctqa-train series-real``
    refits the window on real slices."""
    measured = [(item, m) for item, _, m in physics_features(series)]
    x = np.array([feature_values({"features": LEGACY_FEATURES}, m) for _, m in measured])
    return PhysicsClassifier(
        window=fit_logistic(x, np.array([item.window for item, _ in measured]), LEGACY_FEATURES),
        dose=fit_logistic(x, np.array([item.dose for item, _ in measured]), LEGACY_FEATURES),
    )


def fit_score(series: list[Series], probabilities: dict) -> dict:
    """Least-squares eq. 4 fit of the mean surrogate score of each view (module docstring) on P(lung), P(low) (of
    the classifier the product shows) and the measured SNR and BRISQUE."""
    rows, targets = [], []
    for item, k, _ in _series_views(series):
        row = [*probabilities[(item.id, k)], finite_mean(item.snr[k]), finite_mean(item.brisque[k])]
        if all(math.isfinite(value) for value in row):
            rows.append(row)
            targets.append(float(thicken(item.score[:, None, None], k).mean()))
    return fit_linear_score(
        np.array(rows),
        np.array(targets),
        "surrogate 0-4 score of simulated series (mean SSIM "
        "against the full-dose image of the same kernel over the body, [0.5, 1] -> [0, 4])",
    )


def fit_linear_score(features: np.ndarray, scores: np.ndarray, fitted_to: str) -> dict:
    """{"coefficients": [b0..b4], "fitted_to", "n", "rmse", "r2"} of scores ~ b0 + features @ b (eq. 4)."""
    if len(scores) < 6:
        raise InputError(f"need at least 6 scored series to fit 5 coefficients, got {len(scores)}")
    design = np.column_stack([np.ones(len(scores)), features])
    beta, *_ = np.linalg.lstsq(design, scores, rcond=None)
    residual = scores - design @ beta
    return {
        "coefficients": beta.tolist(),
        "regressors": ["intercept", "p_lung_window", "p_low_dose", "snr", "brisque"],
        "fitted_to": fitted_to,
        "n": int(len(scores)),
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "r2": float(1.0 - residual.var() / scores.var()) if scores.var() > 0 else math.nan,
    }


def _class_metrics(true: np.ndarray, predicted: np.ndarray, positive: int) -> dict[str, float]:
    keep = true >= 0
    true, predicted = true[keep], predicted[keep]
    tp = int(np.sum((predicted == positive) & (true == positive)))
    fp = int(np.sum((predicted == positive) & (true != positive)))
    fn = int(np.sum((predicted != positive) & (true == positive)))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
    return {
        "n": int(keep.sum()),
        "accuracy": float(np.mean(true == predicted)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    keep = np.isfinite(true) & np.isfinite(predicted)
    true, predicted = true[keep], predicted[keep]
    return {
        "n": int(keep.sum()),
        "rmse": float(np.sqrt(np.mean((true - predicted) ** 2))),
        "srocc": float(spearmanr(true, predicted).statistic),
    }


def evaluate(data: str | Path, model_path: str | Path, split: str = "test", progress: bool = True) -> dict:
    """Per-head metrics of the learned classifier and of the physics classifier on a split's series views."""
    model, card = series_network.load(model_path)
    series = [s for s in load_series(data) if s.split == split]
    if not series:
        raise InputError(f"{data}: no series in the {split} split")
    measure(series, Path(data) / "series_measures.npz", progress)
    physics = PhysicsClassifier.from_dict(card["physics_classifier"])
    return {"split": split, "calls": card.get("calls"), **split_metrics(model, card, physics, series)}


def split_metrics(model: SeriesNet, card: dict, physics: PhysicsClassifier, series: list[Series]) -> dict:
    """Metrics of both classifiers over every thickness view of measured series."""
    readings = read_all(model, card, series)
    views = physics_features(series)
    window_true = np.array([item.window for item, _, _ in views])
    dose_true = np.array([item.dose for item, _, _ in views])
    learned = [readings[(item.id, k)] for item, k, _ in views]
    physics_calls = [physics.classify(m) for item, _, m in views]
    snr_true = np.array([finite_mean(item.snr[k]) for item, k, _ in views])
    brisque_true = np.array([finite_mean(item.brisque[k]) for item, k, _ in views])

    def learned_class(probability: str) -> np.ndarray:
        """1 where the learned probability is above 0.5, -1 (a miss) where the series could not be read."""
        return np.array([-1 if p is None else int(getattr(p, probability) > 0.5) for p in learned])

    def physics_class(head: str, labels: tuple) -> np.ndarray:
        return np.array([-1 if c is None else labels.index(getattr(c, head).label) for c in physics_calls])

    def learned_value(name: str) -> np.ndarray:
        return np.array([math.nan if p is None else getattr(p, name) for p in learned])

    return {
        "views": len(views),
        "groups": sorted({item.group for item, _, _ in views}),
        "learned": {
            "window": _class_metrics(window_true, learned_class("lung_probability"), WINDOWS.index("lung")),
            "dose": _class_metrics(dose_true, learned_class("low_dose_probability"), DOSES.index("low")),
            "snr": _regression_metrics(snr_true, learned_value("snr")),
            "brisque": _regression_metrics(brisque_true, learned_value("brisque")),
        },
        "physics": {
            "window": _class_metrics(window_true, physics_class("window", WINDOWS), WINDOWS.index("lung")),
            "dose": _class_metrics(dose_true, physics_class("dose", DOSES), DOSES.index("low")),
        },
    }


def _markdown(name: str, card: dict, size_bytes: int, evaluation: dict | None) -> str:
    """A readable model card of a series model from its JSON card (and its evaluation, when given)."""
    t, fit = card["training"], card.get("score_fit", {})
    lines = [
        f"# Model card: {name}",
        "",
        "Chest CT-IQA-style series classifier (3D multitask network, "
        f"`{t['settings']['variant']}` heads): window class (lung / soft tissue reconstruction), dose class "
        "(low / standard exposure for the patient's size, kernel and slice thickness), SNR and BRISQUE regression, "
        "from stacks of 1-4 slices cropped to 64² at the native pixel size, averaged over crops of the series.",
        "",
        f"- Architecture: `{json.dumps(card['architecture'])}`",
        f"- Weights: `{name}.safetensors`, {size_bytes / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
        f"- Labels: window: {t['labels']['window']}; dose: {t['labels']['dose']}.",
        f"- Data: simulated series of real anatomy (dataset manifest sha256 `{t['dataset_manifest_sha256']}`), "
        f"{t['train_series']} training series from groups {', '.join(t['train_groups'])}; thick series by averaging "
        f"{', '.join(map(str, THICKNESS_FACTORS))} adjacent slices where a source has them (its volumes; single-slice "
        "sources give single-slice series).",
        f"- Optimisation: {json.dumps(t['settings'])}; {t['hardware']}; {t['minutes']} min.",
        "",
        "## Fitted score (eq. 4)",
        "",
        f"score = {_equation(fit)}, clipped to 0-4. Fitted to: {fit.get('fitted_to')} "
        f"(n {fit.get('n')}, RMSE {fit.get('rmse', 0):.3f}, R² {fit.get('r2', 0):.3f}). "
        "No clinician scores were available: refit to your radiologists' scores with "
        "`ctqa-train fit-chest-score`.",
    ]
    calls = card.get("calls", {})
    lines += [
        "",
        "## Limits",
        "",
        f"The product shows the calls of the **{calls.get('source', 'learned')}** classifier, chosen on the "
        f"validation split ({calls.get('reason', 'not recorded')}). The network was trained and validated on "
        "simulated series of a few patients; the physics classifier's window model is refitted on real slices "
        "(`ctqa-train series-real`, section below when it has run).",
    ]
    if evaluation:
        lines += ["", "## Held-out evaluation", "", evaluation_markdown(evaluation)]
    if card.get("reproduce"):
        lines += ["", "## Reproduce", "", "From the repository root, with the project's venv active:", ""]
        lines += [f"    {card['reproduce']}"]
    return "\n".join(lines) + "\n"


def _equation(fit: dict) -> str:
    """b0 + b1·r1 + ... of an eq. 4 fit, with signs."""
    coefficients, regressors = fit.get("coefficients", []), fit.get("regressors", [])
    if not coefficients:
        return "(no fit)"
    terms = [f"{coefficients[0]:.4g}"]
    terms += [f"{'-' if b < 0 else '+'} {abs(b):.4g}·{r}" for b, r in zip(coefficients[1:], regressors[1:])]
    return " ".join(terms)


def evaluation_markdown(results: dict) -> str:
    """Tables of ``evaluate``'s results."""
    calls = results.get("calls") or {}
    lines = [
        f"Split `{results['split']}`: {results['views']} series views from groups {', '.join(results['groups'])}.",
        "",
        f"Calls the product shows: **{calls.get('source', 'learned')}** ({calls.get('reason', 'not recorded')}).",
        "",
        "| classifier | head | n | accuracy | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for classifier in ("learned", "physics"):
        for head in ("window", "dose"):
            m = results[classifier][head]
            lines.append(
                f"| {classifier} | {head} | {m['n']} | {m['accuracy']:.3f} | {m['precision']:.3f} | "
                f"{m['recall']:.3f} | {m['f1']:.3f} |"
            )
    lines += ["", "| regression head | n | RMSE | SROCC |", "|---|---|---|---|"]
    for head in ("snr", "brisque"):
        m = results["learned"][head]
        lines.append(f"| {head} | {m['n']} | {m['rmse']:.3f} | {m['srocc']:.3f} |")
    return "\n".join(lines)


def export(
    checkpoint: str | Path,
    name: str,
    models_dir: str | Path,
    default: bool = False,
    reproduce: str | None = None,
    evaluation: dict | None = None,
) -> Path:
    """Bundle a series checkpoint as model name in models_dir (weights, JSON and Markdown cards, manifest entry)."""
    model, card = series_network.load(checkpoint)
    card = {**card, "name": name, **({"reproduce": reproduce} if reproduce else {})}
    card_path = series_network.save(model, card, Path(models_dir) / name)
    full_card = json.loads(card_path.read_text(encoding="utf-8"))
    size = (Path(models_dir) / f"{name}.safetensors").stat().st_size
    (Path(models_dir) / f"{name}.md").write_text(_markdown(name, full_card, size, evaluation), encoding="utf-8")
    register(Path(models_dir), name, full_card, default)
    return card_path


def refit_score(checkpoint: str | Path, scores_csv: str | Path, out: str | Path) -> dict:
    """Refit eq. 4 to a CSV of series_id,score, where series_id is an output folder of `ctqa assess` made with this
    series model (absolute or relative to the CSV); write the model with the new fit to out; return the fit. Rows
    whose series got no call are skipped (their count is in the fit's "skipped")."""
    spec = registry.resolve("series_class", str(checkpoint))
    if not spec.is_learned:
        raise InputError(f"--model {checkpoint}: a series model checkpoint or bundled name is needed")
    model, card = series_network.load(spec.card_path)
    scores_csv = Path(scores_csv)
    rows, targets, skipped = [], [], 0
    with scores_csv.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if not {"series_id", "score"} <= set(row):
                raise InputError(f"{scores_csv}: needs the columns series_id,score")
            folder = Path(row["series_id"])
            folder = folder if folder.is_absolute() else scores_csv.parent / folder
            panel = read_json(folder / "summary.json", "ctqa assess summary").get("series") or {}
            if panel.get("series_model") != card.get("name"):
                raise InputError(
                    f"{scores_csv}:{line}: {folder} was not assessed with series model {card.get('name')!r}"
                )
            if not panel.get("window") or not panel.get("dose"):
                skipped += 1
                continue
            lung, low = _probability_of(panel["window"], "lung"), _probability_of(panel["dose"], "low")
            rows.append([lung, low, panel.get("snr"), panel.get("brisque")])
            targets.append(float(row["score"]))
    features = np.array(rows, dtype=np.float64).reshape(-1, 4)
    keep = np.isfinite(features).all(axis=1)
    fit = fit_linear_score(features[keep], np.array(targets)[keep], f"{scores_csv.name}: user-supplied scores")
    fit["skipped"] = skipped + int((~keep).sum())
    series_network.save(model, {**card, "score_fit": fit}, out)
    return fit


def _probability_of(call: dict, label: str) -> float:
    return call["probability"] if call["label"] == label else 1.0 - call["probability"]
