"""Quality-network checkpoints: weights in ``X.safetensors`` and a JSON model card ``X.json``; never pickle.

Model card (JSON object)::

    {"format_version": 2,
     "architecture": QualityNetConfig.to_dict(),   # "windows": ["soft_tissue", "lung"]: one map channel each
     "input": {"windows_hu": {"soft_tissue": [-160, 240], "lung": [-1350, 150]}, "hpf_sigma_px": 1.0,
               "hpf_scale": {"soft_tissue": 10.0, "lung": 37.5}, "normalisation": "..."},
     "dose_levels": [0.05, 0.1, 0.25, 0.5, 0.75, 1.0],
     "training": {...}, "metrics": {...},          # free-form, from the trainer
     "weights_sha256": "<hex digest of X.safetensors>"}

Format 1 cards (before the lung window) have no "windows" and one "window_hu": they load as single-window
(soft-tissue) models, whose quality maps have no lung-window channel.

Bundled models and their manifest: registry.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from ctqa.errors import InputError
from ctqa.models.networks import DOSE_LEVELS, HPF_SIGMA_PX, QualityNet, QualityNetConfig, build_network, hpf_gain
from ctqa.models.registry import bundled_sha256, checkpoint_files, manifest_path, read_json
from ctqa.physics.lung import QUALITY_WINDOWS_HU

FORMAT_VERSION = 1
#: format_version of quality-map cards: 2 since the lung window; 1 = single-window (soft-tissue) cards, still loaded.
QUALITY_MAP_FORMAT = 2
SINGLE_WINDOW_FORMAT = 1

NORMALISATION = (
    "per window of windows_hu, in the order of architecture.windows: CT channel: HU clipped to the window and "
    "scaled to [0, 1]; HPF channel: CT channel minus its Gaussian blur (sigma hpf_sigma_px, reflected borders), "
    "times the window's hpf_scale"
)


def input_spec(windows: tuple[str, ...]) -> dict:
    """The "input" section of a model card for this version's preprocessing (``networks.network_input``)."""
    return {
        "windows_hu": {name: list(QUALITY_WINDOWS_HU[name]) for name in windows},
        "hpf_sigma_px": HPF_SIGMA_PX,
        "hpf_scale": {name: hpf_gain(name) for name in windows},
        "normalisation": NORMALISATION,
    }


def _single_window_input(card_input: dict) -> dict:
    """A format-1 card's "input" in the form of input_spec(("soft_tissue",))."""
    return {
        "windows_hu": {"soft_tissue": card_input.get("window_hu")},
        "hpf_sigma_px": card_input.get("hpf_sigma_px"),
        "hpf_scale": {"soft_tissue": card_input.get("hpf_scale")},
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(model: torch.nn.Module, card: dict, path_without_extension: str | Path, **fixed) -> Path:
    """Write ``X.safetensors`` (model's state dict, on the CPU) and the model card ``X.json``: card's free-form parts
    ("training", "metrics", "name", ...; empty "training" and "metrics" when absent), then the fixed fields of the
    caller's task (format version, task, architecture, input, ...) and the weights' sha256. Returns the card's path.
    """
    card_path, weights_path = checkpoint_files(path_without_extension)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})
    full_card = {"training": {}, "metrics": {}, **card, **fixed}
    full_card["weights_sha256"] = _sha256(weights_path.read_bytes())
    card_path.write_text(json.dumps(full_card, indent=2) + "\n", encoding="utf-8")
    return card_path


