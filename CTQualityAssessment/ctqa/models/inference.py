"""Learned quality maps over whole volumes: batched slices, CUDA when available, progress and cancel; and the one way
every model family (quality map, 0-4 score, denoiser, series network) picks its device, batch and precision.

Precision (``autocast``): on CUDA the networks run under autocast (bfloat16 where supported, else float16); their
inputs are prepared and their results returned in float32 (the map's sigmoid too). ``precision`` asks for float32
or an autocast type on any device (benchmarks/bench_gpu.py, Testing/test_mixed_precision.py, which states the
tolerances against float32). Batches (``run_batches``): when CUDA runs out of memory the batch is halved and
retried; at batch 1 the rest of the volume runs on the CPU, with the reason kept in ``Prediction.fallback`` (the
caller reports it once).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctqa.errors import InputError
from ctqa.models.networks import DOSE_LEVELS, QualityNet, fuse_for_inference, network_input
from ctqa.results import LearnedNoiseLevel
from ctqa.slabs import ProgressCallback

logger = logging.getLogger(__name__)

#: A slice counts as showing the body when at least BODY_MIN_FRACTION of its pixels are above BODY_HU (HU).
BODY_HU = -500.0
BODY_MIN_FRACTION = 0.05


class Cancelled(Exception):
    """The cancel event was set: inference stopped between two batches and returned nothing."""


@dataclass(frozen=True)
class Prediction:
    """Learned maps of a (z, y, x) volume.

    maps: {window name: float32 (z, y, x) predicted SSIM against full dose in that window, in [0, 1] (1 = best)},
        one per window of the model (``QualityNetConfig.windows``, in its order).
    dose_probabilities: float32 (z, len(DOSE_LEVELS)) per-slice softmax over DOSE_LEVELS, or None without dose head.
    log_dose: float32 (z,) per-slice estimate of ln(dose fraction), or None without dose head.
    body_slices: bool (z,) slices showing the body (see BODY_HU), used by ``learned_noise_level``.
    device_used: torch device that computed the last batch ("cpu", "cuda" or "cuda:N", as requested).
    precision: of the last batch: "float32", "bfloat16" or "float16" (``precision_name``).
    fallback: why inference fell back from CUDA to the CPU, or None.
    """

    maps: dict[str, np.ndarray]
    dose_probabilities: np.ndarray | None
    log_dose: np.ndarray | None
    body_slices: np.ndarray
    device_used: str
    precision: str = "float32"
    fallback: str | None = None


def resolve_device(device: str | torch.device = "auto") -> tuple[torch.device, str | None]:
    """(torch.device, fallback reason or None) for "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".

    CUDA asked for on a machine without it falls back to the CPU with the reason; InputError for an unknown device.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu"), f"device {device!r} requested but CUDA is not available: ran on the CPU"
    return resolved, None


#: What a model can be asked to run at: "auto" = autocast on CUDA (bfloat16 where supported, else float16) and
#: float32 elsewhere; "float32" = no autocast; "bfloat16" / "float16" = autocast to that type on any device.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The type a network runs in under autocast on device at precision (PRECISIONS); None: float32, no autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None if precision == "float32" else getattr(torch, precision)


#: [CPU autocast runs in progress, oneDNN's setting before the first of them], under _ONEDNN_LOCK.
_ONEDNN_USERS: list = [0, True]
_ONEDNN_LOCK = threading.Lock()


@contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """The context every model family runs its network in: autocast to ``autocast_dtype(device, precision)``,
    disabled for float32. Preprocessing stays outside it (float32), results are cast back to float32.

    Autocast on the CPU turns oneDNN off while it lasts: its bfloat16 convolutions give wrong results for some
    shapes (kernel 8 or 16 at stride 8 or 16, MD-IQA's patch embedding, on an AMX Xeon with torch 2.13; pytorch
    issues 163347, 169688); torch's own kernels, slower, are right."""
    dtype = autocast_dtype(device, precision)
    if dtype is None or device.type != "cpu":
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            yield
        return
    with _ONEDNN_LOCK:  # the first of overlapping CPU autocast runs turns oneDNN off, the last restores it
        if _ONEDNN_USERS[0] == 0:
            _ONEDNN_USERS[1] = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _ONEDNN_USERS[0] += 1
    try:
        with torch.autocast(device.type, dtype=dtype):
            yield
    finally:
        with _ONEDNN_LOCK:
            _ONEDNN_USERS[0] -= 1
            if _ONEDNN_USERS[0] == 0:
                torch.backends.mkldnn.enabled = _ONEDNN_USERS[1]


