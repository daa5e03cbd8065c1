"""Global 0-4 quality score of a CT slice (LDCTIQAC2023 convention): MD-IQA, TFKT and a plain CNN on timm backbones.

Input (``score_input``): the slice in the challenge's soft-tissue window W350/L40 (``SCORE_WINDOW_HU``, [0, 1]),
padded to a square with 0 and resized to 512 x 512 when it is not already (LDCTIQAC2023 images are 512 x 512;
resizing changes the noise texture, so other sizes score less reliably), then folded losslessly by space-to-depth
(``pixel_unshuffle``, factor 2 by default) so that every backbone runs at 256 x 256. Two channels per pixel before
the folding, as Noise2Quality's input: the windowed CT and its high-pass residual (CT minus a 1 px Gaussian blur,
gain HPF_GAIN), which puts noise and streaks on an O(1) scale. Without it, first runs learned almost nothing in
1500 steps: the CNN baseline read 1.8-1.9 for every val slice from surrogate 0 to 4 (overall agreement 1.1); with it,
see docs/score_ablation.md.

Backbones (``ScoreNetConfig.backbone``), all timm modules built with random weights (pretrained=False; nothing is
ever downloaded; ``load_pretrained_backbone`` reads a local safetensors file into one timm sub-model):

- ``"cnn"``: a small ConvNeXt, the ablation baseline; patch grid 8 x 8 (64 px patches of the 512 image).
- ``"tfkt"``: TFKT (Rifa et al.): EfficientNet-B0's first five stages at width ``efficientnet_width`` (F, stride
  16) -> a 1 x 1 convolution to the Swin width (the connector) -> Swin transformer stages (S, windows of 8, each
  stage after the first halves the grid); 8 x 8 patches. Phase 1 pretrains F alone on a scored set: ``forward(x,
  phase_one=True)`` scores with F and its own patch-wise regression head (``ScoreNet.phase_one_head``, part of the
  network so that optimizer, checkpoints and resume need nothing special; unused afterwards), trained with
  ``loss_terms`` (the output has no distributions, so the regression terms apply) on
  ``phase_one_parameters()`` (parameters outside them get no gradient in phase 1); phase 2 trains the whole
  network with plain ``forward(x)``, F starting from phase 1.
- ``"mdiqa"``: MD-IQA (Song et al.): a ViT (global features, 16 x 16 tokens) and a three-stage ConvNeXt (local
  features, the same 16 x 16 grid); the CNN features are aligned to the ViT grid by a 3 x 3 deformable convolution
  whose offsets a 3 x 3 convolution predicts from the ViT features, initialised to zero so that it starts as a
  plain convolution (``DeformableConv2d``: bilinear ``grid_sample`` in pure torch, because
  ``torchvision.ops.deform_conv2d`` is a compiled torchvision operator, absent where torchvision does not match
  torch); ViT and aligned CNN features are concatenated, projected to the ViT width and passed through transformer
  blocks (timm ``Block``, self-attention over the grid); 32 px patches.

Head (``ScoreNetConfig.head``), MD-IQA's for both: per patch, a scoring branch f' and a weighting branch w (1 x 1
convolutions, w = sigmoid > 0), pooled by their eq. 2, Y = sum(w * f') / sum(w). ``"distribution"``: f' has
K x (bins + 1) sigmoid outputs per patch, so the pooled (B, K, bins + 1) distributions lie in [0, 1] like the eq. 1
targets (``score_distribution``, peak 1); decoded by the mean over scales of the argmax, the spread as uncertainty.
``"regression"``: f' is one linear output, the score itself (the ablation's plain head; no uncertainty).

Size and speed at 512 x 512 (space-to-depth 2), default sizes, distribution head, on this project's 2-core CPU
(AMD EPYC, shared with other jobs), torch 2.13 float32, batch 8. FLOPs: ``torch.utils.flop_counter`` with the math
attention kernel (2 per multiply-add of convolutions, matrix products and attention; deformable sampling,
normalisations and activations not counted). Inference under ``torch.inference_mode``; train step = forward +
backward of ``loss_terms`` on a batch of 8. One thread: ranges over several runs (CPU time when the other core was
busy); two threads: wall time in a quiet moment, measured before the HPF channel (which adds 3-10 % FLOPs).

    backbone  parameters  GFLOP/slice  inference slices/s (1 / 2 threads)  train step, batch 8 (1 / 2 threads)
    cnn         1.12 M       0.48        42-66 / 95                          0.41-0.45 s / 0.23 s
    tfkt        0.71 M       0.27        38-62 / 99                          0.56-0.58 s / 0.40 s
    mdiqa       0.68 M       0.59        47-72 / 95                          0.45-0.53 s / 0.31 s

Checkpoints (task "global_score"): ``X.safetensors`` + model card ``X.json`` (``save_score_model``), loaded
without pickle with the weights' sha256 verified (``load_score_model``). A card may hold a calibration to a user's
radiologists (``calibrate``). Imports torch and timm (``timm_import``): only the learned score path imports this
module.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ctqa.errors import InputError
from ctqa.models.checkpoints import FORMAT_VERSION, load_verified_weights, read_task_card, write_checkpoint
from ctqa.models.inference import BODY_HU, autocast, default_batch_size, resolve_device, run_batches
from ctqa.models.networks import HPF_SCALE, HPF_SIGMA_PX, config_from_dict, gaussian_blur
from ctqa.models.timm_import import import_timm
from ctqa.physics.ssim import SSIM_WINDOW_HU
from ctqa.score_distribution import DEFAULT_BINS, DEFAULT_TAUS, SCORE_MAX, bin_scores, decode, gaussian_targets
from ctqa.slabs import ProgressCallback
from ctqa.volume import AIR_HU

timm = import_timm()

logger = logging.getLogger(__name__)

TASK = "global_score"
#: LDCTIQAC2023's display window W350/L40 (HU): [0, 1] <-> -135..215 HU.
SCORE_WINDOW_HU = (-135.0, 215.0)
#: Side (px) of the square image the networks score (the challenge's image size).
INPUT_SIZE = 512
SCORE_SCALE = "0-4 LDCTIQAC2023"
#: Slices per batch on the CPU (``predict_scores``; the speed table's figures are at batch 8).
CPU_BATCH = 8
BACKBONES = ("cnn", "tfkt", "mdiqa")
HEADS = ("distribution", "regression")
#: Channels per attention head in every transformer (ViT, Swin, fusion blocks): widths must be multiples of it.
ATTENTION_HEAD_WIDTH = 32
SWIN_WINDOW = 8
#: EfficientNet-B0's first five stages (timm's ``_gen_efficientnet``): output stride 16, 112 x width channels.
EFFICIENTNET_B0_STAGES = (
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
)
EFFICIENTNET_STRIDE = 16
#: Input channels per pixel before space-to-depth: the windowed CT and its high-pass residual (Noise2Quality's
#: CT + HPF input).
INPUT_CHANNELS = ("ct", "hpf")
#: HPF gain: the quality maps' gain per HU (networks.HPF_SCALE on the 400 HU soft-tissue window) on the 350 HU score
#: window, so full-dose noise of 10-20 HU gives an HPF channel SD of about 0.2-0.4, O(1) for the network.
HPF_GAIN = HPF_SCALE * (SCORE_WINDOW_HU[1] - SCORE_WINDOW_HU[0]) / (SSIM_WINDOW_HU[1] - SSIM_WINDOW_HU[0])
NORMALISATION = (
    "CT channel: HU clipped to window_hu and scaled to [0, 1]; padded (centred) to a square with 0; resized to "
    "size x size (bilinear, antialiased) when not already; HPF channel: the CT channel minus its Gaussian blur "
    "(sigma hpf_sigma_px, reflected borders) times hpf_gain; both folded by pixel_unshuffle(space_to_depth)"
)

#: The physical grid of grid models (cards whose input has "pixel_mm"): slices are resampled to GRID_MM pixels and
#: placed in an INPUT_SIZE canvas (INPUT_SIZE x GRID_MM = 358 mm) centred on the body (``score_canvas``).
GRID_MM = 0.7
CANVAS_FIELD_OF_VIEW = (
    f"a {INPUT_SIZE} x {INPUT_SIZE} canvas of pixel_mm pixels ({INPUT_SIZE * GRID_MM:.0f} mm) centred on the body's "
    f"centroid (HU > {BODY_HU:g}); air ({AIR_HU:g} HU) where the slice does not reach, the slice cropped where it "
    "is larger"
)

#: The size fields each backbone uses and their defaults; fields of other backbones must stay None.
BACKBONE_DEFAULTS = {
    "cnn": {"convnext_dims": (24, 48, 96, 192), "convnext_depths": (2, 2, 4, 2)},
    "tfkt": {"efficientnet_width": 0.35, "swin_dim": 64, "swin_depths": (2, 2)},
    "mdiqa": {
        "convnext_dims": (24, 48, 96),
        "convnext_depths": (2, 2, 2),
        "vit_dim": 64,
        "vit_depth": 3,
        "attention_depth": 1,
    },
}
_SIZE_FIELDS = (
    "convnext_dims",
    "convnext_depths",
    "efficientnet_width",
    "swin_dim",
    "swin_depths",
    "vit_dim",
    "vit_depth",
    "attention_depth",
)
_TUPLE_FIELDS = ("taus", "convnext_dims", "convnext_depths", "swin_depths")


@dataclass(frozen=True)
class ScoreNetConfig:
    """Architecture of a score network; stored as a JSON dict in the model card (``to_dict``/``from_dict``).

    backbone: "cnn", "tfkt" or "mdiqa"; head: "distribution" or "regression" (see the module docstring).
    bins, taus: the distribution head's N and tau_k (``score_distribution``; kept for regression too, unused).
    space_to_depth: input folding factor; the backbones see (INPUT_SIZE / space_to_depth)^2 px, space_to_depth^2
        channels.
    head_width: hidden channels of the head's f' and w branches.
    Size fields, None = the backbone's default (``BACKBONE_DEFAULTS``), filled in on construction; a field of
    another backbone must be None:
    convnext_dims, convnext_depths: ConvNeXt stage widths and blocks per stage (cnn: up to 4 stages; mdiqa: its
        local branch, whose stride 4 x 2^(stages - 1) is also the ViT patch size, so both share one grid).
    efficientnet_width: TFKT's F, channel multiplier of EfficientNet-B0.
    swin_dim, swin_depths: TFKT's S, width of the first Swin stage (doubling per stage) and blocks per stage.
    vit_dim, vit_depth: MD-IQA's ViT width and blocks; attention_depth: transformer blocks on the fused features.
    """

    backbone: str = "mdiqa"
    head: str = "distribution"
    bins: int = DEFAULT_BINS
    taus: tuple[float, ...] = DEFAULT_TAUS
    space_to_depth: int = 2
    head_width: int = 64
    convnext_dims: tuple[int, ...] | None = None
    convnext_depths: tuple[int, ...] | None = None
    efficientnet_width: float | None = None
    swin_dim: int | None = None
    swin_depths: tuple[int, ...] | None = None
    vit_dim: int | None = None
    vit_depth: int | None = None
    attention_depth: int | None = None

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        defaults = BACKBONE_DEFAULTS[self.backbone]
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if name not in defaults:
                if value is not None:
                    raise ValueError(f"{name} is not used by backbone {self.backbone!r}; leave it None")
                continue
            if value is None:
                value = defaults[name]
            object.__setattr__(self, name, tuple(int(v) for v in value) if name in _TUPLE_FIELDS else value)
        object.__setattr__(self, "taus", tuple(float(tau) for tau in self.taus))
        if self.bins < 2 or not self.taus or min(self.taus) <= 0:
            raise ValueError(f"need bins >= 2 and positive taus, got {self.bins}, {self.taus}")
        if self.space_to_depth < 1 or INPUT_SIZE % self.space_to_depth:
            raise ValueError(f"space_to_depth must divide {INPUT_SIZE}, got {self.space_to_depth}")
        if self.head_width < 1:
            raise ValueError(f"head_width must be positive, got {self.head_width}")
        self._check_sizes()
        side = INPUT_SIZE // self.space_to_depth
        if side % self.patch_stride:
            raise ValueError(f"the backbone's stride {self.patch_stride} must divide the input side {side} px")

    def _check_sizes(self) -> None:
        if self.convnext_dims is not None:
            dims, depths = self.convnext_dims, self.convnext_depths
            if not 1 <= len(dims) <= 4 or len(depths) != len(dims) or min(dims + depths) < 1:
                raise ValueError(f"convnext_dims and convnext_depths: 1-4 positive values each, got {dims}, {depths}")
        if self.backbone == "tfkt":
            if self.efficientnet_width <= 0 or not self.swin_depths or min(self.swin_depths) < 1:
                raise ValueError("efficientnet_width must be positive and swin_depths positive block counts")
        widths = {"tfkt": ("swin_dim",), "mdiqa": ("vit_dim",)}.get(self.backbone, ())
        for name in widths:
            if getattr(self, name) < 1 or getattr(self, name) % ATTENTION_HEAD_WIDTH:
                raise ValueError(f"{name} must be a positive multiple of {ATTENTION_HEAD_WIDTH}")
        if self.backbone == "mdiqa" and (self.vit_depth < 1 or self.attention_depth < 1):
            raise ValueError("vit_depth and attention_depth must be >= 1")

    @property
    def patch_stride(self) -> int:
        """Pixels of the backbone input per patch of the scored grid (side of a 512 image's patch / space_to_depth)."""
        if self.backbone == "tfkt":
            return EFFICIENTNET_STRIDE * 2 ** (len(self.swin_depths) - 1)
        return 4 * 2 ** (len(self.convnext_dims) - 1)

    @property
    def patch_grid(self) -> int:
        """Side of the grid of patches that the head scores and weights."""
        return INPUT_SIZE // self.space_to_depth // self.patch_stride

    @property
    def input_channels(self) -> int:
        """Channels of ``score_input``: CT and HPF, each folded into space_to_depth^2."""
        return len(INPUT_CHANNELS) * self.space_to_depth**2

    @property
    def head_outputs(self) -> int:
        """Values of f' per patch: K x (bins + 1) for the distribution head, 1 for regression."""
        return len(self.taus) * (self.bins + 1) if self.head == "distribution" else 1

    def to_dict(self) -> dict:
        """JSON-serialisable dict (tuples as lists), every field named."""
        out = asdict(self)
        for name in _TUPLE_FIELDS:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ScoreNetConfig:
        """Inverse of ``to_dict``; ValueError on unknown, missing or invalid keys (defaults may change between
        versions, so a stored configuration must name every field)."""
        return config_from_dict(cls, data)


class ScoreOutput(NamedTuple):
    """Network outputs for a batch of B slices.

    distributions: (B, K, bins + 1) predicted eq. 1 distributions in [0, 1], or None for the regression head.
    score: (B,) differentiable score on 0-4: regression, the pooled score; distribution, the mean over scales of
        each distribution's expectation (for logging; ``decode_output`` reads the argmax, as MD-IQA).
    """

    distributions: torch.Tensor | None
    score: torch.Tensor


def score_canvas(hu: np.ndarray, pixel_yx_mm: tuple[float, float], grid_mm: float = GRID_MM) -> np.ndarray:
    """float32 (B, INPUT_SIZE, INPUT_SIZE) HU of slices hu (B, y, x) with pixels pixel_yx_mm: resampled to grid_mm
    (``grid.on_model_grid``, anti-aliased) and placed with their body centroid at the canvas centre
    (CANVAS_FIELD_OF_VIEW). The same physical field of view whatever the input's crop, padding or pixel size."""
    from ctqa.models.grid import on_model_grid

    hu = np.asarray(hu, np.float32)
    if any(abs(pixel / grid_mm - 1.0) > 1e-3 for pixel in pixel_yx_mm):
        hu = on_model_grid(hu, pixel_yx_mm, grid_mm)
    canvas = np.full((hu.shape[0], INPUT_SIZE, INPUT_SIZE), AIR_HU, np.float32)
    half = INPUT_SIZE // 2
    for index, plane in enumerate(hu):
        rows, columns = np.nonzero(plane > BODY_HU)
        centre = (rows.mean(), columns.mean()) if rows.size else ((plane.shape[0] - 1) / 2, (plane.shape[1] - 1) / 2)
        top, left = (int(round(c)) - half for c in centre)  # canvas row 0 is plane row `top`
        src_y = slice(max(top, 0), min(top + INPUT_SIZE, plane.shape[0]))
        src_x = slice(max(left, 0), min(left + INPUT_SIZE, plane.shape[1]))
        to_y, to_x = slice(src_y.start - top, src_y.stop - top), slice(src_x.start - left, src_x.stop - left)
        canvas[index, to_y, to_x] = plane[src_y, src_x]
    return canvas


def grid_of(card: dict) -> float | None:
    """The pixel size (mm) of a grid score model's canvas, None for a model on the whole-slice convention."""
    value = card.get("input", {}).get("pixel_mm")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or value <= 0:
        raise InputError(f"a score network's input pixel_mm must be one size in mm, got {value!r}")
    return float(value)


def score_input(hu: torch.Tensor, space_to_depth: int = 2) -> torch.Tensor:
    """Network input (B, 2 space_to_depth^2, 512 / space_to_depth, 512 / space_to_depth) from slices (B, H, W) in HU:
    the CT channel (clipped to SCORE_WINDOW_HU and scaled to [0, 1], padded (centred) to a square with 0, the air
    end, resized to INPUT_SIZE (bilinear, antialiased) when it is not that size) and its HPF channel (CT minus its
    Gaussian blur of HPF_SIGMA_PX, times HPF_GAIN), folded by ``pixel_unshuffle``."""
    if hu.ndim != 3:
        raise ValueError(f"hu must be (B, H, W), got shape {tuple(hu.shape)}")
    low, high = SCORE_WINDOW_HU
    x = ((hu.float() - low) / (high - low)).clamp(0.0, 1.0)[:, None]
    height, width = x.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    x = F.pad(x, (left, side - width - left, top, side - height - top))
    if side != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    hpf = (x - gaussian_blur(x, HPF_SIGMA_PX)) * HPF_GAIN
    return F.pixel_unshuffle(torch.cat([x, hpf], dim=1), space_to_depth)


class DeformableConv2d(nn.Module):
    """3 x 3 deformable convolution (Dai et al. 2017), stride 1, zero padding, in pure torch.

    forward(x (B, C, H, W), offsets (B, 18, H, W)): each output pixel reads its 9 taps at their regular positions
    plus the offsets (pixels; channels 2k and 2k + 1 are the row and column shifts of tap k = 3 * row + column, as
    ``torchvision.ops.deform_conv2d``), sampled bilinearly (``grid_sample``, zero outside), then weighted by
    ``self.conv``'s kernel. Zero offsets give exactly ``self.conv(x)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        taps = torch.tensor([(row, col) for row in (-1.0, 0.0, 1.0) for col in (-1.0, 0.0, 1.0)])
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows = torch.arange(height, device=x.device, dtype=x.dtype).view(1, 1, height, 1)
        cols = torch.arange(width, device=x.device, dtype=x.dtype).view(1, 1, 1, width)
        rows = rows + self.taps[:, 0].to(x.dtype).view(1, 9, 1, 1) + offsets[:, 0::2]
        cols = cols + self.taps[:, 1].to(x.dtype).view(1, 9, 1, 1) + offsets[:, 1::2]
        # grid_sample's normalised coordinates (align_corners=False): pixel i of n lies at (2 i + 1) / n - 1.
        grid = torch.stack(((2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1), dim=-1)
        sampled = F.grid_sample(
            x, grid.view(batch, 9 * height, width, 2), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        columns = sampled.view(batch, channels * 9, height, width)  # channel c, tap k at c * 9 + k, as the kernel
        weight = self.conv.weight.view(self.conv.out_channels, channels * 9, 1, 1)
        return F.conv2d(columns, weight, self.conv.bias)


class _PatchHead(nn.Module):
    """MD-IQA's patch-wise scoring f' and weighting w (two-layer 1 x 1 convolutions on each patch's normalised
    features), pooled over the patches by eq. 2: (B, C, h, w) -> (B, outputs) = sum(w * f') / sum(w)."""

    def __init__(self, channels: int, width: int, initial: torch.Tensor, sigmoid: bool):
        """initial: (outputs,) the values f' starts near (its last bias; through the sigmoid when sigmoid)."""
        super().__init__()
        self.norm = timm.layers.LayerNorm2d(channels)
        self.score = nn.Sequential(nn.Conv2d(channels, width, 1), nn.GELU(), nn.Conv2d(width, initial.numel(), 1))
        self.weight = nn.Sequential(nn.Conv2d(channels, width, 1), nn.GELU(), nn.Conv2d(width, 1, 1))
        self.sigmoid = sigmoid
        with torch.no_grad():
            self.score[-1].bias.copy_(torch.logit(initial) if sigmoid else initial)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.norm(features)
        scores = self.score(features)
        if self.sigmoid:
            scores = torch.sigmoid(scores)
        weights = torch.sigmoid(self.weight(features))
        return (scores * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))


class _Part(NamedTuple):
    """A timm sub-model that ``load_pretrained_backbone`` can fill, and the key prefixes of the full timm model
    that ScoreNet removed (classifier, final norm, unused stages): skipped in a weights file."""

    module: nn.Module
    skipped: tuple[str, ...]


def _convnext(dims: tuple[int, ...], depths: tuple[int, ...], in_channels: int) -> _Part:
    """A timm ConvNeXt with len(dims) stages (stride 4 x 2^(stages - 1)), no classifier."""
    stages = len(dims)
    model = timm.models.convnext.ConvNeXt(
        in_chans=in_channels,
        num_classes=0,
        dims=dims + (dims[-1],) * (4 - stages),  # timm always builds four stages: the extra ones are pruned
        depths=depths + (0,) * (4 - stages),
    )
    model.prune_intermediate_layers([stages - 1], prune_norm=True, prune_head=True)
    return _Part(model, ("head.", "norm_pre.", *(f"stages.{index}." for index in range(stages, 4))))


class _CNNBackbone(nn.Module):
    """ConvNeXt -> (B, dims[-1], grid, grid)."""

    def __init__(self, config: ScoreNetConfig):
        super().__init__()
        part = _convnext(config.convnext_dims, config.convnext_depths, config.input_channels)
        self.convnext = part.module
        self.parts = {"convnext": part.skipped}
        self.out_channels = config.convnext_dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convnext.forward_features(x)


def _efficientnet(width: float, in_channels: int) -> _Part:
    """TFKT's F: EfficientNet-B0's first five stages (stride 16) at channel multiplier width, no head."""
    model = timm.models.efficientnet.EfficientNet(
        block_args=timm.models.efficientnet.decode_arch_def([[stage] for stage in EFFICIENTNET_B0_STAGES]),
        num_classes=0,
        num_features=0,
        in_chans=in_channels,
        round_chs_fn=partial(timm.models.efficientnet.round_channels, multiplier=width),
        act_layer=timm.layers.get_act_layer("swish"),
    )
    return _Part(model, ("conv_head.", "bn2.", "classifier.", "blocks.5.", "blocks.6."))


class _TFKTBackbone(nn.Module):
    """EfficientNet F -> 1 x 1 connector -> Swin stages S -> (B, swin_dim * 2^(stages - 1), grid, grid)."""

    def __init__(self, config: ScoreNetConfig):
        super().__init__()
        part = _efficientnet(config.efficientnet_width, config.input_channels)
        self.efficientnet = part.module
        self.parts = {"efficientnet": part.skipped}
        self.connector = nn.Conv2d(self.efficientnet.num_features, config.swin_dim, 1)
        resolution = INPUT_SIZE // config.space_to_depth // EFFICIENTNET_STRIDE
        stages, dim = [], config.swin_dim
        for index, depth in enumerate(config.swin_depths):
            out_dim = config.swin_dim * 2**index
            stages.append(
                timm.models.swin_transformer.SwinTransformerStage(
                    dim,
                    out_dim,
                    (resolution, resolution),
                    depth,
                    downsample=index > 0,
                    num_heads=out_dim // ATTENTION_HEAD_WIDTH,
                    window_size=SWIN_WINDOW,
                )
            )
            resolution = stages[-1].output_resolution[0]
            dim = out_dim
        self.swin = nn.Sequential(*stages)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.connector(self.efficientnet.forward_features(x))
        return self.swin(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _MDIQABackbone(nn.Module):
    """ViT (global) + ConvNeXt (local) on one grid; CNN aligned by deformable convolution (offsets from the ViT);
    concatenated, projected to vit_dim, transformer blocks -> (B, vit_dim, grid, grid)."""

    def __init__(self, config: ScoreNetConfig):
        super().__init__()
        channels, dim = config.input_channels, config.vit_dim
        self.vit = timm.models.vision_transformer.VisionTransformer(
            img_size=INPUT_SIZE // config.space_to_depth,
            patch_size=config.patch_stride,
            in_chans=channels,
            num_classes=0,
            global_pool="",
            embed_dim=dim,
            depth=config.vit_depth,
            num_heads=dim // ATTENTION_HEAD_WIDTH,
            class_token=False,
        )
        local = _convnext(config.convnext_dims, config.convnext_depths, channels)
        self.convnext = local.module
        self.parts = {"vit": ("head.", "fc_norm."), "convnext": local.skipped}
        self.offsets = nn.Conv2d(dim, 18, 3, padding=1)
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)
        self.align = DeformableConv2d(config.convnext_dims[-1], dim)
        self.fuse = nn.Linear(2 * dim, dim)
        self.attention = nn.Sequential(
            *(
                timm.models.vision_transformer.Block(dim, dim // ATTENTION_HEAD_WIDTH, qkv_bias=True)
                for _ in range(config.attention_depth)
            )
        )
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # (B, grid^2, dim), normalised
        local = self.convnext.forward_features(x)  # (B, C, grid, grid)
        batch, dim, (height, width) = tokens.shape[0], tokens.shape[2], local.shape[-2:]
        global_map = tokens.transpose(1, 2).reshape(batch, dim, height, width)
        aligned = self.align(local, self.offsets(global_map)).flatten(2).transpose(1, 2)
        fused = self.attention(self.fuse(torch.cat([tokens, aligned], dim=2)))
        return fused.transpose(1, 2).reshape(batch, dim, height, width)


_BACKBONES = {"cnn": _CNNBackbone, "tfkt": _TFKTBackbone, "mdiqa": _MDIQABackbone}


def _initial_output(config: ScoreNetConfig) -> torch.Tensor:
    """(head_outputs,) where the head's f' starts: mid-scale for regression; for distributions, at each scale the
    mean value of the eq. 1 target of a mid-scale score (instead of the sigmoid's 0.5, far above most targets)."""
    if config.head == "regression":
        return torch.tensor([SCORE_MAX / 2])
    levels = gaussian_targets([SCORE_MAX / 2], config.bins, config.taus)[0].mean(axis=1)
    return torch.from_numpy(np.repeat(levels, config.bins + 1)).float()


class ScoreNet(nn.Module):
    """A score network: forward((B, s^2, 512 / s, 512 / s) from ``score_input``, s = config.space_to_depth) ->
    ``ScoreOutput``."""

    def __init__(self, config: ScoreNetConfig):
        super().__init__()
        self.config = config
        self.backbone = _BACKBONES[config.backbone](config)
        distribution = config.head == "distribution"
        self.head = _PatchHead(self.backbone.out_channels, config.head_width, _initial_output(config), distribution)
        self.phase_one_head = None
        if config.backbone == "tfkt":
            self.phase_one_head = _PatchHead(
                self.backbone.efficientnet.num_features, config.head_width, torch.tensor([SCORE_MAX / 2]), False
            )
        self.register_buffer("bin_scores", torch.from_numpy(bin_scores(config.bins)).float(), persistent=False)

    def forward(self, x: torch.Tensor, phase_one: bool = False) -> ScoreOutput:
        """x: (B, s^2, 512 / s, 512 / s) from ``score_input``. phase_one (TFKT only): F and the phase 1 regression
        head alone (see the module docstring)."""
        side = INPUT_SIZE // self.config.space_to_depth
        expected = (self.config.input_channels, side, side)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"input must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if phase_one:
            if self.phase_one_head is None:
                raise ValueError(f"phase one pretrains TFKT's EfficientNet; this is a {self.config.backbone} network")
            return ScoreOutput(None, self.phase_one_head(self.backbone.efficientnet.forward_features(x))[:, 0])
        pooled = self.head(self.backbone(x))
        if self.config.head == "regression":
            return ScoreOutput(None, pooled[:, 0])
        distributions = pooled.view(x.shape[0], len(self.config.taus), self.config.bins + 1)
        expectation = (distributions * self.bin_scores).sum(dim=2) / distributions.sum(dim=2)
        return ScoreOutput(distributions, expectation.mean(dim=1))

    def phase_one_parameters(self) -> list[nn.Parameter]:
        """TFKT phase 1's trainable parameters: F's and the phase 1 head's. ValueError for other backbones."""
        if self.phase_one_head is None:
            raise ValueError(f"phase one pretrains TFKT's EfficientNet; this is a {self.config.backbone} network")
        return [*self.backbone.efficientnet.parameters(), *self.phase_one_head.parameters()]

    def pretrainable_parts(self) -> tuple[str, ...]:
        """Names of the timm sub-models that ``load_pretrained_backbone`` can fill."""
        return tuple(self.backbone.parts)


def build_score_network(config: ScoreNetConfig | None = None) -> ScoreNet:
    """A freshly initialised score network (training mode, CPU, float32); the default config when None."""
    return ScoreNet(config or ScoreNetConfig())


def load_pretrained_backbone(model: ScoreNet, path: str | Path, part: str | None = None) -> str:
    """Load a local safetensors file into one timm sub-model of model (``--pretrained PATH``); returns its name.

    The file holds that sub-model's weights in timm's naming (``state_dict()`` of the timm model with the same
    sizes and in_chans = config.input_channels); keys of parts that ScoreNet removes (classifier, final norm, unused
    stages) are skipped. part names the sub-model (``model.pretrainable_parts()``); None: the one whose every tensor
    the file holds. Every tensor of the part must be in the file with its shape and nothing else may be:
    InputError (one line) otherwise, and the model is left unchanged.
    """
    parts = model.backbone.parts
    if part is not None and part not in parts:
        raise InputError(f"{path}: backbone {model.config.backbone!r} has no part {part!r}; parts: {', '.join(parts)}")
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: pretrained weights file not found") from None
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: not a readable safetensors file: {str(error).splitlines()[0]}") from None
    if part is None:
        matches = [name for name in parts if set(getattr(model.backbone, name).state_dict()) <= set(state)]
        if len(matches) != 1:
            found = "none" if not matches else " and ".join(matches)
            raise InputError(
                f"{path}: holds the complete weights of {found} of the parts {', '.join(parts)}; name one with its "
                "sizes matching"
            )
        part = matches[0]
    module = getattr(model.backbone, part)
    own = module.state_dict()
    weights = {key: value for key, value in state.items() if not key.startswith(parts[part])}
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    mismatched = [key for key in own if key in weights and weights[key].shape != own[key].shape]
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise InputError(
            f"{path}: not the weights of this {model.config.backbone} network's {part}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} of another shape (first: {first})"
        )
    module.load_state_dict(weights, strict=True)
    return part


def decode_output(output: ScoreOutput) -> tuple[np.ndarray, np.ndarray]:
    """(score (B,), sd (B,)) float64 on 0-4: distribution, ``score_distribution.decode`` (mean over scales of the
    argmax; spread as SD); regression, the score clipped to [0, 4] and NaN SD."""
    if output.distributions is None:
        score = np.clip(output.score.detach().float().cpu().numpy().astype(np.float64), 0.0, SCORE_MAX)
        return score, np.full(score.shape, np.nan)
    return decode(output.distributions.detach().float().cpu().numpy())


def loss_terms(
    output: ScoreOutput, scores: torch.Tensor, config: ScoreNetConfig, beta: float = 0.1
) -> dict[str, torch.Tensor]:
    """MD-IQA's supervised loss and its parts: {"l2", "kl", "total" = l2 + beta * kl} for true scores (B,) on 0-4.

    With distributions (distribution head): l2 = MSE to the eq. 1 targets of config.bins and config.taus; kl = mean
    over slices and scales of KL(target || prediction), both normalised to sum 1 per scale. Without (regression head,
    TFKT phase 1): l2 = MSE of the score, kl = 0. ValueError for scores outside [0, 4].
    """
    if output.distributions is None:
        l2 = F.mse_loss(output.score.float(), scores.float())
        kl = torch.zeros((), device=l2.device)
    else:
        predicted = output.distributions.float()
        targets = gaussian_targets(scores.detach().cpu().numpy(), config.bins, config.taus)
        targets = torch.from_numpy(targets).to(device=predicted.device, dtype=predicted.dtype)
        l2 = F.mse_loss(predicted, targets)
        p = targets / targets.sum(dim=2, keepdim=True)
        q = predicted.clamp_min(1e-8)
        q = q / q.sum(dim=2, keepdim=True)
        kl = (torch.xlogy(p, p) - p * q.log()).sum(dim=2).mean()
    return {"l2": l2, "kl": kl, "total": l2 + beta * kl}


def input_spec(config: ScoreNetConfig, grid_mm: float | None = None) -> dict:
    """The "input" section of a model card for this version's preprocessing (``score_input``; with grid_mm, the
    canvas of ``score_canvas`` first)."""
    grid = {} if grid_mm is None else {"pixel_mm": grid_mm, "field_of_view": CANVAS_FIELD_OF_VIEW}
    return {
        **grid,
        "window_hu": list(SCORE_WINDOW_HU),
        "size": INPUT_SIZE,
        "space_to_depth": config.space_to_depth,
        "channels": list(INPUT_CHANNELS),
        "hpf_sigma_px": HPF_SIGMA_PX,
        "hpf_gain": HPF_GAIN,
        "normalisation": NORMALISATION,
    }


def _calibration_knots(card: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(raw, calibrated) knots of a card's "calibration", None when it has none; InputError when malformed."""
    calibration = card.get("calibration")
    if calibration is None:
        return None
    try:
        raw = np.asarray(calibration["raw"], np.float64)
        calibrated = np.asarray(calibration["calibrated"], np.float64)
    except (KeyError, TypeError, ValueError):
        raise InputError('model card: "calibration" must hold "raw" and "calibrated" number lists') from None
    if (
        raw.ndim != 1
        or raw.shape != calibrated.shape
        or raw.size < 2
        or not (np.isfinite(raw).all() and np.isfinite(calibrated).all())
        or np.any(np.diff(raw) <= 0)
        or np.any(np.diff(calibrated) < 0)
    ):
        raise InputError(
            'model card: "calibration" needs two or more finite knots, "raw" increasing, "calibrated" non-decreasing'
        )
    return raw, calibrated


def calibrate(scores: np.ndarray, card: dict) -> np.ndarray:
    """Scores mapped by the card's calibration (piecewise linear through its knots, constant beyond the end
    knots; identity when the card has none), clipped to [0, 4]. InputError for a malformed calibration."""
    scores = np.asarray(scores, np.float64)
    knots = _calibration_knots(card)
    if knots is not None:
        scores = np.interp(scores, *knots)
    return np.clip(scores, 0.0, SCORE_MAX)


def calibration_slope(scores: np.ndarray, card: dict) -> np.ndarray:
    """d calibrated / d raw at each score: the slope of its knot segment (the end segment beyond the knots, so an
    SD does not vanish there); 1 without calibration. ``predict_scores`` multiplies SDs by it (first-order)."""
    scores = np.asarray(scores, np.float64)
    knots = _calibration_knots(card)
    if knots is None:
        return np.ones_like(scores)
    raw, calibrated = knots
    segment = np.clip(np.searchsorted(raw, scores, side="right") - 1, 0, raw.size - 2)
    return (calibrated[segment + 1] - calibrated[segment]) / (raw[segment + 1] - raw[segment])


def save_score_model(model: ScoreNet, config: ScoreNetConfig, card: dict, path: str | Path) -> Path:
    """Write ``X.safetensors`` (the state dict) and the model card ``X.json``; returns the card's path.

    card supplies the free-form parts ("training", "metrics", "calibration", "name", "description", ...); format
    version, task, architecture, input, scale and the weights' sha256 are filled in here.
    """
    _calibration_knots(card)
    return write_checkpoint(
        model,
        card,
        path,
        format_version=FORMAT_VERSION,
        task=TASK,
        architecture=config.to_dict(),
        input=input_spec(config, card.get("training", {}).get("dataset_parameters", {}).get("grid_mm")),
        scale=SCORE_SCALE,
    )


def load_score_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ScoreNet, dict]:
    """(model in eval mode on device, model card) from a global_score checkpoint X, X.json or X.safetensors.

    Weights read with safetensors only, their sha256 checked against the card and, for bundled models, the
    manifest. InputError (one line naming the file) for a missing file, a card of another task or format, an input
    or scale this version does not compute, a malformed calibration or weights that do not fit.
    """
    card_path, weights_path, card, config = read_task_card(path, TASK, FORMAT_VERSION, ScoreNetConfig.from_dict)
    card_input = card.get("input")
    expected = input_spec(config, card_input.get("pixel_mm") if isinstance(card_input, dict) else None)
    for key in ("window_hu", "size", "space_to_depth", "channels", "hpf_sigma_px", "hpf_gain"):
        found = card_input.get(key) if isinstance(card_input, dict) else None
        if found != expected[key]:
            raise InputError(
                f"{card_path}: model expects input {key} = {found!r}, this version computes {expected[key]!r}"
            )
    if card.get("scale") != SCORE_SCALE:
        raise InputError(f"{card_path}: score scale {card.get('scale')!r}, expected {SCORE_SCALE!r}")
    try:
        _calibration_knots(card)
    except InputError as error:
        raise InputError(f"{card_path}: {error}") from None
    model = build_score_network(config)
    load_verified_weights(model, card, card_path, weights_path)
    return model.to(device).eval(), card


@torch.inference_mode()
def predict_scores(
    model: ScoreNet,
    card: dict,
    hu: np.ndarray,
    device: str | torch.device = "auto",
    batch: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pixel_yx_mm: tuple[float, float] | None = None,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(score (z,), sd (z,)) float64 of every slice of hu (z, y, x) in HU, calibrated by the card (SD times the
    calibration's slope; NaN SD for a regression head). A grid model (``grid_of(card)``) scores each batch on its
    ``score_canvas``; pixel_yx_mm (the slices' pixel size) is then required.

    Batches of batch slices (None: CPU_BATCH on the CPU, ``inference.default_batch_size`` on CUDA) on device
    ("auto", "cpu", "cuda" or "cuda:N"; a copy of the model runs there, the model itself is not changed; CUDA
    out-of-memory halves the batch, then continues on the CPU), the network under ``inference.autocast(device,
    precision)`` (autocast on CUDA for "auto"). progress(fraction, message) after each batch; cancel is checked
    before each batch (raises ``inference.Cancelled``).
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (z, y, x), got shape {hu.shape}")
    batch = default_batch_size(device, cpu=CPU_BATCH) if batch is None else batch
    resolved, fallback = resolve_device(device)
    if fallback is not None:
        logger.warning(fallback)
    net = copy.deepcopy(model).to(resolved).eval()
    grid_mm = grid_of(card)
    if grid_mm is not None and pixel_yx_mm is None:
        raise ValueError("a grid score model needs the slices' pixel size (pixel_yx_mm)")
    depth = hu.shape[0]
    scores, sds = np.empty(depth), np.empty(depth)

    def step(net: ScoreNet, start: int, stop: int, device: torch.device) -> None:
        part = hu[start:stop]
        if grid_mm is not None:
            part = score_canvas(part, pixel_yx_mm, grid_mm)
        slices = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device)
        x = score_input(slices, net.config.space_to_depth)
        with autocast(device, precision):
            output = net(x)
        scores[start:stop], sds[start:stop] = decode_output(output)

    run = run_batches(net, depth, batch, resolved, step, "global score", progress, cancel, precision)
    if run.fallback is not None:
        logger.warning(run.fallback)
    return calibrate(scores, card), sds * np.abs(calibration_slope(scores, card))
