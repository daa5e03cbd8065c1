"""Training of the global 0-4 score networks (``ctqa-train score``): supervised, MD-IQA's semi-supervised step,
TFKT's two phases, resume, evaluation, calibration to a user's radiologists and the ablation.

Supervised (MD-IQA's L_sup): L2 + beta * KL to the multi-scale Gaussian targets (distribution head), or L2 to the
score (regression head); ``score_network.loss_terms``.

Semi-supervised (MD-IQA, their section on semi-supervised learning), two steps:
1. Several supervised models (``teachers``: checkpoints) score every unlabelled slice; the ensemble mean of their
   decoded scores is its pseudo-label (computed once per run, stored in the run folder).
2. Joint training of a student from scratch with a mean teacher (EMA of the student's weights, alpha = ``ema``):
   L = lambda1 L_sup(labelled) + lambda2 L_sup(unlabelled, pseudo-labels) + lambda3(t) MSE(student(view 1),
   teacher(view 2)) on the unlabelled slices, where views are independent rotations/flips and lambda3 ramps up as
   exp(-5 (1 - t)^2) over ``consistency_warmup`` steps (Laine and Aila). The EMA teacher is the exported model.

TFKT (two phases): with ``pretrain_steps`` > 0 the CNN branch F is first trained alone with a pooled regression head
(``score_network`` says which modules), then the whole network is fine-tuned; ``pretrained`` loads a local backbone
weights file before either phase (no downloads).

Batches: ``batch`` whole slices (512 x 512 HU, score_network.score_input renders them in W350/L40), each rotated by
k x 90 deg and flipped at random. AdamW, warm-up then cosine decay (``trainer.learning_rate``). All randomness comes
from one numpy generator and torch's RNG, both saved with each checkpoint, so a resumed run is bit-identical to an
uninterrupted one on the same device.

A run folder holds ``run.json`` (settings), ``model.json`` + ``model.safetensors`` (the exported model: the student,
or the EMA teacher in semi-supervised runs), ``trainer_state.*`` (optimizer, RNGs, EMA weights) and, for
semi-supervised runs, ``pseudo_labels.json``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.models.inference import resolve_device
from ctqa.models.score_network import (
    ScoreNetConfig,
    build_score_network,
    grid_of,
    load_score_model,
    loss_terms,
    predict_scores,
    save_score_model,
    score_input,
)
from ctqa.outputs import check_output_folder, written_whole
from ctqa.volume import AIR_HU

from .files import check_output_file
from .metrics import agreement
from .score_data import ScoreSamples, load_score_split
from .trainer import MODEL, STATE, hardware, learning_rate, manifest_sha256, resume_state, save_state

PSEUDO_LABELS = "pseudo_labels.json"
WEIGHT_DECAY = 1e-4
#: Field-of-view augmentation of grid datasets (``narrower_field_of_view``).
FOV_AUGMENT_P = 0.5
FOV_FRACTION = (0.45, 0.95)
FOV_SHIFT = 0.1


@dataclass(frozen=True)
class ScoreTrainSettings:
    """Settings of one run; all of them must match when a run is resumed (module docstring for the terms).

    teachers: checkpoints whose ensemble gives the pseudo-labels; none = supervised only. lambda_pseudo (lambda2),
    lambda_consistency (lambda3 after warm-up), beta: weight of the KL term. pretrain_steps: TFKT phase one steps
    (tfkt only; counted within steps). pretrained: local backbone weights; init: a score checkpoint to fine-tune
    (its architecture must be backbone + head).
    """

    data: str
    backbone: str = "mdiqa"
    head: str = "distribution"
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    beta: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    teachers: tuple[str, ...] = ()
    ema: float = 0.997
    lambda_pseudo: float = 0.1
    lambda_consistency: float = 1.0
    consistency_warmup: int = 500
    pretrain_steps: int = 0
    pretrained: str | None = None
    init: str | None = None

    def check(self) -> None:
        """InputError for settings that cannot train."""
        if min(self.steps, self.batch, self.checkpoint_every) < 1 or self.lr <= 0 or self.beta < 0:
            raise InputError("--steps, --batch and --checkpoint-every must be >= 1, --lr > 0 and --beta >= 0")
        if not 0 < self.ema < 1:
            raise InputError(f"--ema must lie in (0, 1), got {self.ema}")
        if self.pretrain_steps and self.backbone != "tfkt":
            raise InputError("--pretrain-steps is TFKT's phase one: it needs --backbone tfkt")
        if not 0 <= self.pretrain_steps < self.steps:
            raise InputError(f"--pretrain-steps must lie in [0, --steps), got {self.pretrain_steps}")

    @property
    def semi_supervised(self) -> bool:
        return bool(self.teachers)


def consistency_weight(step: int, settings: ScoreTrainSettings) -> float:
    """lambda3 at a step: lambda_consistency * exp(-5 (1 - t)^2), t = step / consistency_warmup clipped to 1."""
    t = min(1.0, step / max(1, settings.consistency_warmup))
    return settings.lambda_consistency * math.exp(-5.0 * (1.0 - t) ** 2)


def augment(hu: torch.Tensor, rotations: np.ndarray, flips: np.ndarray) -> torch.Tensor:
    """(B, y, x) slices each rotated by rotations[i] x 90 deg and flipped left-right where flips[i]."""
    views = []
    for image, k, flip in zip(hu, rotations, flips):
        image = torch.rot90(image, int(k), dims=(-2, -1))
        views.append(torch.flip(image, dims=(-1,)) if flip else image)
    return torch.stack(views)


def narrower_field_of_view(hu: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, y, x) canvases, each with probability FOV_AUGMENT_P reduced to a random square reconstruction field of
    view (side FOV_FRACTION of the canvas, centre shifted by up to FOV_SHIFT of the side): air outside, as
    ``score_canvas`` pads a tightly cropped input. Teaches a grid model that a crop is not a quality."""
    size = hu.shape[-1]
    out = hu.clone()
    for image in out:
        if rng.random() >= FOV_AUGMENT_P:
            continue
        side = int(size * rng.uniform(*FOV_FRACTION))
        top, left = (int((size - side) / 2 + rng.uniform(-FOV_SHIFT, FOV_SHIFT) * side) for _ in range(2))
        top, left = min(max(top, 0), size - side), min(max(left, 0), size - side)
        kept = image[top : top + side, left : left + side].clone()
        image.fill_(AIR_HU)
        image[top : top + side, left : left + side] = kept
    return out


