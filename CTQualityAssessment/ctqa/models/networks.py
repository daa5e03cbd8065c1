"""Noise2Quality (N2Q) networks: no-reference, per-pixel SSIM maps and a dose estimate from one CT slice.

The model family follows the N2Q ablations: one configuration option each (``VARIANTS``). All variants are 2D,
built from MONAI blocks, and share one preprocessing function (``network_input``) and one output type
(``QualityOutput``). The map head predicts, per pixel and per HU window of ``config.windows``, the SSIM (N2Q
settings, ``ssim.py``) of the slice against its unseen full-dose version in that window; the dose head classifies
the slice into ``DOSE_LEVELS`` (fraction of full dose) and regresses ln(dose fraction).

Windows: soft tissue (-160..240 HU) and lung (-1350..150 HU, ``lung.LUNG_WINDOW_HU``). In the soft-tissue window
lung parenchyma is clipped to 0 in both images and its SSIM is always about 1, so the lung needs its own window.
Design choice: one network with one map channel per window, and the input channels (CT + HPF) repeated per
window, rather than a window given as an input and one pass per window. The input must show lung noise (clipped
away in the soft-tissue CT channel), the windows share every feature, and the extra cost is one wider first and
last convolution (about +25 % FLOPs; 0.7x the single-window speed measured side by side) instead of a second pass
over the volume (about 0.5x).

Speed: the input is folded losslessly by space-to-depth (``pixel_unshuffle``) before the first convolution and
unfolded by ``pixel_shuffle`` after the last, so all convolutions run at 1/space_to_depth of the resolution.
Measured on 2 CPU cores (AMD EPYC) at 512 x 512, batch 8, BatchNorm folded (``fuse_for_inference``), channels-last,
network only: features (16, 32, 48, 64) at space_to_depth 2 = 3.6 GFLOP/slice, 24-30 slices/s; the default
(32, 32, 48, 64) at space_to_depth 4 = 2.0 GFLOP/slice, 55-90 slices/s, about 40 slices/s through
``inference.predict_volume`` (benchmarks/bench_inference.py): twice the goal of 20, room for a busy CPU. These
figures are for one window; two windows run at about 0.7x (5.5 against 7.9 slices/s side by side on the busy,
shared CPU).

Imports torch and MONAI: only the learned-model path imports this module.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.physics.ssim import SSIM_WINDOW_HU

#: Dose classes of the dose head, fraction of the full (reference) dose.
DOSE_LEVELS = (0.05, 0.10, 0.25, 0.50, 0.75, 1.00)
#: Gaussian sigma (pixels) of the blur whose residual is the high-pass-filter (HPF) channel.
HPF_SIGMA_PX = 1.0
#: HPF gain of the soft-tissue window: noise of 10-20 HU (full dose) becomes an HPF standard deviation of about
#: 0.2-0.4, O(1) for the network (a 1 px Gaussian keeps about 0.87 of white noise's SD in the residual; 1 HU is 1/400
#: of the [0, 1] CT channel). Other windows scale it by their width over the soft-tissue width (``hpf_gain``), so the
#: HPF channel has the same gain per HU in every window.
HPF_SCALE = 10.0
#: Channels of each input choice, in order.
INPUT_CHANNELS = {"ct": ("ct",), "hpf": ("hpf",), "ct+hpf": ("ct", "hpf")}
ARCHITECTURES = ("unet", "autoencoder", "redcnn")

# BatchNorm, not InstanceNorm: instance (per-image) normalisation divides each feature map by its own SD and would
# remove the absolute noise level, which is exactly what the quality map and the dose head must measure. Batch
# statistics are frozen at inference, so a slice's output does not depend on the other slices of its batch.
_NORM = "batch"
_ACT = ("leakyrelu", {"negative_slope": 0.1, "inplace": True})


def config_from_dict(cls, data: dict):
    """An architecture dataclass cls from a card's dict; ValueError on unknown or missing keys (defaults may change
    between versions, so a stored configuration must name every field) or invalid values (cls's own checks)."""
    unknown = set(data) - set(cls.__dataclass_fields__)
    missing = set(cls.__dataclass_fields__) - set(data)
    if unknown or missing:
        raise ValueError(f"unknown architecture keys {sorted(unknown)}, missing keys {sorted(missing)}")
    return cls(**data)


@dataclass(frozen=True)
class QualityNetConfig:
    """Architecture of one quality network; stored as a JSON dict in the model card (``to_dict``/``from_dict``).

    architecture: "unet" (encoder-decoder with skips), "autoencoder" (the same without skips) or "redcnn".
    inputs: "ct", "hpf" or "ct+hpf" (see ``network_input``), repeated for each window.
    windows: names in QUALITY_WINDOWS_HU, one map channel each, in this order.
    dose_head: add the dose classifier + ln(dose) regressor on the bottleneck.
    features: channels per level (unet/autoencoder: one per resolution, each level halves H and W; redcnn: the
        width of its convolutions is features[0]).
    space_to_depth: lossless input folding factor (1 = none).
    """

    architecture: str = "unet"
    inputs: str = "ct+hpf"
    dose_head: bool = True
    features: tuple[int, ...] = (32, 32, 48, 64)
    space_to_depth: int = 4
    windows: tuple[str, ...] = ("soft_tissue", "lung")

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        object.__setattr__(self, "windows", tuple(self.windows))
        if not self.windows or len(set(self.windows)) != len(self.windows):
            raise ValueError(f"windows must name distinct windows, got {self.windows}")
        if unknown := [name for name in self.windows if name not in QUALITY_WINDOWS_HU]:
            raise ValueError(f"unknown window {unknown[0]!r}; choose from {tuple(QUALITY_WINDOWS_HU)}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.inputs not in INPUT_CHANNELS:
            raise ValueError(f"inputs must be one of {tuple(INPUT_CHANNELS)}, got {self.inputs!r}")
        if not self.features or min(self.features) < 1:
            raise ValueError(f"features must be positive channel counts, got {self.features}")
        if self.architecture != "redcnn" and len(self.features) < 2:
            raise ValueError("a unet/autoencoder needs at least two feature levels")
        if self.space_to_depth < 1:
            raise ValueError(f"space_to_depth must be >= 1, got {self.space_to_depth}")

    @property
    def required_multiple(self) -> int:
        """H and W of the network input must be multiples of this (pixels)."""
        if self.architecture == "redcnn":
            return self.space_to_depth
        return self.space_to_depth * 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (features and windows as lists)."""
        out = asdict(self)
        out["features"] = list(self.features)
        out["windows"] = list(self.windows)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> QualityNetConfig:
        """Inverse of ``to_dict``; ValueError on unknown, missing or invalid keys (defaults may change between
        versions, so a stored configuration must name every field)."""
        return config_from_dict(cls, data)


#: The seven N2Q ablations, one option each; "N2Q" is the product default.
VARIANTS: dict[str, QualityNetConfig] = {
    "AE": QualityNetConfig(architecture="autoencoder", inputs="ct", dose_head=False),
    "RED-CNN": QualityNetConfig(architecture="redcnn", inputs="ct", dose_head=False),
    "U-Net": QualityNetConfig(architecture="unet", inputs="ct", dose_head=False),
    "U-HPF": QualityNetConfig(architecture="unet", inputs="hpf", dose_head=False),
    "U-Con": QualityNetConfig(architecture="unet", inputs="ct+hpf", dose_head=False),
    "U-SSL": QualityNetConfig(architecture="unet", inputs="ct", dose_head=True),
    "N2Q": QualityNetConfig(architecture="unet", inputs="ct+hpf", dose_head=True),
}
DEFAULT_CONFIG = VARIANTS["N2Q"]


class QualityOutput(NamedTuple):
    """Network outputs for a batch of B slices of H x W pixels.

    quality: (B, len(config.windows), H, W) predicted SSIM in [0, 1] (1 = as good as full dose), one channel per
        window of config.windows.
    dose_logits: (B, len(DOSE_LEVELS)) class logits, or None without a dose head.
    log_dose: (B,) estimate of ln(dose fraction), or None without a dose head.
    """

    quality: torch.Tensor
    dose_logits: torch.Tensor | None
    log_dose: torch.Tensor | None


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(3.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_blur(images: torch.Tensor, sigma_px: float = HPF_SIGMA_PX) -> torch.Tensor:
    """(N, 1, H, W) images blurred by a separable Gaussian of sigma_px pixels, borders reflected.

    On the CPU without autograd the blur runs in OpenCV (sepFilter2D, BORDER_REFLECT_101 = torch's "reflect"):
    single-channel 1-D convolutions are torch's slowest case (they were half the quality map's CPU time); the
    results agree to float32 rounding (about 1e-7).
    """
    weights = _gaussian_kernel(sigma_px, images.device, images.dtype)
    radius = weights.numel() // 2
    if (
        images.device.type == "cpu"
        and images.dtype == torch.float32
        and not (images.requires_grad and torch.is_grad_enabled())
        and min(images.shape[-2:]) > radius
    ):
        taps = weights.numpy()
        source = images.detach().contiguous()
        planes = source.numpy().reshape(-1, *images.shape[-2:])
        out = torch.empty_like(source)
        for plane, blurred in zip(planes, out.numpy().reshape(planes.shape)):
            cv2.sepFilter2D(plane, -1, taps, taps, dst=blurred, borderType=cv2.BORDER_REFLECT_101)
        return out
    blurred = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), weights.view(1, 1, 1, -1))
    return F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), weights.view(1, 1, -1, 1))


def hpf_gain(window: str) -> float:
    """HPF channel gain of a window: HPF_SCALE times its width over the soft-tissue window's width."""
    low, high = QUALITY_WINDOWS_HU[window]
    return HPF_SCALE * (high - low) / (SSIM_WINDOW_HU[1] - SSIM_WINDOW_HU[0])


def network_input(hu: torch.Tensor, inputs: str, windows: tuple[str, ...]) -> torch.Tensor:
    """Network input (B, C, H, W) from slices in HU (B, 1, H, W): for each window in order, the channels of
    ``inputs`` in their order (C = len(windows) x 1 or 2).

    CT channel: HU clipped to the window (QUALITY_WINDOWS_HU) and scaled to [0, 1] (as ``ssim.scale_to_unit``).
    HPF channel: CT channel minus its Gaussian blur (sigma HPF_SIGMA_PX px, borders reflected), times
    ``hpf_gain(window)``.
    """
    if inputs not in INPUT_CHANNELS:
        raise ValueError(f"inputs must be one of {tuple(INPUT_CHANNELS)}, got {inputs!r}")
    channels = []
    for window in windows:
        low, high = QUALITY_WINDOWS_HU[window]
        ct = ((hu.float() - low) / (high - low)).clamp_(0.0, 1.0)
        for name in INPUT_CHANNELS[inputs]:
            if name == "ct":
                channels.append(ct)
                continue
            channels.append((ct - gaussian_blur(ct)) * hpf_gain(window))
    return torch.cat(channels, dim=1)


class _DoseHead(nn.Module):
    """Global average pool of the bottleneck + MLP -> (logits (B, 6), ln dose (B,))."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Linear(channels, len(DOSE_LEVELS) + 1),
        )

    def forward(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(bottleneck.float().mean(dim=(2, 3)))
        return out[:, :-1], out[:, -1]


class _EncoderDecoder(nn.Module):
    """MONAI BasicUNet-style encoder-decoder (max-pool down, deconv up); with skips (U-Net) or without (AE)."""

    def __init__(self, in_channels: int, features: tuple[int, ...], skips: bool):
        super().__init__()
        self.skips = skips
        self.encoder = nn.ModuleList([TwoConv(2, in_channels, features[0], _ACT, _NORM, bias=False)])
        self.encoder.extend(
            Down(2, features[i - 1], features[i], _ACT, _NORM, bias=False) for i in range(1, len(features))
        )
        # is_pad=False: QualityNet only accepts sizes divisible by every pooling, so no level needs padding.
        self.decoder = nn.ModuleList(
            UpCat(2, features[i], features[i - 1] if skips else 0, features[i - 1], _ACT, _NORM, False, is_pad=False)
            for i in range(len(features) - 1, 0, -1)
        )
        self.out_channels = features[0]
        self.bottleneck_channels = features[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features at input resolution, bottleneck features)."""
        levels = []
        for block in self.encoder:
            x = block(x)
            levels.append(x)
        bottleneck = x
        for block, skip in zip(self.decoder, reversed(levels[:-1])):
            x = block(x, skip if self.skips else None)
        return x, bottleneck


class RedCNNBody(nn.Module):
    """Small RED-CNN (Chen et al. 2017): 5 convolutions, 5 deconvolutions, residual shortcuts every two layers.

    3x3 kernels with padding (the original uses 5x5 without), so H and W are kept; the input shortcut is a 1x1
    convolution because the output (features for a head) has other channels than the input. bottleneck: an
    optional module (width -> width channels, same H and W) applied after the fifth convolution (the denoiser's
    non-local block). Shared by the RED-CNN quality-map variant and the denoisers (denoise_network.py).
    """

    def __init__(self, in_channels: int, width: int, bottleneck: nn.Module | None = None):
        super().__init__()

        def conv(cin: int, transposed: bool) -> Convolution:
            return Convolution(2, cin, width, kernel_size=3, is_transposed=transposed, conv_only=True)

        self.encoder = nn.ModuleList([conv(in_channels, False)] + [conv(width, False) for _ in range(4)])
        self.bottleneck = bottleneck
        self.decoder = nn.ModuleList([conv(width, True) for _ in range(5)])
        self.shortcut = Convolution(2, in_channels, width, kernel_size=1, conv_only=True)
        self.out_channels = width
        self.bottleneck_channels = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features at input resolution, bottleneck features)."""
        residuals = [self.shortcut(x)]
        for index, layer in enumerate(self.encoder):
            x = F.relu(layer(x))
            if index in (1, 3):
                residuals.append(x)
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        bottleneck = x
        for index, layer in enumerate(self.decoder):
            x = layer(x if index == 0 else F.relu(x))
            if index in (0, 2, 4):
                x = x + residuals.pop()
        return F.relu(x), bottleneck


class QualityNet(nn.Module):
    """A quality network: forward((B, C, H, W) from ``network_input(hu, config.inputs, config.windows)``) ->
    ``QualityOutput``.

    H and W must be multiples of ``config.required_multiple`` (``inference.predict_volume`` pads).
    """

    def __init__(self, config: QualityNetConfig):
        super().__init__()
        self.config = config
        factor = config.space_to_depth
        in_channels = len(INPUT_CHANNELS[config.inputs]) * len(config.windows) * factor**2
        if config.architecture == "redcnn":
            self.body = RedCNNBody(in_channels, config.features[0])
        else:
            self.body = _EncoderDecoder(in_channels, config.features, skips=config.architecture == "unet")
        # 3x3, not 1x1: each of the factor**2 sub-pixels it unfolds into also sees its neighbouring blocks.
        self.map_head = Convolution(
            2, self.body.out_channels, len(config.windows) * factor**2, kernel_size=3, conv_only=True
        )
        self.dose_head = _DoseHead(self.body.bottleneck_channels) if config.dose_head else None

    def forward(self, x: torch.Tensor) -> QualityOutput:
        multiple = self.config.required_multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"input H, W {tuple(x.shape[-2:])} must be multiples of {multiple}")
        features, bottleneck = self.body(F.pixel_unshuffle(x, self.config.space_to_depth))
        # Sigmoid in float32: under autocast a bfloat16 map would be quantised in steps of 1/256 near 1.
        quality = torch.sigmoid(F.pixel_shuffle(self.map_head(features), self.config.space_to_depth).float())
        if self.dose_head is None:
            return QualityOutput(quality, None, None)
        logits, log_dose = self.dose_head(bottleneck)
        return QualityOutput(quality, logits, log_dose)


def build_network(config: QualityNetConfig = DEFAULT_CONFIG) -> QualityNet:
    """A freshly initialised network for config (training mode, CPU, float32)."""
    return QualityNet(config)


def fuse_for_inference(model: QualityNet) -> QualityNet:
    """An eval-mode copy of model with each BatchNorm folded into the convolution before it (same outputs, faster).

    The model itself is left as it is (weights, mode and device).
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, Convolution) and isinstance(getattr(module, "adn", None), nn.Module):
            norm = getattr(module.adn, "N", None)
            if isinstance(norm, nn.BatchNorm2d):
                module.conv = fuse_conv_bn_eval(module.conv, norm)
                module.adn.N = nn.Identity()
    return fused


