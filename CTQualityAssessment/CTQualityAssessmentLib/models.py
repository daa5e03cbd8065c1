"""Which quality models exist, without importing torch: the bundled models' manifest and checkpoint paths.

Bundled models live in ``CTQualityAssessment/Resources/Models/`` with ``manifest.json``:
``{"default": NAME (optional), "models": {NAME: {"weights": FILE, "card": FILE, "sha256": HEX}}}``.
A checkpoint is a pair ``X.json`` (model card) + ``X.safetensors`` (weights); see checkpoints.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
MANIFEST = MODELS_DIR / "manifest.json"
#: The physics (no training) quality map of noise.py.
PHYSICS_MODEL = "physics"
#: Name that resolves to the manifest's "default" entry (the physics model when no learned model is bundled).
DEFAULT_MODEL = "default"


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


def read_manifest() -> dict | None:
    """The bundled models' manifest, None when there is none; InputError when it is malformed."""
    if not MANIFEST.is_file():
        return None
    manifest = read_json(MANIFEST, "model manifest")
    models = manifest.get("models")
    if not isinstance(models, dict) or not all(
        isinstance(entry, dict) and {"weights", "card", "sha256"} <= set(entry) for entry in models.values()
    ):
        raise InputError(f'{MANIFEST}: model manifest needs "models": {{name: {{weights, card, sha256}}}}')
    return manifest


def default_learned_model() -> str | None:
    """Name of the bundled default learned model, or None when none is bundled."""
    manifest = read_manifest()
    if manifest is None or manifest.get("default") not in manifest["models"]:
        return None
    return manifest["default"]


def available_models() -> tuple[str, ...]:
    """Model names a user can choose: "default", "physics" and the bundled learned models."""
    return (DEFAULT_MODEL, PHYSICS_MODEL, *sorted(bundled_models()))


def bundled_models() -> dict[str, Path]:
    """Bundled models from the manifest: {name: path of its model card}; empty when there is no manifest."""
    manifest = read_manifest()
    if manifest is None:
        return {}
    return {name: MODELS_DIR / entry["card"] for name, entry in manifest["models"].items()}


def resolve(model_name_or_path: str | Path) -> Path:
    """Model card path of a bundled model's name ("default" = the manifest's default) or of a checkpoint path.

    A path may be X, X.json or X.safetensors. InputError when it is neither a bundled model nor an existing card.
    """
    name = str(model_name_or_path)
    models = bundled_models()
    if name == DEFAULT_MODEL and default_learned_model() is not None:
        return models[default_learned_model()]
    if name in models:
        return models[name]
    card_path, _ = checkpoint_files(model_name_or_path)
    if card_path.is_file():
        return card_path
    available = ", ".join(sorted(models)) or "none installed"
    raise InputError(f"{name}: no such model card ({card_path}) and no such bundled model (bundled: {available})")