class SliceSampler:
    """Random augmented batches of whole slices (and their scores) from one set of samples, in memory; fov: also
    narrow the field of view at random (grid datasets, ``narrower_field_of_view``)."""

    def __init__(self, samples: ScoreSamples, rng: np.random.Generator, fov: bool = False):
        self.hu = torch.from_numpy(np.asarray(samples.hu))
        self.score = torch.from_numpy(np.asarray(samples.score, np.float32))
        self.rng = rng
        self.fov = fov

    def __len__(self) -> int:
        return len(self.hu)

    def indices(self, batch: int) -> np.ndarray:
        return self.rng.integers(0, len(self.hu), batch)

    def view(self, indices: np.ndarray) -> torch.Tensor:
        """float32 HU (B, y, x) of the samples at indices, each in a random rotation/flip."""
        rotations, flips = self.rng.integers(0, 4, len(indices)), self.rng.integers(0, 2, len(indices)).astype(bool)
        views = augment(self.hu[indices].float(), rotations, flips)
        return narrower_field_of_view(views, self.rng) if self.fov else views


def _canvas_pixel(card: dict) -> tuple[float, float] | None:
    """The pixel size of a grid dataset's slices, which are canvases at the model's grid already."""
    grid_mm = grid_of(card)
    return (grid_mm, grid_mm) if grid_mm is not None else None


def ensemble_pseudo_labels(teachers: tuple[str, ...], unlabelled: ScoreSamples, device: torch.device) -> np.ndarray:
    """(n,) mean decoded score of the teacher checkpoints on the unlabelled slices (uncalibrated)."""
    scores = []
    for path in teachers:
        model, card = load_score_model(path, device)
        card = {key: value for key, value in card.items() if key != "calibration"}
        pixel_yx = _canvas_pixel(card)
        scores.append(predict_scores(model, card, np.asarray(unlabelled.hu), device, pixel_yx_mm=pixel_yx)[0])
    return np.mean(scores, axis=0)