def nearest_dose_class(dose_fraction: float) -> int:
    """Index in DOSE_LEVELS of the level nearest to dose_fraction (nearest in ln dose)."""
    distances = [abs(math.log(dose_fraction) - math.log(level)) for level in DOSE_LEVELS]
    return distances.index(min(distances))


def loss_terms(
    outputs: QualityOutput,
    target_map: torch.Tensor,
    dose_class: torch.Tensor | None = None,
    log_dose: torch.Tensor | None = None,
    alpha: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Loss and its parts: {"total", "map_mse"} plus {"dose_ce", "log_dose_mse"} for a network with a dose head.

    target_map: (B, len(windows), H, W) true SSIM maps, one channel per window (all weighted equally);
    dose_class: (B,) int64 index into DOSE_LEVELS; log_dose: (B,) ln(dose fraction).
    total = MSE(map) + alpha * (CE(dose class) + MSE(ln dose)).
    """
    terms = {"map_mse": F.mse_loss(outputs.quality.float(), target_map.float())}
    terms["total"] = terms["map_mse"]
    if outputs.dose_logits is not None:
        if dose_class is None or log_dose is None:
            raise ValueError("a network with a dose head needs dose_class and log_dose targets")
        terms["dose_ce"] = F.cross_entropy(outputs.dose_logits.float(), dose_class)
        terms["log_dose_mse"] = F.mse_loss(outputs.log_dose.float(), log_dose.float())
        terms["total"] = terms["map_mse"] + alpha * (terms["dose_ce"] + terms["log_dose_mse"])
    return terms