def precision_name(device: torch.device, precision: str = "auto") -> str:
    """What a network computes in on device at precision: "float32", "bfloat16" or "float16"."""
    return str(autocast_dtype(device, precision) or torch.float32).removeprefix("torch.")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of multiple (reflect; replicate for tiny images)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _run_batch(net: QualityNet, hu: np.ndarray, device: torch.device, precision: str) -> tuple[np.ndarray, ...]:
    """(quality (b, windows, y, x), dose probabilities (b, 6) or None, ln dose (b,) or None) of b slices in HU."""
    height, width = hu.shape[-2:]
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[:, None].to(device)
    x = pad_to_multiple(network_input(x, net.config.inputs, net.config.windows), net.config.required_multiple)
    with autocast(device, precision):
        out = net(x.contiguous(memory_format=torch.channels_last))
    quality = out.quality[:, :, :height, :width].float().cpu().numpy()
    if out.dose_logits is None:
        return quality, None, None
    probabilities = torch.softmax(out.dose_logits.float(), dim=1).cpu().numpy()
    return quality, probabilities, out.log_dose.float().cpu().numpy()


@dataclass(frozen=True)
class BatchRun:
    """Where ``run_batches`` computed: device of the last batch, its precision, why it fell back to the CPU."""

    device_used: str
    precision: str
    fallback: str | None