@dataclass
class _TrainingState:
    step: int = 0
    elapsed_s: float = 0.0
    metrics: dict = field(default_factory=dict)


class ScoreTrainer:
    """One training run in run_dir; ``run()`` trains (or, after ``resume()``, continues) to settings.steps."""

    def __init__(self, settings: ScoreTrainSettings, run_dir: str | Path, device: str = "auto", progress: bool = True):
        settings.check()
        self.settings, self.run_dir, self.progress = settings, check_output_folder(run_dir), progress
        self.device, _ = resolve_device(device)
        self.dataset_sha256 = manifest_sha256(settings.data)
        labelled = load_score_split(settings.data, "train", labelled=True)
        if len(labelled.score) == 0:
            raise InputError(f"{settings.data}: the train split has no scored slices")
        self.val = load_score_split(settings.data, "val", labelled=True)
        self.config = ScoreNetConfig(backbone=settings.backbone, head=settings.head)
        torch.manual_seed(settings.seed)
        self.model = build_score_network(self.config).to(self.device)
        if settings.init:
            start, card = load_score_model(settings.init, self.device)
            if ScoreNetConfig.from_dict(card["architecture"]) != self.config:
                raise InputError(f"{settings.init}: --init must be a {settings.backbone}/{settings.head} model")
            self.model.load_state_dict(start.state_dict())
        if settings.pretrained:
            from ctqa.models.score_network import load_pretrained_backbone

            load_pretrained_backbone(self.model, settings.pretrained)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
        self.rng = np.random.default_rng(settings.seed)
        dataset = json.loads((Path(settings.data) / "manifest.json").read_text(encoding="utf-8"))
        self.grid_mm = dataset["parameters"].get("grid_mm")
        self.labelled = SliceSampler(labelled, self.rng, fov=self.grid_mm is not None)
        self.unlabelled = self.teacher = None
        if settings.semi_supervised:
            pool = load_score_split(settings.data, "train", labelled=False)
            if len(pool.score) == 0:
                raise InputError(f"{settings.data}: no unlabelled slices in the train split for semi-supervision")
            pool.score = self._pseudo_labels(pool)
            self.unlabelled = SliceSampler(pool, self.rng, fov=self.grid_mm is not None)
            self.teacher = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema), use_buffers=True)
            self.teacher.eval()  # its targets: no dropout, running statistics
        self.state = _TrainingState()

    def _pseudo_labels(self, pool: ScoreSamples) -> np.ndarray:
        """The ensemble's pseudo-labels of the pool, stored in the run folder and reused by a resumed run."""
        path = self.run_dir / PSEUDO_LABELS
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored["teachers"] == list(self.settings.teachers) and len(stored["scores"]) == len(pool.score):
                return np.asarray(stored["scores"], np.float32)
        scores = ensemble_pseudo_labels(self.settings.teachers, pool, self.device).astype(np.float32)
        with written_whole(path) as partial:
            record = {"teachers": list(self.settings.teachers), "scores": scores.tolist()}
            partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
        return scores

    def _run_record(self) -> dict:
        record = {**asdict(self.settings), "dataset_manifest_sha256": self.dataset_sha256}
        return json.loads(json.dumps(record))

    @property
    def exported(self) -> torch.nn.Module:
        """The model a checkpoint holds: the EMA teacher in semi-supervised runs, else the model trained."""
        return self.teacher.module if self.teacher is not None else self.model

    def card(self) -> dict:
        """The free-form part of the model card: settings, provenance, latest validation metrics."""
        dataset = json.loads((Path(self.settings.data) / "manifest.json").read_text(encoding="utf-8"))
        training = {
            **self._run_record(),
            "dataset_parameters": dataset["parameters"],
            "dataset_surrogate": dataset.get("surrogate"),
            "dataset_sources": [{k: s[k] for k in ("id", "group", "kind", "split")} for s in dataset["sources"]],
            "step": self.state.step,
            "wall_time_s": round(self.state.elapsed_s, 1),
            "hardware": hardware(self.device),
            "torch_version": torch.__version__,
            "optimizer": f"AdamW (weight decay {WEIGHT_DECAY}), warm-up, cosine decay",
            "exported": "EMA teacher" if self.teacher is not None else "trained weights",
        }
        return {"name": self.run_dir.name, "training": training, "metrics": self.state.metrics}

    def save(self) -> None:
        """Write the checkpoint (model + card) and the trainer state; each file replaced whole."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_score_model(self.exported, self.config, self.card(), self.run_dir / MODEL)
        extra = {f"student.{k}": v for k, v in self.model.state_dict().items()}
        if self.teacher is not None:
            extra.update({f"ema.{k}": v for k, v in self.teacher.state_dict().items()})
        save_state(
            self.run_dir,
            self._run_record(),
            self.optimizer,
            self.rng,
            None,
            self.state.step,
            self.state.elapsed_s,
            extra,
            {"metrics": self.state.metrics},
        )

    def resume(self) -> None:
        """Continue from run_dir's last checkpoint; InputError when there is none or the settings differ."""
        state, tensors = resume_state(self.run_dir, self._run_record(), self.optimizer, self.rng, None, self.device)
        for prefix, module in (("student.", self.model), ("ema.", self.teacher)):
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if module is not None:
                module.load_state_dict(part)
        self.state = _TrainingState(state["step"], state["elapsed_s"], state["metrics"])

    def validate(self) -> dict[str, float]:
        """Agreement and RMSE of the exported model on the val split; {} when it has fewer than 3 slices."""
        if len(self.val.score) < 3:
            return {}
        model = self.exported
        was_training = model.training
        model.eval()
        metrics = evaluate(model, {}, self.val, self.device)
        model.train(was_training)
        return metrics

    def _input(self, hu: torch.Tensor) -> torch.Tensor:
        return score_input(hu.to(self.device), self.config.space_to_depth)

    def _phase_one(self) -> bool:
        return self.state.step < self.settings.pretrain_steps

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the loss terms as floats."""
        settings = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.state.step, settings)
        indices = self.labelled.indices(settings.batch)
        x = self._input(self.labelled.view(indices))
        target = self.labelled.score[indices].to(self.device)
        terms = loss_terms(self.model(x, phase_one=self._phase_one()), target, self.config, settings.beta)
        total = terms["total"]
        if self.unlabelled is not None and not self._phase_one():
            pool = self.unlabelled.indices(settings.batch)
            student = self.model(self._input(self.unlabelled.view(pool)))
            with torch.no_grad():
                teacher = self.teacher(self._input(self.unlabelled.view(pool)))
            pseudo = loss_terms(student, self.unlabelled.score[pool].to(self.device), self.config, settings.beta)
            student_out, teacher_out = (
                (student.distributions, teacher.distributions)
                if self.config.head == "distribution"
                else (student.score, teacher.score)
            )
            consistency = torch.mean((student_out - teacher_out) ** 2)
            terms = {**terms, "pseudo": pseudo["total"], "consistency": consistency}
            total = total + settings.lambda_pseudo * pseudo["total"]
            total = total + consistency_weight(self.state.step, settings) * consistency
            terms["total"] = total
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update_parameters(self.model)
        self.state.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def run(self, stop_at: int | None = None) -> dict:
        """Train to settings.steps (or stop_at, for tests), validating and checkpointing every checkpoint_every
        steps and at the end; returns the card's free-form part."""
        end = min(self.settings.steps, stop_at or self.settings.steps)
        self.model.train()
        bar = tqdm(total=end, initial=self.state.step, desc=f"train {self.config.backbone}", unit="step")
        bar.disable = not self.progress
        start = time.perf_counter() - self.state.elapsed_s
        while self.state.step < end:
            terms = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{terms['total']:.4f}")
            if self.state.step % self.settings.checkpoint_every == 0 or self.state.step == end:
                self.state.elapsed_s = time.perf_counter() - start
                self.state.metrics = self.validate()
                self.save()
        bar.close()
        return self.card()


