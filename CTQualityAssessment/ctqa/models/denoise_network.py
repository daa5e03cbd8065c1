"""Low-dose CT denoisers (registry task "denoise"): a RED-CNN on FFDNet-style folded input, optionally non-local.

Network (``DenoiseNet``): the slice in HU, clipped to ``INPUT_CLIP_HU`` and divided by ``HU_SCALE``, is folded
losslessly by space-to-depth (``pixel_unshuffle``, as FFDNet's reversible down-sampling) so that every convolution
runs at half resolution; a RED-CNN body (Chen et al. 2017: 5 convolutions, 5 deconvolutions, shortcuts every two
layers; MONAI ``Convolution`` blocks, shared with the quality-map variant, ``networks.RedCNNBody``) and a 3 x 3
convolution predict the noise-free image minus the input, unfolded by ``pixel_shuffle`` and added to the input
(residual learning, as RED-CNN's input shortcut). The HU clipped away before the network are added back unchanged,
so metal and air beyond the clip range keep their values.

Non-local option (``nonlocal_window`` > 0, the seed's point on local + non-local information): multi-head
self-attention inside non-overlapping windows of ``nonlocal_window`` x ``nonlocal_window`` bottleneck pixels
(``nonlocal_window`` x 2 full-resolution pixels a side, a search window like non-local means'), residual, its output
projection initialised to zero so that training starts from the plain RED-CNN. Whether it pays for itself:
docs/denoise_evaluation.md.

Speed at 512 x 512 on this project's 2-core CPU (torch 2.13, float32, batch 4, network only): width 64 at
space-to-depth 2 runs 1.7 slices/s (48 GFLOP/slice); the same RED-CNN at full resolution with width 32 ran 0.8 and
the original width 96, 5 x 5 kernels 0.1 (benchmarks/bench_denoise.py measures the product path).

Checkpoints: ``X.safetensors`` + card ``X.json`` (task "denoise", ``save_denoise_model`` / ``load_denoise_model``),
loaded without pickle with the weights' sha256 verified. The card's "training" names the method: "supervised"
(simulated low-dose / full-dose pairs) or "neighbor2neighbor" (low-dose images alone).
Imports torch and MONAI: only the denoising path imports this module.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ctqa.errors import InputError
from ctqa.models.checkpoints import load_verified_weights, read_task_card, write_checkpoint
from ctqa.models.inference import BatchRun, autocast, default_batch_size, pad_to_multiple, resolve_device, run_batches
from ctqa.models.networks import RedCNNBody, config_from_dict
from ctqa.slabs import ProgressCallback

TASK = "denoise"
FORMAT_VERSION = 1
#: Network input range (HU) and scale: the input is clip(HU, INPUT_CLIP_HU) / HU_SCALE (water 0, air -1).
INPUT_CLIP_HU = (-1024.0, 3071.0)
HU_SCALE = 1000.0
#: How a denoiser was trained (card "training"."method").
METHODS = ("supervised", "neighbor2neighbor")
#: Channels per attention head of the non-local block.
ATTENTION_HEAD_WIDTH = 32
#: State-dict keys of the non-local block start with this (``RedCNNBody``'s bottleneck).
NONLOCAL_PREFIX = "body.bottleneck."
NORMALISATION = (
    "HU clipped to clip_hu, divided by hu_scale; folded by pixel_unshuffle(space_to_depth); the network returns the "
    "denoised image on the same scale; the HU clipped away are added back unchanged"
)


@dataclass(frozen=True)
class DenoiseNetConfig:
    """Architecture of one denoiser; stored as a JSON dict in the model card (``to_dict``/``from_dict``).

    width: channels of every RED-CNN convolution; space_to_depth: input folding factor (1 = full resolution);
    nonlocal_window: side (bottleneck pixels) of the non-local attention windows, 0 for none.
    """

    width: int = 64
    space_to_depth: int = 2
    nonlocal_window: int = 0

    def __post_init__(self):
        if self.width < 1 or self.space_to_depth < 1 or self.nonlocal_window < 0:
            raise ValueError(f"width and space_to_depth must be >= 1 and nonlocal_window >= 0, got {self}")
        if self.nonlocal_window and self.width % ATTENTION_HEAD_WIDTH:
            raise ValueError(f"a non-local block needs width a multiple of {ATTENTION_HEAD_WIDTH}, got {self.width}")

    @property
    def required_multiple(self) -> int:
        """H and W of the network input must be multiples of this (pixels)."""
        return self.space_to_depth * max(1, self.nonlocal_window)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DenoiseNetConfig:
        """Inverse of ``to_dict``; ValueError on unknown, missing or invalid keys."""
        return config_from_dict(cls, data)


class WindowedNonLocal(nn.Module):
    """Non-local block: multi-head self-attention within non-overlapping window x window tiles, added residually
    (output projection zero-initialised). Input (B, C, H, W) with H, W multiples of window."""

    def __init__(self, channels: int, window: int):
        super().__init__()
        self.window = window
        self.heads = channels // ATTENTION_HEAD_WIDTH
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.out = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, heads = self.window, self.heads
        # (B, 3, heads, C/heads, H/s, s, W/s, s) -> (3, B * tiles, heads, s * s, C/heads)
        qkv = self.qkv(x).reshape(b, 3, heads, c // heads, h // s, s, w // s, s)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * (h // s) * (w // s), heads, s * s, c // heads)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        attended = attended.reshape(b, h // s, w // s, heads, s, s, c // heads)
        attended = attended.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, h, w)
        return x + self.out(attended)


class DenoiseNet(nn.Module):
    """forward((B, 1, H, W) on the network scale, ``denoise_input``) -> the denoised (B, 1, H, W) on that scale.

    H and W must be multiples of ``config.required_multiple`` (``denoise_volume`` pads).
    """

    def __init__(self, config: DenoiseNetConfig):
        super().__init__()
        self.config = config
        factor = config.space_to_depth
        block = WindowedNonLocal(config.width, config.nonlocal_window) if config.nonlocal_window else None
        self.body = RedCNNBody(factor**2, config.width, bottleneck=block)
        self.head = Convolution(2, config.width, factor**2, kernel_size=3, conv_only=True)
        # zero-initialised: an untrained denoiser is the identity, and training starts from the input image
        nn.init.zeros_(self.head.conv.weight)
        nn.init.zeros_(self.head.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = self.config.required_multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"input H, W {tuple(x.shape[-2:])} must be multiples of {multiple}")
        features, _ = self.body(F.pixel_unshuffle(x, self.config.space_to_depth))
        residual = F.pixel_shuffle(self.head(features), self.config.space_to_depth)
        return x + residual.float()


def build_denoise_network(config: DenoiseNetConfig | None = None) -> DenoiseNet:
    """A freshly initialised denoiser (training mode, CPU, float32)."""
    return DenoiseNet(config or DenoiseNetConfig())


def denoise_input(hu: torch.Tensor) -> torch.Tensor:
    """The network scale of HU: clip(hu, INPUT_CLIP_HU) / HU_SCALE (any shape)."""
    return hu.clamp(*INPUT_CLIP_HU) / HU_SCALE


def denoise_slices(
    net: DenoiseNet, hu: torch.Tensor, self_ensemble: bool = False, precision: str = "auto"
) -> torch.Tensor:
    """Denoised HU of hu (B, H, W) HU on net's device: padded (reflect) to the required multiple, cropped back;
    the HU outside INPUT_CLIP_HU added back unchanged. The network runs under ``inference.autocast(device,
    precision)`` (autocast on CUDA for "auto"); the result is float32.

    self_ensemble: the mean of the eight rotations and flips of the slice, each denoised and turned back (geometric
    self-ensemble, Lim et al. 2017): 8 x the time for a small gain (docs/denoise_evaluation.md)."""
    if not self_ensemble:
        return _denoised(net, hu, precision)
    total = torch.zeros_like(hu, dtype=torch.float32)
    for quarter_turns in range(4):
        for flip in (False, True):
            turned = torch.rot90(hu, quarter_turns, dims=(-2, -1))
            turned = turned.flip(-1) if flip else turned
            out = _denoised(net, turned, precision)
            out = out.flip(-1) if flip else out
            total += torch.rot90(out, -quarter_turns, dims=(-2, -1))
    return total / 8.0


def _denoised(net: DenoiseNet, hu: torch.Tensor, precision: str) -> torch.Tensor:
    height, width = hu.shape[-2:]
    scaled = denoise_input(hu)
    x = pad_to_multiple(scaled[:, None], net.config.required_multiple)
    with autocast(hu.device, precision):
        out = net(x)
    return out[:, 0, :height, :width].float() * HU_SCALE + (hu - scaled * HU_SCALE)


@dataclass(frozen=True)
class DenoisedVolume:
    """hu: float32 (z, y, x) denoised HU; where the network ran (``inference.BatchRun``)."""

    hu: np.ndarray
    run: BatchRun


@torch.inference_mode()
def denoise_volume(
    model: DenoiseNet,
    hu: np.ndarray,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    self_ensemble: bool = False,
    precision: str = "auto",
) -> DenoisedVolume:
    """Denoise every slice of hu (float32 (z, y, x), HU) in batches of batch_size slices (None:
    ``inference.default_batch_size`` for the device); hu is not changed.

    Only one batch is on the device at a time; the result is a new float32 array. NaN (padding outside the scan)
    stays NaN and is read as air by the network. progress(fraction, message) after each batch; cancel is checked
    before each (raises ``inference.Cancelled``). device: "auto", "cpu", "cuda" or "cuda:N" (a copy of the model
    runs there; CUDA out-of-memory halves the batch, then continues on the CPU). self_ensemble, precision: see
    ``denoise_slices``.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (z, y, x), got shape {hu.shape}")
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    resolved, _ = resolve_device(device)
    net = copy.deepcopy(model).to(resolved).eval()
    out = np.empty(hu.shape, dtype=np.float32)

    def step(net: DenoiseNet, start: int, stop: int, device: torch.device) -> None:
        block = np.asarray(hu[start:stop], dtype=np.float32)
        missing = ~np.isfinite(block)
        slices = torch.from_numpy(np.where(missing, INPUT_CLIP_HU[0], block)).to(device)
        denoised = denoise_slices(net, slices, self_ensemble, precision).cpu().numpy()
        out[start:stop] = np.where(missing, block, denoised)

    run = run_batches(net, hu.shape[0], batch_size, device, step, "denoising", progress, cancel, precision)
    return DenoisedVolume(out, run)