def run_batches(
    net: torch.nn.Module,
    depth: int,
    batch_size: int,
    device: str | torch.device,
    step: Callable[[torch.nn.Module, int, int, torch.device], None],
    what: str,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    precision: str = "auto",
) -> BatchRun:
    """Call step(net, start, stop, device) on consecutive batches of slices [start, stop) of depth slices.

    net (already on device) is what step runs, its network call under ``autocast(device, precision)``; step stores
    its results itself. On CUDA out-of-memory the batch is halved and retried; at batch 1 net moves to the CPU for
    the rest. cancel is checked before each batch (raises Cancelled); progress(fraction, "what: i/depth slices")
    after each. device as resolved by ``resolve_device``; BatchRun.precision is ``precision_name`` of the last batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, fallback = resolve_device(device)
    computed = precision_name(device, precision)
    start = 0
    while start < depth:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{what} cancelled")
        stop = min(start + batch_size, depth)
        try:
            step(net, start, stop, device)
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                logger.info("CUDA out of memory: retrying with batches of %d slices", batch_size)
                continue
            fallback = f"CUDA out of memory on {device} at batch size 1; continued on the CPU from slice {start}"
            device = torch.device("cpu")
            net.to(device)
            computed = precision_name(device, precision)
            continue
        start = stop
        if progress is not None:
            progress(stop / depth, f"{what}: {stop}/{depth} slices")
    return BatchRun(str(device), computed, fallback)


#: A sink of streamed predictions: sink(start, stop, {window: float32 (stop - start, y, x)}) stores one batch.
PredictionSink = Callable[[int, int, dict[str, np.ndarray]], None]
#: Slices per batch when none is given. CPU: for the quality map 4 run as fast per slice as 8 (measured on 2 cores,
#: 512 x 512, with staging.tune_allocator: about 74 slices/s either way, 16 no faster) with 140 MiB less of
#: activations at the peak; a family may keep its own measured CPU figure (``default_batch_size``). CUDA: one
#: figure for every family (not yet measured on a GPU: benchmarks/bench_gpu.py sweeps 1-32 to check it); CUDA
#: out-of-memory halves it (``run_batches``).
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}


def default_batch_size(device: str | torch.device = "auto", cpu: int = DEFAULT_BATCH["cpu"]) -> int:
    """Slices per batch on the device that "auto", "cpu", "cuda" or "cuda:N" resolves to: DEFAULT_BATCH["cuda"] on
    CUDA, cpu (a model family's CPU figure) otherwise."""
    return DEFAULT_BATCH["cuda"] if resolve_device(device)[0].type == "cuda" else cpu


@torch.inference_mode()
def stream_predictions(
    model: QualityNet,
    read: Callable[[int, int], np.ndarray],
    depth: int,
    sink: PredictionSink,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    precision: str = "auto",
) -> Prediction:
    """Run model over slices 0..depth, read(start, stop) giving each batch's slices (HU, (n, y, x), any real
    dtype), and hand each batch's maps to sink instead of keeping them: the returned Prediction has no maps ({})
    but the per-slice dose outputs and body flags. Otherwise as ``predict_volume``.
    """
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resolved, _ = resolve_device(device)
    net = fuse_for_inference(model).to(device=resolved, memory_format=torch.channels_last)
    has_dose = net.dose_head is not None
    probabilities = np.empty((depth, len(DOSE_LEVELS)), dtype=np.float32) if has_dose else None
    log_dose = np.empty(depth, dtype=np.float32) if has_dose else None
    body = np.empty(depth, dtype=bool)

    def step(net: QualityNet, start: int, stop: int, device: torch.device) -> None:
        hu = read(start, stop)
        batch = _run_batch(net, hu, device, precision)
        sink(start, stop, {window: batch[0][:, channel] for channel, window in enumerate(net.config.windows)})
        if has_dose:
            probabilities[start:stop] = batch[1]
            log_dose[start:stop] = batch[2]
        body_pixels = BODY_MIN_FRACTION * math.prod(hu.shape[1:])
        body[start:stop] = np.count_nonzero(hu.reshape(stop - start, -1) > BODY_HU, axis=1) >= body_pixels

    run = run_batches(net, depth, batch_size, device, step, "learned quality map", progress, cancel, precision)
    return Prediction({}, probabilities, log_dose, body, run.device_used, run.precision, run.fallback)


def predict_volume(
    model: QualityNet,
    hu: np.ndarray,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    precision: str = "auto",
) -> Prediction:
    """Run model over every slice of hu (float32 (z, y, x), HU) in batches of batch_size slices (None:
    DEFAULT_BATCH for the device).

    Slices are padded (reflect) to the network's required multiple and cropped back. The model itself is not
    changed: a copy with BatchNorm folded runs on the device. progress(fraction, message) after each batch;
    cancel is checked before each batch (raises Cancelled). device: "auto", "cpu", "cuda" or "cuda:N";
    precision: PRECISIONS ("auto": autocast on CUDA only). ``stream_predictions`` does the same without holding
    the maps.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (z, y, x), got shape {hu.shape}")
    maps = {window: np.empty(hu.shape, dtype=np.float32) for window in model.config.windows}

    def keep(start: int, stop: int, batch: dict[str, np.ndarray]) -> None:
        for window, values in batch.items():
            maps[window][start:stop] = values

    streamed = stream_predictions(
        model, lambda start, stop: hu[start:stop], hu.shape[0], keep, batch_size, device, progress, cancel, precision
    )
    return dataclasses.replace(streamed, maps=maps)


def learned_noise_level(prediction: Prediction) -> LearnedNoiseLevel | None:
    """The dose head's output as a noise level relative to the training full-dose images, or None without one.

    Aggregated over the slices that show the body (None when none does): exp(-mean(ln d) / 2), where d is the
    head's per-slice dose-equivalent, because noise SD scales as 1/sqrt(dose) in the training simulation.
    """
    if prediction.log_dose is None or not prediction.body_slices.any():
        return None
    used = prediction.body_slices
    mean_log_dose = float(prediction.log_dose[used].astype(np.float64).mean())
    return LearnedNoiseLevel(relative_noise=math.exp(-0.5 * mean_log_dose), slices_used=int(np.count_nonzero(used)))
