"""The model registry, keyed by task, without importing torch: which models exist and what their outputs mean.

Bundled models live in ``CTQualityAssessment/Resources/Models/`` with ``manifest.json``::

    {"defaults": {TASK: NAME, ...},
     "models": {NAME: {"task": TASK, "weights": FILE, "card": FILE, "sha256": HEX}}}

A checkpoint is a pair ``X.json`` (model card, see checkpoints.py) + ``X.safetensors`` (weights). Built-in models
that need no weights (the physics quality map) are registered here too. A user's choice ("default", a name or a
checkpoint path) is resolved once per run into a ``ModelSpec``; everything downstream reads the spec.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ctqa.errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
MANIFEST_NAME = "manifest.json"
#: Name that resolves to the manifest's default for the task (the built-in model when none is bundled).
DEFAULT_MODEL = "default"
#: The physics (no training) quality map of physics/noise.py.
PHYSICS_MODEL = "physics"
#: The quality map made with the default denoiser: the SSIM of the input against the denoiser's estimate of its
#: noise-free self, plus a routine-dose reference noise (tasks/quality_map.py). Its weights are the denoiser's.
DENOISED_SSIM_MODEL = "denoised_ssim"
#: The quality map of the SSIM against the input's own median filter, calibrated on real pairs (tasks/quality_map.py),
#: its bundled calibration card (weights beside it, sha256 in the manifest) and the "kind" such cards carry: a card of
#: that kind given as a path resolves to the built-in map with that calibration.
MEDIAN_SSIM_MODEL = "median_ssim"
MEDIAN_SSIM_CARD = MODELS_DIR / "median_ssim.json"
MEDIAN_CALIBRATION_KIND = "median_ssim calibration"


@dataclass(frozen=True)
class Task:
    """What a task's models output: the score scale and its direction (pyiqa's score_range / lower_better)."""

    name: str
    output: str
    score_range: tuple[float, float] | None
    higher_is_better: bool | None


TASKS = {
    task.name: task
    for task in (
        Task("quality_map", "per-voxel predicted SSIM against full dose", (0.0, 1.0), True),
        Task("global_score", "0-4 quality score (LDCTIQAC2023 convention)", (0.0, 4.0), True),
        Task("series_class", "window and dose class probabilities of a series", (0.0, 1.0), None),
        Task("denoise", "denoised CT in HU", None, None),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """One resolved model: its task, where its card is (None for built-ins) and the card itself.

    kind: "builtin" (no weights), "learned" (safetensors + JSON card) or "composite" (a built-in method around
    another task's learned model, whose card card_path is); bundled: shipped in MODELS_DIR.
    """

    name: str
    task: Task
    kind: str
    card_path: Path | None = None
    card: dict = field(default_factory=dict)
    bundled: bool = False

    @property
    def is_learned(self) -> bool:
        """Whether running it needs the learned stack (torch)."""
        return self.kind in ("learned", "composite")


#: The physics (no training) quality map of physics/noise.py, the physics series classifier of physics/series.py
#: (whose coefficients come from the default series model's card), and the median-SSIM quality map (with its bundled
#: calibration card: batch fingerprints and summaries name it; needs numpy only).
BUILTIN_MODELS = {  # the first of a task is its default when the manifest names none
    (MEDIAN_SSIM_MODEL, "quality_map"): ModelSpec(
        MEDIAN_SSIM_MODEL, TASKS["quality_map"], "builtin", MEDIAN_SSIM_CARD, bundled=True
    ),
    **{
        (PHYSICS_MODEL, task): ModelSpec(PHYSICS_MODEL, TASKS[task], "builtin")
        for task in ("quality_map", "series_class")
    },
}


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The packages of names that cannot be imported here (found without importing them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-imported package
            found = False
        if not found:
            missing.append(name)
    return missing


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(card, weights) for X, X.json or X.safetensors."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from path; InputError naming the file (and `what` it should be) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read {what}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} is not a JSON object")
    return data


def manifest_path() -> Path:
    return MODELS_DIR / MANIFEST_NAME


def read_manifest() -> dict:
    """The bundled models' manifest ({"defaults": {}, "models": {}} when there is none); InputError if malformed."""
    path = manifest_path()
    if not path.is_file():
        return {"defaults": {}, "models": {}}
    manifest = read_json(path, "model manifest")
    entries, defaults = manifest.get("models"), manifest.get("defaults", {})
    needed = {"task", "weights", "card", "sha256"}
    if not isinstance(entries, dict) or not all(isinstance(e, dict) and needed <= set(e) for e in entries.values()):
        raise InputError(f'{path}: model manifest needs "models": {{name: {{task, weights, card, sha256}}}}')
    if not isinstance(defaults, dict) or any(
        name not in entries and (name, task) not in BUILTIN_MODELS for task, name in defaults.items()
    ):
        raise InputError(f'{path}: "defaults" must map tasks to names listed in "models" or built in')
    return {"defaults": defaults, "models": entries}


def bundled_models(task: str) -> dict[str, Path]:
    """Bundled models of a task: {name: path of its model card}."""
    manifest = read_manifest()
    return {name: MODELS_DIR / e["card"] for name, e in manifest["models"].items() if e["task"] == task}


def bundled_sha256(weights_path: Path) -> str | None:
    """The manifest's sha256 for weights_path when it is a bundled model's weights file."""
    for entry in read_manifest()["models"].values():
        if (MODELS_DIR / entry["weights"]).resolve() == Path(weights_path).resolve():
            return str(entry["sha256"]).lower()
    return None


def default_model(task: str) -> str | None:
    """Name of the task's default model: the manifest's, else a built-in one, else None."""
    name = read_manifest()["defaults"].get(task)
    if name is not None:
        return name
    builtin = [name for name, builtin_task in BUILTIN_MODELS if builtin_task == task]
    return builtin[0] if builtin else None


def available_models(task: str) -> tuple[str, ...]:
    """Names a user can choose for a task: "default", the built-in models, the composite ones whose base model is
    installed, and the bundled ones (a built-in model's bundled calibration is listed once)."""
    builtin = [name for name, builtin_task in BUILTIN_MODELS if builtin_task == task]
    composite = [DENOISED_SSIM_MODEL] if task == "quality_map" and default_model("denoise") else []
    return tuple(dict.fromkeys((DEFAULT_MODEL, *builtin, *composite, *sorted(bundled_models(task)))))


def _learned_spec(name: str, card_path: Path, task: str, bundled: bool) -> ModelSpec:
    card = read_json(card_path, "model card")
    card_task = card.get("task", "quality_map")  # format 1 cards predate tasks: all were quality maps
    if card_task != task:
        raise InputError(f"{card_path}: a {card_task} model, not a {task} model")
    if card.get("kind") == MEDIAN_CALIBRATION_KIND:  # the built-in median-SSIM map with another calibration
        return ModelSpec(MEDIAN_SSIM_MODEL, TASKS[task], "builtin", card_path, card, bundled)
    return ModelSpec(card.get("name", name), TASKS[task], "learned", card_path, card, bundled)


def resolve(task: str, choice: str | os.PathLike | None = DEFAULT_MODEL) -> ModelSpec:
    """The model a user's choice names for a task: "default"/None, a built-in or bundled name, or a checkpoint path.

    A path may be X, X.json or X.safetensors. InputError (one line) for anything else.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    name = DEFAULT_MODEL if choice in (None, "") else str(choice)
    if name == DEFAULT_MODEL:
        name = default_model(task)
        if name is None:
            raise InputError(f"no {task} model is installed; train one with ctqa-train or pass a checkpoint")
    if (name, task) in BUILTIN_MODELS:
        return BUILTIN_MODELS[(name, task)]
    if (name, task) == (DENOISED_SSIM_MODEL, "quality_map"):
        denoiser = resolve("denoise")
        return ModelSpec(name, TASKS[task], "composite", denoiser.card_path, denoiser.card, denoiser.bundled)
    bundled = bundled_models(task)
    if name in bundled:
        return _learned_spec(name, bundled[name], task, bundled=True)
    if not Path(name).name:  # ".", "/", a folder path ending in a separator: no checkpoint named
        raise InputError(f"--model {name}: not a checkpoint file (X.json or X.safetensors)")
    card_path, _ = checkpoint_files(name)
    looks_like_path = os.sep in name or Path(name).suffix in (".json", ".safetensors")
    if card_path.is_file():
        return _learned_spec(card_path.stem, card_path, task, bundled=False)
    if looks_like_path:
        raise InputError(f"{name}: no such model card ({card_path})")
    raise InputError(f"{name}: unknown model; available: {', '.join(available_models(task))} or a checkpoint file")
