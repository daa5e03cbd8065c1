"""Export of a trained run as a bundled model (``ctqa-train export``): weights, card, manifest entry, Markdown card.

Writes into the models folder (default ``registry.MODELS_DIR``): ``NAME.safetensors`` + ``NAME.json`` (via
``checkpoints.save``, so the card's sha256 is recomputed), ``NAME.md`` (a readable model card made from the JSON
card) and the entry {"task", "weights", "card", "sha256"} in ``manifest.json`` (other entries kept; the task's default
set on request).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ctqa.errors import InputError
from ctqa.models import checkpoints, registry
from ctqa.outputs import check_output_folder

from .trainer import MODEL


def _markdown(name: str, card: dict, size_bytes: int) -> str:
    """A human-readable model card from the JSON card."""
    t, metrics = card["training"], card.get("metrics", {})
    parameters = t.get("dataset_parameters", {})
    sources = "\n".join(
        f"  - `{s['id']}` ({s['kind']}, group `{s['group']}`): {s['split']}" for s in t.get("dataset_sources", [])
    )
    reproduce = card.get("reproduce")
    windows = ", ".join(f"{w} {card['input']['windows_hu'][w]} HU" for w in card["architecture"]["windows"])
    lines = [
        f"# Model card: {name}",
        "",
        f"Noise2Quality-style quality network, variant **{t.get('variant')}**: from one CT slice it predicts the "
        "per-pixel SSIM against the unseen full-dose image (N2Q SSIM settings), one map per HU window "
        f"({windows}), and, with a dose head, the dose fraction (classes {card['dose_levels']}). `ctqa` shows the "
        "lung-window map inside the lung mask and the soft-tissue map elsewhere.",
        "",
        f"- Architecture: `{json.dumps(card['architecture'])}`",
        f"- Input: {card['input']['normalisation']}",
        f"- Weights: `{name}.safetensors`, {size_bytes / 1e6:.2f} MB, sha256 `{card['weights_sha256']}`",
        "",
        "## Training",
        "",
        "- Data: real anatomy only, low dose and kernels simulated in the projection domain "
        "(`ctqa-train simulate`); dataset manifest sha256 "
        f"`{t.get('dataset_manifest_sha256')}`. Sources and their splits:",
        sources,
        f"- Simulation: doses {parameters.get('doses')}, kernels {parameters.get('kernels')}, "
        f"{parameters.get('views')} views, {parameters.get('slices_per_volume')} slices per volume, electronic "
        f"noise {parameters.get('electronic_noise')}, seed {parameters.get('seed')}.",
        f"- Optimisation: {t.get('step')} steps of {t.get('batch')} random {t.get('patch')}² patches (flips, "
        f"90° rotations), noise-gain augmentation {t.get('noise_gain')} ([1, 1] = off), {t.get('optimizer')}, "
        f"peak lr {t.get('lr')}, loss MSE(maps of all windows) + {t.get('alpha')} · (CE(dose class) + "
        "MSE(ln dose)), "
        f"seed {t.get('seed')}.",
        f"- Hardware: {t.get('hardware')}, {t.get('precision')}, torch {t.get('torch_version')}; "
        f"training time {t.get('wall_time_s', 0) / 60:.1f} min.",
        "",
        "## Validation (val split; metrics per window, `CTQualityTraining/evaluate.py`)",
        "",
        "".join(f"- {key}: {value:.4f}\n" for key, value in metrics.items()) or "- none (no val split)\n",
        "## Limits",
        "",
        "Trained on a handful of patients (the sources above) with simulated noise; the evaluation against held-out "
        "patients and real Mayo quarter-dose pairs is in `docs/n2q_evaluation.md`. A quality map, not a diagnosis.",
    ]
    if card.get("real_data"):  # figures from docs/real_validation.md, added to the card when that table is rerun
        lines += ["", "## Real-data validation (`docs/real_validation.md`)", "", *card["real_data"]]
    if reproduce:
        lines += [
            "",
            "## Reproduce",
            "",
            "From the repository root, with the project's venv active:",
            "",
            f"    {reproduce}",
        ]
    return "\n".join(lines) + "\n"


def bundle(
    name: str,
    card: dict,
    save: Callable[[dict, Path], Path],
    markdown: Callable[[str, dict, int], str],
    models_dir: str | Path = registry.MODELS_DIR,
    default: bool = False,
    reproduce: str | None = None,
    keep: tuple[str, ...] = ("training", "metrics", "description"),
) -> Path:
    """Bundle a loaded checkpoint as model name in models_dir; returns the JSON card's path.

    card: the checkpoint's card, of which the keep keys are carried over; save(free-form card, path without
    extension) writes weights and card with the task's own writer; markdown(name, full card, weights bytes) is the
    readable card NAME.md. reproduce: the command that rebuilds this model, recorded in both cards.
    """
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"model name must be a plain file name, got {name!r}")
    models_dir = check_output_folder(models_dir)
    kept = {key: value for key, value in card.items() if key in keep}
    kept["name"] = name
    if reproduce:
        kept["reproduce"] = reproduce
    card_path = save(kept, models_dir / name)
    full_card = json.loads(card_path.read_text(encoding="utf-8"))
    weights = models_dir / f"{name}.safetensors"
    (models_dir / f"{name}.md").write_text(markdown(name, full_card, weights.stat().st_size), encoding="utf-8")
    register(models_dir, name, full_card, default)
    return card_path


def export_run(
    run_dir: str | Path,
    name: str,
    models_dir: str | Path = registry.MODELS_DIR,
    default: bool = False,
    reproduce: str | None = None,
) -> Path:
    """Export RUN_DIR's final quality-map checkpoint as bundled model name into models_dir; returns the card's path."""
    model, card = checkpoints.load(Path(run_dir) / MODEL)

    def save(kept: dict, path: Path) -> Path:
        return checkpoints.save(model, model.config, kept, path)

    return bundle(name, card, save, _markdown, models_dir, default, reproduce)


def register(models_dir: Path, name: str, card: dict, default: bool) -> None:
    """Add (or replace) the manifest entry {task, weights, card, sha256} of bundled model name; other entries are
    kept, and the task's default is set when default is true."""
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest.setdefault("defaults", {})
    manifest.setdefault("models", {})[name] = {
        "task": card["task"],
        "weights": f"{name}.safetensors",
        "card": f"{name}.json",
        "sha256": card["weights_sha256"],
    }
    if default:
        manifest["defaults"][card["task"]] = name
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
