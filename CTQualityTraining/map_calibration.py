"""Calibration of the reference-SSIM quality maps on real dose pairs (``ctqa-train calibrate-map``).

The median-SSIM and denoised-SSIM maps (``ctqa.tasks.quality_map``) compare the input with an estimate of its
noise-free self. The truth they stand for is the SSIM against a real full dose, which has noise of its own. Both are
fitted on the real pairs of L096, L143 and L192, every patient but ``validate_real.HELD_OUT_PATIENTS`` (L286, L506),
which the validation table holds out: the soft-tissue window over the body voxels, the lung window over the lung voxels.

- denoised: an affine fit (least squares) of the true map on the raw one, printed as JSON; the product's
  DENOISED_CALIBRATION is copied from it.
- median: per window, a network of two tanh layers (MEDIAN_HIDDEN units) from ``quality_map.median_features`` (the
  raw SSIM, the local noise SD at three scales and its texture at two) to the true map, fitted by MSE on up to
  SAMPLES_PER_IMAGE voxels of each image. The images are every calibration pair's full dose plus its real noise
  (quarter minus full) scaled by each of FIT_NOISE_GAINS, so that the map holds from about half to three times the
  quarter dose's noise, not only at quarter dose. Written as the bundled median_ssim card, weights and manifest
  entry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ctqa.models.plain_weights import write_safetensors
from ctqa.models.registry import MEDIAN_CALIBRATION_KIND, MODELS_DIR
from ctqa.outputs import check_output_folder, written_whole
from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.physics.ssim import ssim_map
from ctqa.tasks.quality_map import (
    MEDIAN_FEATURES,
    MEDIAN_NOISE_SIGMAS_PX,
    MEDIAN_TEXTURE_SIGMAS_PX,
    calibrated_ssim,
    median_features,
    median_reference,
)
from ctqa.volume import CTVolume

from .evaluate import region_masks
from .export import register
from .validate_real import HELD_OUT_PATIENTS, patient_of_case, real_pairs

METHODS = ("median", "denoised")
#: Gains of the real noise (quarter minus full dose) the median calibration is fitted on: 1 is the quarter dose.
FIT_NOISE_GAINS = (0.5, 1.0, 2.0, 3.0)
SAMPLES_PER_IMAGE = 8000
#: Hidden units per layer and window: the fewest that kept the held-out agreement of 16 (soft tissue 4, the lung 8);
#: every unit costs the product time on every body voxel.
MEDIAN_HIDDEN = {"soft_tissue": 4, "lung": 8}
MEDIAN_STEPS = 3000
MEDIAN_BATCH = 4096
MEDIAN_LR = 3e-3
SEED = 0
REPRODUCE = "ctqa-train calibrate-map --method median --data ../shared/data"


def calibration_pairs(data: Path) -> list:
    """The real pairs (``validate_real.real_pairs``) of the patients not held out of the validation table."""
    return [pair for pair in real_pairs(data) if patient_of_case(pair[0]) not in HELD_OUT_PATIENTS]


def _denoised(quarter: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The default denoiser's estimate (1, y, x) of a quarter-dose slice (y, x) in HU."""
    from ctqa.tasks import denoise

    volume = CTVolume(quarter[None].astype(np.float32), (pixel_mm, pixel_mm, 3.0))
    return np.asarray(denoise.run(volume, denoise.resolve("default"), "cpu").volume.hu, np.float32)


def fit(data: Path, method: str = "denoised", log=print) -> dict[str, list[float]]:
    """{window: [intercept, slope]} of the affine fit of the denoised-SSIM map (module docstring)."""
    if method != "denoised":
        raise ValueError("the affine fit is the denoised-SSIM map's; the median map is fitted by fit_median")
    raw: dict[str, list[np.ndarray]] = {name: [] for name in QUALITY_WINDOWS_HU}
    true: dict[str, list[np.ndarray]] = {name: [] for name in QUALITY_WINDOWS_HU}
    pairs = calibration_pairs(data)
    for index, (case, quarter, full, pixel_mm) in enumerate(pairs, 1):
        found = calibrated_ssim(quarter[None], _denoised(quarter, pixel_mm), {})
        regions = dict(zip(("soft_tissue", "lung"), region_masks(full, pixel_mm)))
        for name, window in QUALITY_WINDOWS_HU.items():
            inside = regions[name]
            raw[name].append(found[name][0][inside])
            true[name].append(ssim_map(quarter[None], full[None], window)[0][inside])
        log(f"  {index}/{len(pairs)} {case}")
    calibration = {}
    for name in QUALITY_WINDOWS_HU:
        x, y = np.concatenate(raw[name]).astype(np.float64), np.concatenate(true[name]).astype(np.float64)
        intercept, slope = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)[0]
        calibration[name] = [round(float(intercept), 3), round(float(slope), 3)]
    return calibration


