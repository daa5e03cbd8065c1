"""Training of the quality-map networks (``ctqa-train maps``): random patches, validation, checkpoints, resume.

A run folder RUN_DIR holds:
- ``run.json``: the settings of the run (variant, steps, batch, patch, lr, alpha, seed, dataset and its manifest
  sha256); a resumed run must use the same settings (the device may differ).
- ``model.safetensors`` + ``model.json``: the latest checkpoint (``checkpoints.save``; the card's "training" holds the
  settings, step, wall time and hardware, "metrics" the latest validation metrics).
- ``trainer_state.safetensors`` + ``trainer_state.json``: optimizer tensors and the torch RNG state (safetensors),
  step, optimizer scalars and the numpy generator state (JSON); no pickle anywhere.
- ``tensorboard/``: scalars: train/<loss term> (mean over the last ``LOG_EVERY`` steps), train/lr, val/<metric>.

Batches: ``batch`` patches of ``patch`` x ``patch`` pixels from the train split, each from a random sample
(simulated slice; drawn with probability proportional to its pixel count, so every pixel is equally likely),
cropped at a random position (retried up to ``BODY_TRIES`` times until at least ``BODY_MIN_FRACTION`` of the
patch is body or lung: full-dose reference above ``BODY_OR_LUNG_HU``), randomly rotated by k x 90 deg and flipped.
Labels: one SSIM map per window of the variant (``evaluate.LABEL_KEYS``: soft tissue and lung). Slices smaller than
the patch are padded with air (-1024 HU; labels 1, as SSIM is 1 between two equal flat images). Optional noise-gain
augmentation (``noise_gain`` = (low, high)): the inserted noise (image - full-dose reference) is scaled by g,
log-uniform in [low, high], which is the same acquisition at dose d' = 1 / (1 + g^2 (1/d - 1)) (extra variance
grows as 1/d - 1); the SSIM labels of every window are recomputed on the patch (with a 5-pixel margin, reflected
at the slice border like the stored labels, numpy "symmetric" = OpenCV BORDER_REFLECT) and the dose targets
follow d'. Schedule: AdamW, linear warm-up over ``WARMUP_STEPS``, then cosine decay to ``FINAL_LR_FRACTION`` of lr
at ``steps``. Mixed precision (autocast) on CUDA only; the map sigmoid and the loss stay float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.models import checkpoints
from ctqa.models.inference import resolve_device
from ctqa.models.networks import VARIANTS, build_network, loss_terms, nearest_dose_class, network_input
from ctqa.outputs import check_output_folder, written_whole
from ctqa.physics.lung import QUALITY_WINDOWS_HU
from ctqa.physics.ssim import ssim_map

from .evaluate import LABEL_KEYS, evaluate_split, load_split, split_masks

AIR_HU = -1024
#: Full-dose HU above which a pixel counts as body or lung for the patch choice (air stays below, lung is about
#: -850 HU).
BODY_OR_LUNG_HU = -900.0
BODY_MIN_FRACTION = 0.1
BODY_TRIES = 10
WARMUP_STEPS = 100
#: Pixels of context around a patch when its SSIM label is recomputed (the 11 x 11 SSIM window's radius).
LABEL_MARGIN = 5
FINAL_LR_FRACTION = 0.05
WEIGHT_DECAY = 1e-4
LOG_EVERY = 20
MODEL = "model"
STATE = "trainer_state"


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one run; all of them but device must match when a run is resumed.

    steps: optimizer steps; batch: patches per step; patch: patch side in pixels (a multiple of the network's
    required multiple); lr: peak learning rate; alpha: weight of the dose terms in the loss; checkpoint_every:
    steps between checkpoints and validations; noise_gain: range of the noise-gain augmentation ((1, 1) = off).
    """

    data: str
    variant: str = "N2Q"
    steps: int = 2000
    batch: int = 8
    patch: int = 128
    lr: float = 2e-3
    alpha: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    noise_gain: tuple[float, float] = (1.0, 1.0)

    def check(self) -> None:
        """InputError for an unknown variant or a non-positive or misfitting size."""
        if self.variant not in VARIANTS:
            raise InputError(f"unknown variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        multiple = VARIANTS[self.variant].required_multiple
        if self.patch < multiple or self.patch % multiple:
            raise InputError(f"--patch must be a positive multiple of {multiple} for {self.variant}, got {self.patch}")
        if not 0 < self.noise_gain[0] <= self.noise_gain[1]:
            raise InputError(f"--noise-gain needs 0 < LOW <= HIGH, got {self.noise_gain}")
        if min(self.steps, self.batch, self.checkpoint_every) < 1 or self.lr <= 0 or self.alpha < 0:
            raise InputError("--steps, --batch and --checkpoint-every must be >= 1, --lr > 0 and --alpha >= 0")


def manifest_sha256(data: str | Path) -> str:
    """sha256 of a dataset's manifest.json (identifies the dataset a model was trained on)."""
    path = Path(data) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{data}: not a dataset folder (no manifest.json); build one with ctqa-train simulate")
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PatchSampler:
    """Random augmented training patches from the samples of one split, in memory (see module docstring)."""

    def __init__(
        self,
        split: dict[str, list],
        patch: int,
        generator: np.random.Generator,
        noise_gain: tuple[float, float] = (1.0, 1.0),
        windows: tuple[str, ...] = ("soft_tissue", "lung"),
    ):
        self.split, self.patch, self.rng, self.noise_gain = split, patch, generator, tuple(noise_gain)
        self.windows = tuple(windows)
        areas = np.array([hu.size for hu in split["hu"]], np.float64)
        self.weights = areas / areas.sum()

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(HU patch (P, P), SSIM labels (windows, P, P), dose fraction) of one sample, noise-gain augmented when
        enabled."""
        hu, p = self.split["hu"][index], self.patch
        labels = [self.split[LABEL_KEYS[window]][index] for window in self.windows]
        reference, dose = self.split["reference"][index], float(self.split["dose"][index])
        pad = ((0, max(0, p - hu.shape[0])), (0, max(0, p - hu.shape[1])))
        if any(after for _, after in pad):
            hu = np.pad(hu, pad, constant_values=AIR_HU)
            reference = np.pad(reference, pad, constant_values=AIR_HU)
            labels = [np.pad(label, pad, constant_values=1.0) for label in labels]
        for _ in range(BODY_TRIES):
            y = int(self.rng.integers(0, hu.shape[0] - p + 1))
            x = int(self.rng.integers(0, hu.shape[1] - p + 1))
            if (reference[y : y + p, x : x + p] > BODY_OR_LUNG_HU).mean() >= BODY_MIN_FRACTION:
                break
        low, high = self.noise_gain
        if (low, high) == (1.0, 1.0) or dose >= 1.0:
            return hu[y : y + p, x : x + p], np.stack([label[y : y + p, x : x + p] for label in labels]), dose
        gain = float(np.exp(self.rng.uniform(np.log(low), np.log(high))))
        m = LABEL_MARGIN
        region = (slice(y, y + p + 2 * m), slice(x, x + p + 2 * m))
        ref = np.pad(reference.astype(np.float32), m, mode="symmetric")[region]
        noisy = ref + gain * (np.pad(hu.astype(np.float32), m, mode="symmetric")[region] - ref)
        recomputed = [ssim_map(noisy[None], ref[None], QUALITY_WINDOWS_HU[w])[0, m:-m, m:-m] for w in self.windows]
        return noisy[m:-m, m:-m], np.stack(recomputed), 1.0 / (1.0 + gain**2 * (1.0 / dose - 1.0))

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """{"hu": (B, 1, P, P) float32 HU, "ssim": (B, windows, P, P) float32 labels, "dose_class": (B,) int64,
        "log_dose": (B,)}."""
        indices = self.rng.choice(len(self.weights), size, p=self.weights)
        hu, ssim, dose = [], [], []
        for index in indices:
            crop, label, fraction = self._crop(int(index))
            dose.append(fraction)
            k, flip = int(self.rng.integers(0, 4)), bool(self.rng.integers(0, 2))
            crop, label = np.rot90(crop, k), np.rot90(label, k, axes=(1, 2))
            if flip:
                crop, label = crop[:, ::-1], label[:, :, ::-1]
            hu.append(crop.astype(np.float32))
            ssim.append(label.astype(np.float32))
        return {
            "hu": torch.from_numpy(np.stack(hu))[:, None],
            "ssim": torch.from_numpy(np.stack(ssim)),
            "dose_class": torch.tensor([nearest_dose_class(d) for d in dose], dtype=torch.int64),
            "log_dose": torch.from_numpy(np.log(np.asarray(dose, np.float32))),
        }


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Learning rate of optimizer step step (0-based): linear warm-up, then cosine to FINAL_LR_FRACTION * lr."""
    warmup = min(WARMUP_STEPS, max(1, settings.steps // 10))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors "state.<param index>.<key>", JSON-able rest: param_groups and non-tensor state values)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in rest["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_state(
    run_dir: Path,
    record: dict,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    generator: torch.Generator | None,
    step: int,
    elapsed_s: float,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_state: dict | None = None,
) -> None:
    """Write run.json (record: the run's settings) and the trainer state (optimizer tensors, torch RNG states,
    step, wall time, optimizer scalars, numpy generator; a trainer's own extra_tensors, named without the "state."
    prefix of the optimizer's, and JSON extra_state) of a run in run_dir; each file replaced whole."""

    with written_whole(run_dir / "run.json") as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tensors, rest = _optimizer_tensors(optimizer)
    tensors["torch_rng"] = torch.get_rng_state()
    if generator is not None:
        tensors["generator_rng"] = generator.get_state()
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
    with written_whole(run_dir / f"{STATE}.safetensors") as partial:
        save_file(tensors, str(partial))
    state = {**(extra_state or {}), "step": step, "elapsed_s": elapsed_s, "optimizer": rest}
    state["numpy_rng"] = rng.bit_generator.state
    with written_whole(run_dir / f"{STATE}.json") as partial:
        partial.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def resume_state(
    run_dir: Path,
    record: dict,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what ``save_state`` wrote (optimizer, RNGs); return (the state JSON {"step", "elapsed_s", ...}, the
    extra tensors). InputError when run_dir holds no state or was run with settings other than record.
    """
    record_path = run_dir / "run.json"
    if not (run_dir / f"{STATE}.json").is_file() or not record_path.is_file():
        raise InputError(f"{run_dir}: nothing to resume (no {STATE}.json); start without --resume")
    saved = json.loads(record_path.read_text(encoding="utf-8"))
    changed = sorted(k for k, v in record.items() if saved.get(k) != v)
    if changed:
        raise InputError(f"{run_dir}: cannot resume with other settings ({', '.join(changed)} differ)")
    state = json.loads((run_dir / f"{STATE}.json").read_text(encoding="utf-8"))
    tensors = load_file(str(run_dir / f"{STATE}.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    generator_state = tensors.pop("generator_rng", None)
    if generator is not None and generator_state is not None:
        generator.set_state(generator_state)
    optimizer_tensors = {k: v.to(device) for k, v in tensors.items() if k.startswith("state.")}
    _restore_optimizer(optimizer, optimizer_tensors, state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    return state, {k: v for k, v in tensors.items() if not k.startswith("state.")}


def hardware(device: torch.device) -> str:
    """One line naming the device the run trains on (CPU model and threads, or the CUDA GPU)."""
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        name = f"{models[0]} ({len(models)} logical cores)" if models else name
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


class Trainer:
    """One training run of one variant in run_dir; ``run()`` trains (or resumes) to settings.steps."""

    def __init__(self, settings: TrainSettings, run_dir: str | Path, device: str = "auto", progress: bool = True):
        settings.check()
        self.settings, self.run_dir, self.progress = settings, check_output_folder(run_dir), progress
        self.device, _ = resolve_device(device)  # a CUDA request without CUDA trains on the CPU
        self.config = VARIANTS[settings.variant]
        self.dataset_sha256 = manifest_sha256(settings.data)
        self.train = load_split(settings.data, "train")
        self.val = load_split(settings.data, "val")
        self.val_masks = split_masks(self.val)
        if not self.train["hu"]:
            raise InputError(f"{settings.data}: the train split has no simulated samples")
        torch.manual_seed(settings.seed)
        self.model = build_network(self.config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
        self.rng = np.random.default_rng(settings.seed)
        self.sampler = PatchSampler(self.train, settings.patch, self.rng, settings.noise_gain, self.config.windows)
        self.step, self.elapsed_s, self.metrics = 0, 0.0, {}
        dtype = None
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.autocast_dtype = dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def _run_record(self) -> dict:
        record = {**asdict(self.settings), "dataset_manifest_sha256": self.dataset_sha256}
        return json.loads(json.dumps(record))  # as stored in run.json (tuples become lists)

    def resume(self) -> None:
        """Load the last checkpoint and trainer state of run_dir; InputError when absent or settings differ."""
        state, _ = resume_state(self.run_dir, self._run_record(), self.optimizer, self.rng, None, self.device)
        model, card = checkpoints.load(self.run_dir / MODEL)
        self.model.load_state_dict(model.state_dict())
        self.step, self.elapsed_s, self.metrics = state["step"], state["elapsed_s"], card.get("metrics", {})

    def card(self) -> dict:
        """The free-form part of the model card: training settings and provenance, latest validation metrics."""
        dataset = json.loads((Path(self.settings.data) / "manifest.json").read_text(encoding="utf-8"))
        training = {
            **self._run_record(),
            "dataset_parameters": dataset["parameters"],
            "dataset_sources": [{k: s[k] for k in ("id", "group", "kind", "split")} for s in dataset["sources"]],
            "step": self.step,
            "wall_time_s": round(self.elapsed_s, 1),
            "hardware": hardware(self.device),
            "precision": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32",
            "torch_version": torch.__version__,
            "optimizer": f"AdamW (weight decay {WEIGHT_DECAY}), warm-up {WARMUP_STEPS} steps, cosine decay",
        }
        return {"name": self.run_dir.name, "training": training, "metrics": self.metrics}

    def save(self) -> None:
        """Write the checkpoint (model + card) and the trainer state; each file replaced whole."""
        checkpoints.save(self.model, self.config, self.card(), self.run_dir / MODEL)
        save_state(self.run_dir, self._run_record(), self.optimizer, self.rng, None, self.step, self.elapsed_s)

    def validate(self) -> dict[str, float]:
        """Metrics of the current model on the val split (``evaluate.evaluate_split``); {} when it is empty."""
        if not self.val["hu"]:
            return {}
        self.model.eval()
        metrics = evaluate_split(self.model, self.val, self.device, self.val_masks)
        self.model.train()
        return metrics

    def train_step(self) -> dict[str, float]:
        """One optimizer step on one batch; returns the loss terms as floats."""
        batch = {k: v.to(self.device) for k, v in self.sampler.batch(self.settings.batch).items()}
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        x = network_input(batch["hu"], self.config.inputs, self.config.windows)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            outputs = self.model(x)
        dose = (batch["dose_class"], batch["log_dose"]) if self.config.dose_head else (None, None)
        terms = loss_terms(outputs, batch["ssim"], *dose, alpha=self.settings.alpha)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def run(self, stop_at: int | None = None) -> dict:
        """Train from the current step to settings.steps (or stop_at, for tests), validating and checkpointing
        every checkpoint_every steps and at the end; returns the final model card's free-form part."""
        from torch.utils.tensorboard import SummaryWriter

        end = min(self.settings.steps, stop_at or self.settings.steps)
        writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step)
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            total=end, initial=self.step, desc=f"train {self.settings.variant}", unit="step", disable=not self.progress
        )
        start = time.perf_counter() - self.elapsed_s
        while self.step < end:
            terms = self.train_step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(1)
            if self.step % LOG_EVERY == 0:
                for key, value in sums.items():
                    writer.add_scalar(f"train/{key}", value / LOG_EVERY, self.step)
                writer.add_scalar("train/lr", learning_rate(self.step - 1, self.settings), self.step)
                bar.set_postfix(loss=f"{sums['total'] / LOG_EVERY:.4f}")
                sums = {}
            if self.step % self.settings.checkpoint_every == 0 or self.step == end:
                self.elapsed_s = time.perf_counter() - start
                self.metrics = self.validate()
                for key, value in self.metrics.items():
                    writer.add_scalar(f"val/{key}", value, self.step)
                self.save()
        bar.close()
        writer.close()
        return self.card()