def save(model: QualityNet, config: QualityNetConfig, card: dict, path_without_extension: str | Path) -> Path:
    """Write ``X.safetensors`` (the state dict) and the model card ``X.json``; returns the card's path.

    card supplies the free-form parts ("training", "metrics", and any other keys such as "name" or
    "description"); architecture, input, dose levels, format version and the weights' sha256 are filled in here.
    """
    return write_checkpoint(
        model,
        card,
        path_without_extension,
        format_version=QUALITY_MAP_FORMAT,
        task="quality_map",
        architecture=config.to_dict(),
        input=input_spec(config.windows),
        dose_levels=list(DOSE_LEVELS),
    )


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[QualityNet, dict]:
    """(model in eval mode on device, model card) from a checkpoint X, X.json or X.safetensors.

    Checks the weights' sha256 against the card and, for bundled models, against the manifest; reads weights with
    safetensors only. InputError (one line naming the file) for a missing file, a bad card, a sha256 mismatch or
    weights that do not fit the card's architecture.
    """
    card_path, weights_path = checkpoint_files(path)
    card = read_json(card_path, "model card")
    version = card.get("format_version")
    if version not in (SINGLE_WINDOW_FORMAT, QUALITY_MAP_FORMAT):
        raise InputError(f"{card_path}: unsupported model card format_version {version!r}")
    card_input = card.get("input", {})
    try:
        architecture = dict(card["architecture"])
        if version == SINGLE_WINDOW_FORMAT:
            architecture.setdefault("windows", ["soft_tissue"])
            card_input = _single_window_input(card_input)
        config = QualityNetConfig.from_dict(architecture)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f'{card_path}: bad "architecture" in model card: {error}') from None
    expected_input = input_spec(config.windows)
    for key in ("windows_hu", "hpf_sigma_px", "hpf_scale"):
        if card_input.get(key) != expected_input[key]:
            raise InputError(
                f"{card_path}: model expects input {key} = {card_input.get(key)!r}, this version computes "
                f"{expected_input[key]!r}"
            )
    if [float(level) for level in card.get("dose_levels", [])] != list(DOSE_LEVELS):
        raise InputError(f"{card_path}: dose_levels {card.get('dose_levels')!r} differ from {list(DOSE_LEVELS)}")
    model = build_network(config)
    load_verified_weights(model, card, card_path, weights_path)
    return model.to(device).eval(), card


def read_task_card(path: str | Path, task: str, format_version: int, config_from: Callable[[dict], object]):
    """(card path, weights path, card, architecture config) of a checkpoint X, X.json or X.safetensors of task.

    config_from builds the task's architecture dataclass from the card's dict. InputError (one line naming the card)
    for a missing or unreadable card, a card of another task or format, or a bad architecture.
    """
    card_path, weights_path = checkpoint_files(path)
    card = read_json(card_path, "model card")
    if card.get("task") != task or card.get("format_version") != format_version:
        raise InputError(f"{card_path}: not a {task} model card (format {format_version})")
    try:
        config = config_from(card["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f'{card_path}: bad "architecture" in model card: {error}') from None
    return card_path, weights_path, card, config


def load_verified_weights(model: torch.nn.Module, card: dict, card_path: Path, weights_path: Path) -> None:
    """Load weights_path into model after checking their sha256 against the card and, for bundled models, the
    manifest; safetensors only. InputError (one line naming the file) for a missing or unreadable file, a sha256
    mismatch or weights that do not fit the model."""
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{weights_path}: weights file not found") from None
    except OSError as error:
        raise InputError(f"{weights_path}: cannot read weights file: {error.strerror}") from None
    if not isinstance(card.get("weights_sha256"), str):
        raise InputError(f"{card_path}: model card has no weights_sha256")
    digest = _sha256(data)
    for source, expected in ((card_path, card["weights_sha256"]), (manifest_path(), bundled_sha256(weights_path))):
        if expected is not None and digest != expected.lower():
            raise InputError(
                f"{weights_path}: sha256 {digest[:12]}... does not match {source.name} ({str(expected)[:12]}...): "
                "the weights file is corrupted or was replaced"
            )
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as error:
        raise InputError(f"{weights_path}: not a valid safetensors file: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise InputError(f"{weights_path}: weights do not fit the card's architecture: {reason}") from None