def input_spec() -> dict:
    """The "input" section of a denoiser's model card (``denoise_input``)."""
    return {"clip_hu": list(INPUT_CLIP_HU), "hu_scale": HU_SCALE, "normalisation": NORMALISATION}


def save_denoise_model(model: DenoiseNet, card: dict, path: str | Path) -> Path:
    """Write ``X.safetensors`` + model card ``X.json`` (card: the free-form parts, "training" with its "method",
    "metrics", "name", ...); format version, task, architecture, input and sha256 are filled in here."""
    method = card.get("training", {}).get("method")
    if method not in METHODS:
        raise ValueError(f'card "training"."method" must be one of {METHODS}, got {method!r}')
    return write_checkpoint(
        model,
        card,
        path,
        format_version=FORMAT_VERSION,
        task=TASK,
        architecture=model.config.to_dict(),
        input=input_spec(),
    )


def load_denoise_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DenoiseNet, dict]:
    """(model in eval mode on device, model card) from a denoise checkpoint X, X.json or X.safetensors.

    InputError (one line naming the file) for a missing file, a card of another task or format, an input this
    version does not compute, a sha256 mismatch or weights that do not fit.
    """
    card_path, weights_path, card, config = read_task_card(path, TASK, FORMAT_VERSION, DenoiseNetConfig.from_dict)
    expected = input_spec()
    found = card.get("input") if isinstance(card.get("input"), dict) else {}
    for key in ("clip_hu", "hu_scale"):
        if found.get(key) != expected[key]:
            raise InputError(
                f"{card_path}: model expects input {key} = {found.get(key)!r}, this version computes {expected[key]!r}"
            )
    model = build_denoise_network(config)
    load_verified_weights(model, card, card_path, weights_path)
    return model.to(device).eval(), card
