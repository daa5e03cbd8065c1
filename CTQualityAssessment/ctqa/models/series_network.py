"""Chest CT-IQA multitask network (Xun et al.): window and dose class, SNR and BRISQUE of a CT series, in 3D.

After the paper: a VGG-style 3D backbone (five blocks of conv + BatchNorm + ReLU) and four heads of three fully
connected layers each (``variant="separate"``, their best) or one shared trunk with four outputs
(``variant="shared"``). Differences, each for a reason:

- Input: stacks of ``depth`` or fewer slices (1 works: the 3 x 3 x 3 convolutions are zero-padded in z) cropped to
  ``crop`` x ``crop`` pixels at the native pixel size (resampling would change the noise texture that tells kernels
  and exposures apart), folded 2 x 2 in-plane (space-to-depth, lossless) for speed. A series is read as many crops
  spread over its body; their logits and regressions are averaged (``predict_series``).
- Channels: the lung window W1500/L-600 and the soft-tissue window W400/L40 scaled to [0, 1], and the high-pass
  residual (HU minus a 1 px Gaussian blur, / 100 HU), which carries the noise level and texture.
- Side inputs joined to the pooled features: ln(slice thickness / 3 mm), ln(pixel / 0.75 mm) and ln(water-
  equivalent diameter / 300 mm): noise depends on them as much as on exposure (AAPM TG-220), and a crop does not
  show the patient's size.

Classes: window ``WINDOWS`` (lung = sharp lung-kernel reconstruction), dose ``DOSES`` (low = exposure well below
routine for the size, kernel and thickness). Regression heads predict standardised targets; the card stores their
mean and SD. Imports torch: only the learned series path imports this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ctqa.errors import InputError
from ctqa.models.checkpoints import FORMAT_VERSION, load_verified_weights
from ctqa.models.inference import autocast
from ctqa.models.networks import config_from_dict, gaussian_blur
from ctqa.models.registry import checkpoint_files, read_json
from ctqa.physics.lung import LUNG_WINDOW_HU
from ctqa.physics.series import DOSE_LABELS, REFERENCE_THICKNESS_MM, REFERENCE_WED_MM, WINDOW_LABELS
from ctqa.physics.ssim import SSIM_WINDOW_HU

WINDOWS = WINDOW_LABELS
DOSES = DOSE_LABELS
VARIANTS = ("separate", "shared")
HPF_UNIT_HU = 100.0
REFERENCE_PIXEL_MM = 0.75
SIDE_FEATURES = 3
CROP_BODY_HU = -500.0  # a crop centre must lie in tissue or lung inside the body (see crop_centres)
CROP_AIR_HU = -950.0


@dataclass(frozen=True)
class SeriesNetConfig:
    """Architecture: variant ("separate" heads or "shared" trunk), backbone channels per block, crop side (px,
    even), slices per stack."""

    variant: str = "separate"
    features: tuple[int, ...] = (16, 32, 48, 64, 64)
    crop: int = 64
    depth: int = 4

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if len(self.features) != 5 or min(self.features) < 1:
            raise ValueError(f"need five positive block widths, got {self.features}")
        if self.crop % 32 or self.depth < 1:
            raise ValueError(f"crop must be a multiple of 32 and depth >= 1, got {self.crop}, {self.depth}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SeriesNetConfig:
        return config_from_dict(cls, data)


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(channels_out),
        nn.ReLU(inplace=True),
    )


def _mlp(width_in: int, width: int, out: int) -> nn.Sequential:
    """Three fully connected layers (the paper's head)."""
    return nn.Sequential(
        nn.Linear(width_in, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width // 2),
        nn.ReLU(inplace=True),
        nn.Linear(width // 2, out),
    )


class SeriesOutput(dict):
    """Outputs for B stacks: window_logits (B, 2), dose_logits (B, 2), snr (B,), brisque (B,) (standardised)."""


class SeriesNet(nn.Module):
    """3D VGG-style backbone + four heads (see module docstring)."""

    def __init__(self, config: SeriesNetConfig):
        super().__init__()
        self.config = config
        widths = (12, *config.features)  # 3 channels x 2 x 2 after space-to-depth
        self.blocks = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(5))
        pooled = config.features[-1] + SIDE_FEATURES
        if config.variant == "separate":
            self.heads = nn.ModuleList(_mlp(pooled, 64, n) for n in (2, 2, 1, 1))
        else:
            self.trunk = _mlp(pooled, 64, 32)
            self.heads = nn.ModuleList(nn.Linear(32, n) for n in (2, 2, 1, 1))

    def forward(self, x: torch.Tensor, side: torch.Tensor) -> SeriesOutput:
        """x: (B, 3, D, crop, crop) from ``network_input``; side: (B, 3) from ``side_features``."""
        batch, channels, depth, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, height, width)
        x = F.pixel_unshuffle(x, 2).reshape(batch, depth, channels * 4, height // 2, width // 2).permute(0, 2, 1, 3, 4)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index < 4:
                x = F.max_pool3d(x, (1, 2, 2))
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), side], dim=1)
        if self.config.variant == "shared":
            pooled = torch.relu(self.trunk(pooled))
        window, dose, snr, brisque = (head(pooled) for head in self.heads)
        return SeriesOutput(window_logits=window, dose_logits=dose, snr=snr[:, 0], brisque=brisque[:, 0])


