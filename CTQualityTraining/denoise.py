"""Denoiser training (``ctqa-train denoise-data`` and ``ctqa-train denoise``): simulated pairs or low-dose alone.

Dataset (``build_denoise_dataset``, folder DIR): ``DIR/manifest.json`` and one shard ``DIR/shards/<source>.npz``
per source, resumable like the other datasets (a finished shard records its build and is kept). A shard holds
``noisy`` int16 (n, y, x) HU, ``clean`` int16 (m, y, x) HU and ``clean_of`` int32 (n,) (the clean image of each
noisy one, -1 for none), ``dose`` float32 (n,) (NaN when unknown), ``kind`` (n,) index into KINDS, ``slice`` (n,),
``pixel_mm``. Kinds:

- "simulated": a real slice lowered by the projection simulation (``projection.simulate``, noise model "insert")
  to each dose of ``doses`` and for each kernel of ``kernels``; its clean image is the slice itself ("native") or the
  full-dose re-reconstruction of that kernel.
- "mayo-pair": a real quarter-dose image and its full-dose partner (a folder of Mayo .npy pairs).
- "acquired" (``as_is=True``): the slices as they were acquired, with no clean image: data for the self-supervised
  route from a clinic's own low-dose series.

Splits by patient (``datasets.assign_splits``): ``DENOISE_SPLIT_GROUPS`` (val: two chest_sbu patients), every other
group trains. The real Mayo pairs of patient L506 are the evaluation (``denoise_eval``), never trained on.

Training (``DenoiseTrainer``), random augmented patches (90 deg rotations, flips) of the train split:

- "supervised" (RED-CNN): MSE between the network's output and the clean patch, both on the network scale
  (HU / 1000); by default (``loss="relative"``) each patch's MSE is divided by its input's (the noisy patch's MSE
  against the clean one, floored at RELATIVE_FLOOR_HU squared), so that every dose and kernel weighs by the share
  of its error removed, as a PSNR gain does: with the plain MSE the noisiest patches (5 % dose, sharp kernel, 100 HU
  and more) dominated the gradient, and after 1000 steps the real Mayo quarter-dose images gained 1.3 dB while the
  simulated val pairs gained 2.1. Noise-gain augmentation: noisy' = clean + g (noisy - clean), g log-uniform in
  ``noise_gain``, which is the same acquisition at another dose, so the doses between the simulated ones are covered.
- "neighbor2neighbor" (Huang et al. 2021), the route that needs no full-dose image, in the spirit of the clinical
  seed's task-driven learning from low-dose data alone: it reads only ``noisy``. Two sub-images g1(y), g2(y) take one
  of two adjacent pixels of every 2 x 2 cell of the noisy patch y, chosen at random; their noise is (nearly)
  independent while their signal differs by one pixel, so the network f trained on ||f(g1 y) - g2 y||^2 learns
  the noise-free image (Noise2Noise); the regulariser gamma ||f(g1 y) - g2 y - (g1 f(y) - g2 f(y))||^2 (f(y)
  without gradient; gamma ramped linearly from 0 to ``gamma``) corrects for the one-pixel offset. Chosen over
  Noise2Void (blind spot: loses the centre pixel, blurs more) and over noise learned from low-dose images and
  transferred to clean ones (needs clean images of the same scanner, which the route is meant to do without). CT
  noise is spatially correlated (the reconstruction kernel), which breaks the independence between neighbours in
  part: the network then keeps part of the noise; docs/denoise_evaluation.md measures what that costs.

Validation: PSNR (dB; HU clipped to ``denoise_network.INPUT_CLIP_HU``, range 4096 HU) of the denoised val slices
against their clean images, and the gain over the noisy input; the self-supervised route uses clean images only for
this report, never for training (and an "acquired" dataset has none: no validation metrics).

``min_body``: a patch is drawn again (up to PATCH_TRIES times) while less than this share of it is above BODY_HU,
so that training sees mostly the patient; 0 samples the slices uniformly, air around the patient included (60 % of a
Mayo slice), whose noise a denoiser should remove too.
``init``: a checkpoint to start from (a second schedule after a first run), of the same architecture or of the same
without the non-local block (which then starts as the identity); its path and the sha256 of its weights are kept
in the card.

Run folder: ``run.json`` (settings), ``model.safetensors`` + ``model.json`` (the checkpoint, ``save_denoise_model``)
and the trainer state (optimizer, RNGs; ``trainer.resume_state``); ``--resume`` continues bit-identically.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.models.denoise_network import (
    HU_SCALE,
    INPUT_CLIP_HU,
    METHODS,
    NONLOCAL_PREFIX,
    DenoiseNet,
    DenoiseNetConfig,
    build_denoise_network,
    denoise_input,
    denoise_slices,
    load_denoise_model,
    save_denoise_model,
)
from ctqa.models.inference import resolve_device
from ctqa.models.registry import checkpoint_files, read_json
from ctqa.outputs import check_output_folder, written_whole

from .datasets import assign_splits, find_sources, pad_to_square, shard_build, source_entries
from .projection import check_ct_slices, simulate
from .trainer import MODEL, WEIGHT_DECAY, hardware, learning_rate, manifest_sha256, resume_state, save_state

DENOISE_FORMAT = "ctqa-denoise-slices/1"
KINDS = ("simulated", "mayo-pair", "acquired")
DEFAULT_DOSES = (0.05, 0.1, 0.25, 0.5)
DEFAULT_KERNELS = ("native", "sharp")
DEFAULT_SLICES_PER_VOLUME = 6
DENOISE_SPLIT_GROUPS = {"A046441": "val", "A048383": "val"}
#: A patch is re-drawn (up to PATCH_TRIES times) until at least ``min_body`` of it is above BODY_HU (HU).
BODY_HU = -900.0
PATCH_TRIES = 10
#: PSNR range (HU): the clip range of the network input, 4096 HU (the [0, 1] scale of the Mayo .npy files).
PSNR_RANGE_HU = INPUT_CLIP_HU[1] - INPUT_CLIP_HU[0] + 1.0
#: Supervised losses; "relative": each patch's MSE over its input's MSE, the latter floored at RELATIVE_FLOOR_HU^2.
LOSSES = ("relative", "mse")
RELATIVE_FLOOR_HU = 2.0


def _evenly(count: int, wanted: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, wanted)).round().astype(int))


def _as_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def _shard_arrays(data: dict, parameters: dict, seed: int, source: str) -> dict[str, np.ndarray]:
    """Shard arrays (module docstring) of one loaded source."""
    chosen = _evenly(data["hu"].shape[0], parameters["slices_per_volume"])
    slices = check_ct_slices(pad_to_square(np.asarray(data["hu"], np.float32)[chosen]), source)
    pixel_mm = float(data["pixel_mm"])
    noisy, clean, clean_of, dose, kind, index = [], [], [], [], [], []
    if parameters["as_is"]:
        noisy.append(slices)
        clean_of += [-1] * len(chosen)
        dose += [math.nan] * len(chosen)
        kind += [KINDS.index("acquired")] * len(chosen)
        index += chosen.tolist()
    elif "quarter" in data:
        noisy.append(pad_to_square(np.asarray(data["quarter"], np.float32)[chosen]))
        clean.append(slices)
        clean_of += list(range(len(chosen)))
        dose += [0.25] * len(chosen)
        kind += [KINDS.index("mayo-pair")] * len(chosen)
        index += chosen.tolist()
    else:
        doses = tuple(parameters["doses"])
        runs = simulate(slices, pixel_mm, doses, tuple(parameters["kernels"]), seed=seed, source=source)
        for kernel in parameters["kernels"]:
            run = runs[kernel]
            base = sum(len(c) for c in clean)
            clean.append(run.reference)
            for d, fraction in enumerate(doses):
                noisy.append(run.hu[d])
                clean_of += [base + j for j in range(len(chosen))]
                dose += [fraction] * len(chosen)
                kind += [KINDS.index("simulated")] * len(chosen)
                index += chosen.tolist()
    side = slices.shape[-1]
    return {
        "noisy": _as_int16(np.concatenate(noisy)),
        "clean": _as_int16(np.concatenate(clean)) if clean else np.zeros((0, side, side), np.int16),
        "clean_of": np.asarray(clean_of, np.int32),
        "dose": np.asarray(dose, np.float32),
        "kind": np.asarray(kind, np.int8),
        "slice": np.asarray(index, np.int32),
        "pixel_mm": np.float32(pixel_mm),
    }


def build_denoise_dataset(
    paths,
    out: str | os.PathLike,
    doses=DEFAULT_DOSES,
    kernels=DEFAULT_KERNELS,
    slices_per_volume: int = DEFAULT_SLICES_PER_VOLUME,
    seed: int = 0,
    split_groups: dict[str, str] | None = None,
    as_is: bool = False,
    pixel_mm: float | None = None,
    progress: bool = True,
) -> dict:
    """Build (or resume) a denoising dataset in out from the sources under paths (``datasets.find_sources``);
    returns the manifest. as_is: keep the slices as acquired (no simulation, no clean images). split_groups:
    explicit {group: split}; None: DENOISE_SPLIT_GROUPS for the groups present; other groups train."""
    folder = check_output_folder(out)
    if slices_per_volume < 1:
        raise InputError("slices per volume must be at least 1")
    doses = sorted({float(d) for d in doses}, reverse=True)
    if not doses or not all(0 < d < 1 for d in doses):
        raise InputError(f"doses must lie in (0, 1), got {doses}")
    sources = sorted(find_sources(paths, pixel_mm), key=lambda s: s.id)
    groups = [source.group for source in sources]
    explicit = {
        g: s for g, s in (DENOISE_SPLIT_GROUPS if split_groups is None else split_groups).items() if g in groups
    }
    splits = assign_splits(groups, seed, {g: explicit.get(g, "train") for g in groups})
    parameters = {
        "doses": doses,
        "kernels": list(kernels),
        "slices_per_volume": int(slices_per_volume),
        "seed": int(seed),
        "as_is": bool(as_is),
        "pixel_mm": pixel_mm,
        "split_groups": dict(sorted(explicit.items())),
    }
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        stored = json.loads(manifest_path.read_text(encoding="utf-8"))
        if stored.get("format") != DENOISE_FORMAT or stored.get("parameters") != parameters:
            raise InputError(f"{folder}: holds a dataset built with other parameters; choose a new folder")
    entries = source_entries(sources, splits, seed)
    for source, entry in tqdm(list(zip(sources, entries)), desc="denoise data", unit="source", disable=not progress):
        shard = folder / entry["shard"]
        build = json.dumps({"parameters": parameters, "source": entry}, sort_keys=True)
        if shard_build(shard) != build:
            arrays = _shard_arrays(source.load(), parameters, entry["seed"], source.path)
            with written_whole(shard) as partial:
                np.savez_compressed(partial, build=np.array(build), **arrays)
        with np.load(shard) as stored:
            entry["samples"] = dict(Counter(KINDS[k] for k in stored["kind"].tolist()))
    manifest = {"format": DENOISE_FORMAT, "parameters": parameters, "kinds": list(KINDS), "sources": entries}
    with written_whole(manifest_path) as partial:
        partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


@dataclass
class DenoiseSamples:
    """The slices of one split: noisy (y, x) int16 HU images and, per image, its clean image or None, its dose
    fraction (NaN when unknown) and its pixel size (mm)."""

    noisy: list[np.ndarray] = field(default_factory=list)
    clean: list[np.ndarray | None] = field(default_factory=list)
    dose: list[float] = field(default_factory=list)
    pixel_mm: list[float] = field(default_factory=list)

    @property
    def paired(self) -> int:
        return sum(c is not None for c in self.clean)

    def paired_only(self) -> DenoiseSamples:
        """The images that have a clean image."""
        keep = [i for i, c in enumerate(self.clean) if c is not None]
        return DenoiseSamples(*([getattr(self, f.name)[i] for i in keep] for f in fields(self)))


def load_denoise_split(data: str | os.PathLike, split: str, with_clean: bool = True) -> DenoiseSamples:
    """The samples of one split of a denoising dataset; with_clean=False never reads a clean image (the
    self-supervised route). InputError when data is not a denoising dataset."""
    path = Path(data) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest["format"] != DENOISE_FORMAT:
            raise ValueError(manifest["format"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{data}: not a denoising dataset (build one with ctqa-train denoise-data)") from None
    samples = DenoiseSamples()
    for entry in manifest["sources"]:
        if entry["split"] != split:
            continue
        with np.load(Path(data) / entry["shard"]) as shard:
            noisy, clean_of, doses = shard["noisy"], shard["clean_of"], shard["dose"]
            pixel_mm = float(shard["pixel_mm"])
            clean = shard["clean"] if with_clean else None
        for image, which, dose in zip(noisy, clean_of, doses):
            samples.noisy.append(image)
            samples.clean.append(clean[which] if clean is not None and which >= 0 else None)
            samples.dose.append(round(float(dose), 6))  # float32 in the shard: 0.1 comes back as 0.10000000149
            samples.pixel_mm.append(pixel_mm)
    return samples


@dataclass(frozen=True)
class DenoiseTrainSettings:
    """Settings of one run; all must match when a run is resumed (the device may differ)."""

    data: str
    method: str = "supervised"
    width: int = 64
    space_to_depth: int = 2
    nonlocal_window: int = 0
    steps: int = 3000
    batch: int = 16
    patch: int = 64
    lr: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 500
    noise_gain: tuple[float, float] = (0.7, 1.4)
    gamma: float = 2.0
    loss: str = "relative"
    init: str | None = None
    min_body: float = 0.1

    @property
    def config(self) -> DenoiseNetConfig:
        return DenoiseNetConfig(self.width, self.space_to_depth, self.nonlocal_window)

    def check(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        try:
            config = self.config
        except ValueError as error:
            raise InputError(str(error)) from None
        multiple = config.required_multiple * (2 if self.method == "neighbor2neighbor" else 1)
        if self.patch < multiple or self.patch % multiple:
            raise InputError(f"--patch must be a positive multiple of {multiple} here, got {self.patch}")
        if min(self.steps, self.batch, self.checkpoint_every) < 1 or self.lr <= 0 or self.gamma < 0:
            raise InputError("--steps, --batch and --checkpoint-every must be >= 1, --lr > 0 and --gamma >= 0")
        if not 0 < self.noise_gain[0] <= self.noise_gain[1]:
            raise InputError(f"--noise-gain needs 0 < LOW <= HIGH, got {self.noise_gain}")


class PatchSampler:
    """Random augmented patches (B, 1, P, P) float32 HU of a split: noisy and, for supervised training, clean."""

    def __init__(
        self, samples: DenoiseSamples, patch: int, rng: np.random.Generator, noise_gain=(1.0, 1.0), min_body=0.1
    ):
        self.samples, self.patch, self.rng, self.noise_gain = samples, patch, rng, tuple(noise_gain)
        self.min_body = min_body
        areas = np.array([image.size for image in samples.noisy], np.float64)
        self.weights = areas / areas.sum()

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        noisy, clean, p = self.samples.noisy[index], self.samples.clean[index], self.patch
        if min(noisy.shape) < p:
            pad = [(0, max(0, p - n)) for n in noisy.shape]
            noisy = np.pad(noisy, pad, constant_values=INPUT_CLIP_HU[0])
            clean = None if clean is None else np.pad(clean, pad, constant_values=INPUT_CLIP_HU[0])
        for _ in range(PATCH_TRIES):
            y, x = (int(self.rng.integers(0, n - p + 1)) for n in noisy.shape)
            if (noisy[y : y + p, x : x + p] > BODY_HU).mean() >= self.min_body:
                break
        noisy = noisy[y : y + p, x : x + p].astype(np.float32)
        if clean is None:
            return noisy, None
        clean = clean[y : y + p, x : x + p].astype(np.float32)
        if self.noise_gain != (1.0, 1.0):
            gain = float(np.exp(self.rng.uniform(*np.log(self.noise_gain))))
            noisy = clean + gain * (noisy - clean)
        return noisy, clean

    def batch(self, size: int, with_clean: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        noisy, clean = [], []
        for index in self.rng.choice(len(self.weights), size, p=self.weights):
            pair = self._crop(int(index))
            k, flip = int(self.rng.integers(0, 4)), bool(self.rng.integers(0, 2))
            pair = [None if a is None else np.rot90(a, k) for a in pair]
            if flip:
                pair = [None if a is None else a[:, ::-1] for a in pair]
            noisy.append(np.ascontiguousarray(pair[0]))
            clean.append(None if pair[1] is None else np.ascontiguousarray(pair[1]))
        noisy_t = torch.from_numpy(np.stack(noisy))[:, None]
        if not with_clean:
            return noisy_t, None
        return noisy_t, torch.from_numpy(np.stack(clean))[:, None]


#: Neighbor2Neighbor's pairs of adjacent pixels in a 2 x 2 cell (index 2 row + column), both orders.
_NEIGHBOURS = torch.tensor([(0, 1), (1, 0), (0, 2), (2, 0), (1, 3), (3, 1), (2, 3), (3, 2)])


def neighbour_choice(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H/2, W/2) random pair indices into _NEIGHBOURS for images of shape (B, 1, H, W)."""
    b, _, h, w = shape
    return torch.randint(0, len(_NEIGHBOURS), (b, 1, h // 2, w // 2), generator=generator)


def neighbour_subsample(images: torch.Tensor, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g1, g2): the two sub-images (B, C, H/2, W/2) of images (B, C, H, W) picking, per 2 x 2 cell, the pair of
    adjacent pixels choice names (``neighbour_choice``)."""
    cells = F.pixel_unshuffle(images, 2)  # (B, 4 C, H/2, W/2): channel 4 c + 2 row + column
    b, c4, h, w = cells.shape
    cells = cells.reshape(b, c4 // 4, 4, h, w)
    pairs = _NEIGHBOURS.to(images.device)[choice.to(images.device)[:, 0]]  # (B, H/2, W/2, 2)
    first = pairs[..., 0][:, None, None].expand(b, c4 // 4, 1, h, w)
    second = pairs[..., 1][:, None, None].expand(b, c4 // 4, 1, h, w)
    return cells.gather(2, first)[:, :, 0], cells.gather(2, second)[:, :, 0]


def psnr_db(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of image against reference, HU clipped to INPUT_CLIP_HU, peak PSNR_RANGE_HU."""
    a, b = (np.clip(np.asarray(x, np.float64), *INPUT_CLIP_HU) for x in (image, reference))
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(PSNR_RANGE_HU**2 / mse)


def start_from(model: DenoiseNet, init: str) -> None:
    """Load the weights of checkpoint init into model: the same architecture, or model's without its non-local block
    (which starts as the identity, so that training starts from init's function)."""
    start, _ = load_denoise_model(init, next(model.parameters()).device)
    plain = replace(model.config, nonlocal_window=0)
    if start.config not in (model.config, plain):
        raise InputError(f"{init}: --init must have the architecture {model.config} or {plain}")
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    if unexpected or any(not key.startswith(NONLOCAL_PREFIX) for key in missing):
        raise InputError(f"{init}: its weights do not fit {model.config}")


class DenoiseTrainer:
    """One training run in run_dir; ``run()`` trains (or, after ``resume()``, continues) to settings.steps."""

    def __init__(self, settings: DenoiseTrainSettings, run_dir: str | Path, device: str = "auto", progress=True):
        settings.check()
        self.settings, self.run_dir, self.progress = settings, check_output_folder(run_dir), progress
        self.device, _ = resolve_device(device)
        self.dataset_sha256 = manifest_sha256(settings.data)
        self.supervised = settings.method == "supervised"
        train = load_denoise_split(settings.data, "train", with_clean=self.supervised)
        if self.supervised:
            train = train.paired_only()
        if not train.noisy:
            raise InputError(f"{settings.data}: no {'paired ' if self.supervised else ''}slices in the train split")
        self.val = load_denoise_split(settings.data, "val")
        torch.manual_seed(settings.seed)
        self.model = build_denoise_network(settings.config).to(self.device)
        if settings.init:
            start_from(self.model, settings.init)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
        self.rng = np.random.default_rng(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)
        gain = settings.noise_gain if self.supervised else (1.0, 1.0)
        self.sampler = PatchSampler(train, settings.patch, self.rng, gain, settings.min_body)
        self.step, self.elapsed_s, self.metrics = 0, 0.0, {}

    def _run_record(self) -> dict:
        record = {**asdict(self.settings), "dataset_manifest_sha256": self.dataset_sha256}
        if self.settings.init:
            init_card = read_json(checkpoint_files(self.settings.init)[0], "model card")
            record["init_weights_sha256"] = init_card.get("weights_sha256")
        return json.loads(json.dumps(record))

    def card(self) -> dict:
        dataset = json.loads((Path(self.settings.data) / "manifest.json").read_text(encoding="utf-8"))
        training = {
            **self._run_record(),
            "dataset_parameters": dataset["parameters"],
            "dataset_sources": [{k: s[k] for k in ("id", "group", "kind", "split")} for s in dataset["sources"]],
            "full_dose_images_used": "training and validation" if self.supervised else "validation metrics only",
            "step": self.step,
            "wall_time_s": round(self.elapsed_s, 1),
            "hardware": hardware(self.device),
            "torch_version": torch.__version__,
            "optimizer": f"AdamW (weight decay {WEIGHT_DECAY}), warm-up, cosine decay",
        }
        return {"name": self.run_dir.name, "training": training, "metrics": self.metrics}

    def save(self) -> None:
        """Write the checkpoint (model + card) and the trainer state; each file replaced whole."""
        save_denoise_model(self.model, self.card(), self.run_dir / MODEL)
        save_state(
            self.run_dir, self._run_record(), self.optimizer, self.rng, self.generator, self.step, self.elapsed_s
        )

    def resume(self) -> None:
        """Continue from run_dir's last checkpoint; InputError when there is none or the settings differ."""
        state, _ = resume_state(self.run_dir, self._run_record(), self.optimizer, self.rng, self.generator, self.device)
        model, card = load_denoise_model(self.run_dir / MODEL, self.device)
        self.model.load_state_dict(model.state_dict())
        self.step, self.elapsed_s, self.metrics = state["step"], state["elapsed_s"], card.get("metrics", {})

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean PSNR (dB) of the denoised val slices against their clean images, and the gain over the input."""
        pairs = [(n, c) for n, c in zip(self.val.noisy, self.val.clean) if c is not None]
        if not pairs:
            return {}
        self.model.eval()
        before, after = [], []
        for noisy, clean in pairs:
            hu = torch.from_numpy(noisy.astype(np.float32))[None].to(self.device)
            denoised = denoise_slices(self.model, hu)[0].cpu().numpy()
            before.append(psnr_db(noisy, clean))
            after.append(psnr_db(denoised, clean))
        self.model.train()
        return {"psnr_db": float(np.mean(after)), "psnr_gain_db": float(np.mean(after) - np.mean(before))}

    def _loss(self, noisy: torch.Tensor, clean: torch.Tensor | None) -> dict[str, torch.Tensor]:
        y = denoise_input(noisy.to(self.device))
        if self.supervised:
            target = denoise_input(clean.to(self.device))
            error = (self.model(y) - target).pow(2).mean(dim=(1, 2, 3))
            if self.settings.loss == "relative":
                error = error / (y - target).pow(2).mean(dim=(1, 2, 3)).clamp_min((RELATIVE_FLOOR_HU / HU_SCALE) ** 2)
            return {"total": error.mean()}
        choice = neighbour_choice(y.shape, self.generator)
        with torch.no_grad():
            full_g1, full_g2 = neighbour_subsample(self.model(y), choice)
        g1, g2 = neighbour_subsample(y, choice)
        out = self.model(g1)
        reconstruction = F.mse_loss(out, g2)
        regulariser = F.mse_loss(out - g2, full_g1 - full_g2)
        gamma = self.settings.gamma * self.step / self.settings.steps
        return {
            "reconstruction": reconstruction,
            "regulariser": regulariser,
            "total": reconstruction + gamma * regulariser,
        }

    def train_step(self) -> dict[str, float]:
        noisy, clean = self.sampler.batch(self.settings.batch, with_clean=self.supervised)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        terms = self._loss(noisy, clean)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def run(self, stop_at: int | None = None) -> dict:
        """Train to settings.steps (or stop_at, for tests), validating and checkpointing every checkpoint_every
        steps and at the end; returns the model card's free-form part."""
        end = min(self.settings.steps, stop_at or self.settings.steps)
        self.model.train()
        bar = tqdm(total=end, initial=self.step, desc=f"denoise {self.settings.method}", disable=not self.progress)
        start = time.perf_counter() - self.elapsed_s
        recent: list[float] = []
        while self.step < end:
            recent = (recent + [self.train_step()["total"]])[-50:]
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.3g}", refresh=False)
            if self.step % self.settings.checkpoint_every == 0 or self.step == end:
                self.elapsed_s = time.perf_counter() - start
                self.metrics = {**self.validate(), "train_loss": float(np.mean(recent))}
                self.save()
                bar.write(f"step {self.step}: {json.dumps(self.metrics)}")
        bar.close()
        return self.card()


def train(settings: DenoiseTrainSettings, run_dir: str | Path, device: str = "auto", resume: bool = False) -> Path:
    """Train (or resume) one denoiser; returns the checkpoint's card path."""
    trainer = DenoiseTrainer(settings, run_dir, device)
    if resume:
        trainer.resume()
    trainer.run()
    return trainer.run_dir / f"{MODEL}.json"


def _markdown(name: str, card: dict, size_bytes: int) -> str:
    """A human-readable model card of a denoiser from its JSON card."""
    t, metrics = card["training"], card.get("metrics", {})
    parameters = t.get("dataset_parameters", {})
    sources = "\n".join(
        f"  - `{s['id']}` ({s['kind']}, group `{s['group']}`): {s['split']}" for s in t.get("dataset_sources", [])
    )
    if t.get("method") == "neighbor2neighbor":
        how = (
            "Neighbor2Neighbor (self-supervised): trained on low-dose images alone, two neighbouring-pixel "
            f"sub-images of each patch as input and target, regulariser weight ramped to {t.get('gamma')}; no "
            "full-dose image was read for training (the val split's are used only for the metrics below)."
        )
    else:
        loss = "each patch's MSE over its input's (relative)" if t.get("loss") == "relative" else "MSE"
        how = (
            f"supervised: {loss} to the full-dose image on simulated low-dose / full-dose pairs, noise-gain "
            f"augmentation {t.get('noise_gain')}."
        )
    if t.get("init"):
        how += (
            f" Started from `{t['init']}` (weights sha256 `{t.get('init_weights_sha256')}`): the figures below are "
            "of this last schedule; `reproduce` runs every schedule before it too."
        )
    lines = [
        f"# Model card: {name}",
        "",
        "Low-dose CT denoiser, RED-CNN family (5 convolutions + 5 deconvolutions with shortcuts, on the slice folded "
        "2 x 2 as FFDNet does; residual: it predicts the correction to the input). Input and output in HU.",
        "",
        f"- Architecture: `{json.dumps(card['architecture'])}`",
        f"- Input: {card['input']['normalisation']}",
        f"- Weights: `{name}.safetensors`, {size_bytes / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
        "",
        "## Training",
        "",
        f"- Method: {how}",
        f"- Data: real slices lowered by the projection simulation to doses {parameters.get('doses')} with kernels "
        f"{parameters.get('kernels')}, {parameters.get('slices_per_volume')} slices per volume; dataset manifest "
        f"sha256 `{t.get('dataset_manifest_sha256')}`. Sources and their splits:",
        sources,
        f"- Optimisation: {t.get('step')} steps of {t.get('batch')} random {t.get('patch')}² patches (flips, 90° "
        f"rotations; at least {t.get('min_body', 0.1)} of each above {BODY_HU:g} HU), {t.get('optimizer')}, peak lr "
        f"{t.get('lr')}, seed {t.get('seed')}.",
        f"- Hardware: {t.get('hardware')}, torch {t.get('torch_version')}; training time "
        f"{t.get('wall_time_s', 0) / 60:.1f} min.",
        "",
        "## Validation (val split, simulated pairs)",
        "",
        "".join(f"- {key}: {value:.4f}\n" for key, value in metrics.items()) or "- none (no val pairs)\n",
        "## Evaluation and limits",
        "",
        "On the real Mayo quarter/full-dose pairs (never trained on), beside non-local means and BM3D: "
        "`docs/denoise_evaluation.md`. Trained on a handful of patients with simulated noise; check the denoised "
        "image against the original before reading anything from it.",
    ]
    if card.get("reproduce"):
        lines += ["", "## Reproduce", "", "From the repository root, with the project's venv active:", ""]
        lines += [f"    {card['reproduce']}"]
    return "\n".join(lines) + "\n"


def export(
    checkpoint: str | Path, name: str, models_dir: Path, default: bool = False, reproduce: str | None = None
) -> Path:
    """Bundle a denoise checkpoint as model name in models_dir (weights, JSON and Markdown cards, manifest entry)."""
    from .export import bundle

    model, card = load_denoise_model(checkpoint)
    return bundle(
        name, card, lambda kept, path: save_denoise_model(model, kept, path), _markdown, models_dir, default, reproduce
    )