def median_samples(pairs: list, log=print) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{window: (features (n, MEDIAN_FEATURES), true SSIM (n,))}, float32, of the median calibration (module
    docstring) on pairs (``calibration_pairs``)."""
    rng = np.random.default_rng(SEED)
    found: dict[str, tuple[list, list]] = {name: ([], []) for name in QUALITY_WINDOWS_HU}
    for index, (case, quarter, full, pixel_mm) in enumerate(pairs, 1):
        regions = dict(zip(("soft_tissue", "lung"), region_masks(full, pixel_mm)))
        for gain in FIT_NOISE_GAINS:
            image = (full + np.float32(gain) * (quarter - full)).astype(np.float32)[None]
            reference = median_reference(image)
            for name, window in QUALITY_WINDOWS_HU.items():
                voxels = np.flatnonzero(regions[name].ravel())
                if voxels.size == 0:
                    continue
                voxels = rng.choice(voxels, min(voxels.size, SAMPLES_PER_IMAGE), replace=False)
                features = median_features(image, reference, window).reshape(MEDIAN_FEATURES, -1)
                found[name][0].append(features[:, voxels].T)
                found[name][1].append(ssim_map(image, full[None], window)[0].ravel()[voxels])
        log(f"  {index}/{len(pairs)} {case}")
    return {name: (np.concatenate(x), np.concatenate(y)) for name, (x, y) in found.items()}


def fit_network(features: np.ndarray, truth: np.ndarray, prefix: str, hidden: int) -> dict[str, np.ndarray]:
    """The tensors (``quality_map.MedianCalibration``, keys prefixed "prefix.") of a network of two tanh layers of
    hidden units fitted by MSE (Adam, cosine schedule, MEDIAN_STEPS batches of MEDIAN_BATCH voxels, seed SEED) to
    truth (n,) from features (n, MEDIAN_FEATURES)."""
    import torch

    torch.manual_seed(SEED)
    mean, sd = features.mean(axis=0), features.std(axis=0) + 1e-6
    inputs = torch.from_numpy(((features - mean) / sd).astype(np.float32))
    targets = torch.from_numpy(truth.astype(np.float32))
    width = features.shape[1]
    network = torch.nn.Sequential(
        torch.nn.Linear(width, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=MEDIAN_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, MEDIAN_STEPS)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(MEDIAN_STEPS):
        batch = torch.randint(0, len(inputs), (MEDIAN_BATCH,), generator=generator)
        loss = torch.mean((network(inputs[batch])[:, 0] - targets[batch]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    layers = [module for module in network if isinstance(module, torch.nn.Linear)]
    tensors = {f"{prefix}.feature_mean": mean.astype(np.float64), f"{prefix}.feature_sd": sd.astype(np.float64)}
    for index, layer in enumerate(layers):
        tensors[f"{prefix}.w{index}"] = layer.weight.detach().double().numpy()
        tensors[f"{prefix}.b{index}"] = layer.bias.detach().double().numpy()
    return tensors


def markdown(card: dict, size_bytes: int) -> str:
    """The readable card median_ssim.md; card["real_data"] (lines quoting the validation table, added by hand once
    it is rerun: a refit writes a card without them) becomes its real-data section."""
    t = card["training"]
    return "\n".join(
        [
            "# Model card: median_ssim (the default quality map's calibration)",
            "",
            "The default quality map is the SSIM of the input against its own 5 x 5 median filter, in the soft-tissue "
            "and lung windows. Per window, a network of two tanh layers (units per window: "
            f"{MEDIAN_HIDDEN}) maps {MEDIAN_FEATURES} numbers per voxel to the SSIM against a real full dose "
            "(`ctqa/tasks/quality_map.py`, `median_features`): that SSIM, the local noise SD (the Gaussian-weighted "
            f"RMS of input minus median) at sigmas {list(MEDIAN_NOISE_SIGMAS_PX)} px, and the RMS of that residual's "
            f"steps between neighbouring voxels at sigmas {list(MEDIAN_TEXTURE_SIGMAS_PX)} px, which tells smooth "
            "(correlated) noise, which the median filter leaves in its reference, from sharp noise.",
            "",
            f"- Weights: `median_ssim.safetensors`, {size_bytes / 1e3:.1f} kB, sha256 `{card['weights_sha256']}`",
            f"- Data: the real Mayo dose pairs of {', '.join(t['patients'])} ({t['pairs']} slices; "
            f"{', '.join(HELD_OUT_PATIENTS)} held out for docs/real_validation.md), each as full dose + g x (quarter - "
            f"full) for g in {t['noise_gains']} (1 = the quarter dose; the real noise texture at other doses).",
            f"- Fit: MSE over up to {t['samples_per_image']} voxels per image (body for the soft-tissue window, lung "
            f"for the lung window), {t['steps']} Adam steps of {t['batch']} voxels, lr {t['lr']} cosine, seed "
            f"{t['seed']}; {t['wall_time_s']:.0f} s on a 2-core CPU.",
            "",
            "## Real-data validation (`docs/real_validation.md`, `ctqa-train validate-real`)",
            "",
            *card.get(
                "real_data",
                ["Not measured with these weights yet: rerun `ctqa-train validate-real` and quote its rows here."],
            ),
            "",
            "## Reproduce",
            "",
            f"    {card['reproduce']}",
            "",
        ]
    )


def fit_median(data: Path, models_dir: Path = MODELS_DIR, log=print) -> Path:
    """Fit the median calibration (module docstring) and bundle it as median_ssim in models_dir (weights, card,
    readable card, manifest entry, each file written whole); returns the card's path. The card keeps the real-data
    lines of the card it replaces when the weights come out the same (a rerun of its own command)."""
    import hashlib

    started = time.time()
    models_dir = check_output_folder(models_dir)
    pairs = calibration_pairs(data)
    samples = median_samples(pairs, log)
    tensors = {}
    for name, (features, truth) in samples.items():
        log(f"  fitting the {name} window on {len(truth)} voxels")
        tensors.update(fit_network(features, truth, name, MEDIAN_HIDDEN[name]))
    weights, card_path = models_dir / "median_ssim.safetensors", models_dir / "median_ssim.json"
    with written_whole(weights) as partial:
        write_safetensors(tensors, partial)
    card = {
        "name": "median_ssim",
        "task": "quality_map",
        "kind": MEDIAN_CALIBRATION_KIND,
        "features": ["ssim_vs_median"]
        + [f"noise_sd_{sigma:g}px" for sigma in MEDIAN_NOISE_SIGMAS_PX]
        + [f"noise_step_rms_{sigma:g}px" for sigma in MEDIAN_TEXTURE_SIGMAS_PX],
        "windows": list(QUALITY_WINDOWS_HU),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "training": {
            "patients": sorted({patient_of_case(pair[0]) for pair in pairs}),
            "pairs": len(pairs),
            "noise_gains": list(FIT_NOISE_GAINS),
            "samples_per_image": SAMPLES_PER_IMAGE,
            "hidden": MEDIAN_HIDDEN,
            "steps": MEDIAN_STEPS,
            "batch": MEDIAN_BATCH,
            "lr": MEDIAN_LR,
            "seed": SEED,
            "wall_time_s": round(time.time() - started, 1),
        },
        "reproduce": REPRODUCE,
    }
    previous = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    if previous.get("weights_sha256") == card["weights_sha256"] and "real_data" in previous:
        card["real_data"] = previous["real_data"]
    with written_whole(card_path) as partial:
        partial.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with written_whole(models_dir / "median_ssim.md") as partial:
        partial.write_text(markdown(card, weights.stat().st_size), encoding="utf-8")
    register(models_dir, "median_ssim", card, default=False)
    return card_path


def run_cli(args) -> None:
    if args.method == "median":
        print(fit_median(Path(args.data), Path(args.models_dir)))
        return
    calibration = fit(Path(args.data), args.method)
    print(json.dumps({"method": args.method, "held_out": HELD_OUT_PATIENTS, "calibration": calibration}))