def evaluate(model: torch.nn.Module, card: dict, samples: ScoreSamples, device: torch.device) -> dict[str, float]:
    """LDCTIQAC2023 agreement (|PLCC|, |SROCC|, |KROCC|, overall) and RMSE of model's scores against samples'."""
    predicted = predict_scores(model, card, np.asarray(samples.hu), device, pixel_yx_mm=_canvas_pixel(card))[0]
    reference = np.asarray(samples.score, np.float64)
    fit = agreement(predicted, reference)
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
    return {"plcc": fit.plcc, "srocc": fit.srocc, "krocc": fit.krocc, "overall": fit.overall, "rmse": rmse}


def train(settings: ScoreTrainSettings, run_dir: str | Path, device: str = "auto", resume: bool = False) -> Path:
    """Train (or resume) one run; returns the path of its model card."""
    trainer = ScoreTrainer(settings, run_dir, device, progress=True)
    if resume:
        trainer.resume()
    trainer.run()
    return trainer.run_dir / f"{MODEL}.json"


def read_ratings(path: str | Path) -> list[tuple[Path, float]]:
    """(image path, score) rows of a ratings CSV with columns path,score (paths relative to the CSV's folder);
    InputError naming the line for a missing column, a missing file or a score outside 0-4."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    if not rows or not {"path", "score"} <= set(rows[0]):
        raise InputError(f"{path}: needs a header with the columns path,score and at least one row")
    ratings = []
    for line, row in enumerate(rows, start=2):
        image = (path.parent / row["path"]).resolve()
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: score {row['score']!r} is not a number") from None
        if not 0.0 <= score <= 4.0:
            raise InputError(f"{path}:{line}: score {score:g} is outside 0-4")
        if not image.exists():
            raise InputError(f"{path}:{line}: {row['path']} not found")
        ratings.append((image, score))
    return ratings


def calibrate_score(
    model_path: str | Path, ratings_csv: str | Path, out: str | Path, scaling: str | None = None
) -> dict:
    """Fit a monotone (isotonic, non-decreasing) map from the model's raw scores to a user's radiologist scores and
    save the model with it as a new checkpoint out; returns the calibration record.

    Each rated image (any file or folder ctqa reads; a volume scores as the mean of its slices) is scored by the
    uncalibrated model; scipy.optimize.isotonic_regression fits the ratings on the raw scores. Needs at least 5
    ratings. The card's "calibration" holds the knots and the agreement before and after (in-sample).
    """
    from scipy.optimize import isotonic_regression

    check_output_file(f"{out}.json")
    ratings = read_ratings(ratings_csv)
    if len(ratings) < 5:
        raise InputError(f"{ratings_csv}: {len(ratings)} ratings; a calibration needs at least 5")
    device, _ = resolve_device("auto")
    model, card = load_score_model(model_path, device)
    raw_card = {key: value for key, value in card.items() if key != "calibration"}
    raw = []
    for path, _ in ratings:
        volume = read_volume(path, scaling=scaling)
        pixel_yx = (volume.spacing[1], volume.spacing[0])
        raw.append(predict_scores(model, raw_card, volume.hu, device, pixel_yx_mm=pixel_yx)[0].mean())
    raw = np.array(raw)
    rated = np.array([score for _, score in ratings])
    order = np.argsort(raw, kind="stable")
    fitted = isotonic_regression(rated[order], increasing=True).x
    knots_raw = np.unique(raw[order])
    if len(knots_raw) < 2:
        raise InputError(f"{model_path}: gives every rated image the same score {raw[0]:.3f}; nothing to calibrate")
    knots_calibrated = np.array([fitted[raw[order] == value].mean() for value in knots_raw])
    calibrated = np.interp(raw, knots_raw, knots_calibrated)
    record = {
        "raw": knots_raw.round(6).tolist(),
        "calibrated": knots_calibrated.round(6).tolist(),
        "ratings": len(ratings),
        "fitted_on": Path(ratings_csv).name,
        "rmse_before": float(np.sqrt(np.mean((raw - rated) ** 2))),
        "rmse_after": float(np.sqrt(np.mean((calibrated - rated) ** 2))),
        "method": "isotonic regression of the ratings on the raw scores (scipy.optimize.isotonic_regression); "
        "figures in-sample",
    }
    new_card = {key: value for key, value in raw_card.items() if key in ("training", "metrics", "description")}
    new_card.update(name=Path(out).name, calibration=record)
    config = ScoreNetConfig.from_dict(card["architecture"])
    save_score_model(model, config, new_card, out)
    return record


#: The ablation: (run name, backbone, head, semi-supervised). The semi-supervised run's teachers are the supervised
#: runs before it.
ABLATION = (
    ("cnn-regression", "cnn", "regression", False),
    ("cnn-distribution", "cnn", "distribution", False),
    ("tfkt-distribution", "tfkt", "distribution", False),
    ("mdiqa-regression", "mdiqa", "regression", False),
    ("mdiqa-distribution", "mdiqa", "distribution", False),
    ("mdiqa-distribution-semi", "mdiqa", "distribution", True),
)


def ablation(
    data: str | Path, runs_dir: str | Path, steps: int, device: str = "auto", split: str = "test"
) -> list[dict]:
    """Train (or reuse finished) runs of ABLATION in runs_dir and evaluate each on split; returns one row each."""
    runs_dir = check_output_folder(runs_dir)
    test = load_score_split(data, split, labelled=True)
    rows, supervised = [], []
    for name, backbone, head, semi in ABLATION:
        settings = ScoreTrainSettings(
            str(data), backbone, head, steps=steps, teachers=tuple(supervised) if semi else ()
        )
        card_path = runs_dir / name / f"{MODEL}.json"
        finished = card_path.is_file() and json.loads(card_path.read_text())["training"].get("step") == steps
        if not finished:
            trainer = ScoreTrainer(settings, runs_dir / name, device)
            if (runs_dir / name / f"{STATE}.json").is_file():
                trainer.resume()
            trainer.run()
        torch_device = resolve_device(device)[0]
        model, card = load_score_model(runs_dir / name / MODEL, torch_device)
        metrics = evaluate(model, card, test, torch_device)
        training = card["training"]
        rows.append(
            {
                "run": name,
                "backbone": backbone,
                "head": head,
                "semi": semi,
                **metrics,
                "wall_time_min": training["wall_time_s"] / 60,
                "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            }
        )
        if not semi:
            supervised.append(str(runs_dir / name / MODEL))
    return rows


def ablation_markdown(rows: list[dict], command: str, split: str = "test") -> str:
    """The ablation table in Markdown."""
    lines = [
        "# Global score ablation",
        "",
        f"Made by: `{command}`",
        "",
        f"Agreement with the surrogate score on the held-out {split} split (patients never seen in training): "
        "|PLCC|, |SROCC|, |KROCC| and their sum (overall, the LDCTIQAC2023 ranking figure; 3 is perfect), RMSE on "
        "0-4. One run (seed 0) per row, the same steps and batch for all; the semi-supervised run's teachers are the "
        "five supervised runs above it. The surrogate is not a radiologist's score (CTQualityTraining/score_data.py).",
        "",
        "| run | backbone | head | semi-supervised | overall | PLCC | SROCC | KROCC | RMSE | params (M) | time (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['backbone']} | {r['head']} | {'yes' if r['semi'] else 'no'} | {r['overall']:.3f} | "
            f"{r['plcc']:.3f} | {r['srocc']:.3f} | {r['krocc']:.3f} | {r['rmse']:.3f} | {r['parameters_m']:.2f} | "
            f"{r['wall_time_min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _surrogate_text(surrogate: dict | None) -> str:
    """What the surrogate score is, from a score dataset's manifest (CTQualityTraining/score_data.py says why)."""
    if not surrogate:
        return "The training scores came from the dataset given (see its manifest)."
    return (
        f"Surrogate score of simulated slices: {surrogate['score']} (SSIM floor {surrogate['ssim_floor']}, ceiling "
        f"{surrogate['ssim_ceiling']}), where ssim is the {surrogate['measure']}, against the {surrogate['reference']}"
        " image of the same slice. The justification and its limits are in CTQualityTraining/score_data.py."
    )