def _window(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    return ((hu - window[0]) / (window[1] - window[0])).clamp(0.0, 1.0)


def network_input(hu: torch.Tensor) -> torch.Tensor:
    """(B, 3, D, H, W) network input from stacks (B, D, H, W) in HU: lung window, soft-tissue window, HPF residual."""
    flat = hu.float().reshape(-1, 1, *hu.shape[-2:])
    hpf = ((flat - gaussian_blur(flat)) / HPF_UNIT_HU).reshape(hu.shape)
    return torch.stack([_window(hu.float(), LUNG_WINDOW_HU), _window(hu.float(), SSIM_WINDOW_HU), hpf], dim=1)


def side_features(thickness_mm: float, pixel_mm: float, wed_mm: float) -> np.ndarray:
    """(3,) float32: ln of slice thickness, pixel size and water-equivalent diameter over their references; an
    unknown (NaN or None) thickness or WED reads as the reference."""

    def log_ratio(value, reference):
        return 0.0 if value is None or not math.isfinite(value) or value <= 0 else math.log(value / reference)

    return np.array(
        [
            log_ratio(thickness_mm, REFERENCE_THICKNESS_MM),
            log_ratio(pixel_mm, REFERENCE_PIXEL_MM),
            log_ratio(wed_mm, REFERENCE_WED_MM),
        ],
        np.float32,
    )


def crop_centres(hu_slice: np.ndarray, crop: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) (row, col) centres of up to count crops of one (y, x) HU slice, drawn where the crop lies inside the
    image and its centre is body or lung (above CROP_BODY_HU, or above CROP_AIR_HU with tissue on both sides of it
    along the row: inner air, not the air around the patient). Empty when the slice holds no such pixel."""
    half = crop // 2
    height, width = hu_slice.shape
    if height < crop or width < crop:
        return np.zeros((0, 2), int)
    inner = hu_slice[half : height - half + 1, half : width - half + 1]
    tissue = hu_slice > CROP_BODY_HU
    left = np.maximum.accumulate(tissue, axis=1)
    right = np.maximum.accumulate(tissue[:, ::-1], axis=1)[:, ::-1]
    enclosed = (hu_slice > CROP_AIR_HU) & left & right
    allowed = (tissue | enclosed)[half : height - half + 1, half : width - half + 1]
    rows, cols = np.nonzero(allowed & np.isfinite(inner))
    if rows.size == 0:
        return np.zeros((0, 2), int)
    chosen = rng.choice(rows.size, size=min(count, rows.size), replace=False)
    return np.stack([rows[chosen] + half, cols[chosen] + half], axis=1)


@dataclass(frozen=True)
class SeriesPrediction:
    """The network's reading of one series, averaged over crops: P(lung window), P(low dose), SNR, BRISQUE (in
    their own units), and the number of crops read."""

    lung_probability: float
    low_dose_probability: float
    snr: float
    brisque: float
    crops: int


def predict_series(
    model: SeriesNet,
    card: dict,
    hu: np.ndarray,
    pixel_mm: float,
    thickness_mm: float | None,
    wed_mm: float,
    crops: int = 48,
    seed: int = 0,
    precision: str = "auto",
) -> SeriesPrediction | None:
    """The model's reading of a series hu (z, y, x) HU: crops of config.depth (or fewer) slices from evenly spaced
    slabs, crop centres drawn with a fixed seed (the same series always reads the same); None when no crop fits.

    The crops run as one batch (about crops stacks of config.depth x crop x crop pixels: a few 512 x 512 slices'
    worth) on the model's device, the network under ``inference.autocast(device, precision)`` (autocast on CUDA for
    "auto")."""
    config = model.config
    depth = min(config.depth, hu.shape[0])
    starts = np.unique(np.linspace(0, hu.shape[0] - depth, min(8, hu.shape[0] - depth + 1)).round().astype(int))
    rng = np.random.default_rng(seed)
    per_slab = max(1, math.ceil(crops / starts.size))
    half = config.crop // 2
    stacks = []
    for start in starts:
        slab = hu[start : start + depth]
        for row, col in crop_centres(slab[depth // 2], config.crop, per_slab, rng):
            stacks.append(slab[:, row - half : row + half, col - half : col + half])
    if not stacks:
        return None
    side = torch.as_tensor(side_features(thickness_mm, pixel_mm, wed_mm)).expand(len(stacks), -1)
    device = next(model.parameters()).device
    with torch.no_grad():
        x = network_input(torch.as_tensor(np.stack(stacks), device=device))
        with autocast(device, precision):
            out = {name: value.float() for name, value in model(x, side.to(device)).items()}
    targets = card["targets"]
    window = torch.softmax(out["window_logits"].mean(dim=0), dim=0)
    dose = torch.softmax(out["dose_logits"].mean(dim=0), dim=0)
    return SeriesPrediction(
        lung_probability=float(window[WINDOWS.index("lung")]),
        low_dose_probability=float(dose[DOSES.index("low")]),
        snr=float(out["snr"].mean()) * targets["snr"]["sd"] + targets["snr"]["mean"],
        brisque=float(out["brisque"].mean()) * targets["brisque"]["sd"] + targets["brisque"]["mean"],
        crops=len(stacks),
    )


def save(model: SeriesNet, card: dict, path_without_extension) -> Path:
    """Write X.safetensors and the card X.json (task series_class, architecture, weights' sha256 filled in);
    card must hold "targets" ({"snr": {"mean", "sd"}, "brisque": {...}}) and may hold anything else."""
    card_path, weights_path = checkpoint_files(path_without_extension)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})
    full_card = {
        **card,
        "format_version": FORMAT_VERSION,
        "task": "series_class",
        "architecture": model.config.to_dict(),
        "classes": {"window": list(WINDOWS), "dose": list(DOSES)},
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
    }
    card_path.write_text(json.dumps(full_card, indent=2) + "\n", encoding="utf-8")
    return card_path


def load(path, device: str | torch.device = "cpu") -> tuple[SeriesNet, dict]:
    """(model in eval mode, card) from a series_class checkpoint X, X.json or X.safetensors; InputError (one line)
    for a bad card or weights (sha256 checked against the card and, when bundled, the manifest)."""
    card_path, weights_path = checkpoint_files(path)
    card = read_json(card_path, "model card")
    if card.get("task") != "series_class" or card.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{card_path}: not a series_class model card (format {FORMAT_VERSION})")
    try:
        config = SeriesNetConfig.from_dict(card["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f'{card_path}: bad "architecture" in model card: {error}') from None
    model = SeriesNet(config)
    load_verified_weights(model, card, card_path, weights_path)
    return model.to(device).eval(), card