def _grid_lines(card_input: dict) -> list[str]:
    """The model card's grid lines: pixel size and field of view of a grid model (score_network.score_canvas)."""
    if card_input.get("pixel_mm") is None:
        return ["- Grid: none (the old convention: the whole slice padded to a square and resized to 512 x 512)"]
    return [
        f"- Physical grid: slices resampled (anti-aliased) to **{card_input['pixel_mm']} mm** pixels; field of view: "
        f"{card_input['field_of_view']}; trained with the field of view narrowed at random (air outside)"
    ]


def _markdown(name: str, card: dict, size_bytes: int) -> str:
    """A human-readable model card for a bundled score model."""
    training, metrics = card["training"], card.get("metrics", {})
    parameters = training.get("dataset_parameters", {})
    sources = "\n".join(
        f"  - `{s['id']}` ({s['kind']}, group `{s['group']}`): {s['split']}"
        for s in training.get("dataset_sources", [])
    )
    semi = (
        f"semi-supervised (MD-IQA): pseudo-labels from the ensemble of {len(training['teachers'])} supervised models "
        f"on the unlabelled slices, EMA teacher alpha {training['ema']} (exported)"
        if training.get("teachers")
        else "supervised only"
    )
    lines = [
        f"# Model card: {name}",
        "",
        f"Global quality score on the LDCTIQAC2023 scale (0 bad ... 4 excellent) of one CT slice shown in the "
        f"abdominal window W350/L40; backbone **{card['architecture']['backbone']}**, head "
        f"**{card['architecture']['head']}**. A volume's score is the mean of its body slices' scores.",
        "",
        f"- Architecture: `{json.dumps(card['architecture'])}`",
        *_grid_lines(card["input"]),
        f"- Input: {card['input']['normalisation']}",
        f"- Weights: `{name}.safetensors`, {size_bytes / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
        "",
        "## What the score is trained to (no radiologist scores were available)",
        "",
        _surrogate_text(training.get("dataset_surrogate")),
        "",
        "Read it as a learned, no-reference estimate of that surrogate, not as a radiologist's rating; "
        "`ctqa-train calibrate-score --ratings CSV` fits it to your radiologists' scale.",
        "",
        "## Training",
        "",
        f"- Data: dataset manifest sha256 `{training.get('dataset_manifest_sha256')}`; degradations "
        f"doses {parameters.get('doses')} x views {parameters.get('views')} on real slices. Sources and splits:",
        sources,
        f"- {training.get('step')} steps of {training.get('batch')} slices (rotations, flips), "
        f"{training.get('optimizer')}, peak lr {training.get('lr')}, loss L2 + {training.get('beta')} KL, {semi}; "
        f"seed {training.get('seed')}.",
        f"- Hardware: {training.get('hardware')}, torch {training.get('torch_version')}; "
        f"{training.get('wall_time_s', 0) / 60:.1f} min.",
        "",
        "## Validation (val split, against the surrogate)",
        "",
        "".join(f"- {key}: {value:.4f}\n" for key, value in metrics.items()) or "- none\n",
    ]
    if card.get("reproduce"):
        lines += [
            "## Reproduce",
            "",
            "From the repository root, with the project's venv active:",
            "",
            f"    {card['reproduce']}",
        ]
    return "\n".join(lines) + "\n"


def export(
    checkpoint: str | Path, name: str, models_dir: Path, default: bool = False, reproduce: str | None = None
) -> Path:
    """Bundle a score checkpoint as model name in models_dir (weights, JSON and Markdown cards, manifest entry)."""
    from .export import bundle

    model, card = load_score_model(checkpoint)

    def save(kept: dict, path: Path) -> Path:
        return save_score_model(model, ScoreNetConfig.from_dict(card["architecture"]), kept, path)

    keep = ("training", "metrics", "description", "calibration")
    return bundle(name, card, save, _markdown, models_dir, default, reproduce, keep)
