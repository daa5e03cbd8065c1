"""Import rules of the layout (DESIGN.md): the core `ctqa` never imports Slicer, Qt, VTK, the Slicer glue or the
training package, and only ctqa.models' networks, checkpoints and inference import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "CTQualityAssessment" / "ctqa"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "CTQualityAssessmentLib", "CTQualityTraining"}
TORCH_MODULES = {"torch", "monai", "safetensors", "timm"}
ALLOWED_TORCH = {
    "models/networks.py",
    "models/checkpoints.py",
    "models/inference.py",
    "models/series_network.py",
    "models/score_network.py",
    "models/timm_import.py",
    "models/denoise_network.py",
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_nothing_from_slicer_qt_vtk_or_training():
    offenders = {str(path.relative_to(CORE)): sorted(_imported_roots(path) & FORBIDDEN) for path in CORE.rglob("*.py")}
    assert not {name: found for name, found in offenders.items() if found}


def test_only_the_learned_model_code_imports_torch():
    importers = {str(p.relative_to(CORE)) for p in CORE.rglob("*.py") if _imported_roots(p) & TORCH_MODULES}
    assert importers == ALLOWED_TORCH


def test_physics_path_runs_without_torch(tmp_path):
    """Every core module but the learned ones imports, and a physics assessment runs, without torch (the 0-4 score,
    whose model needs torch, is then left out with a note)."""
    code = f"""
import importlib, pkgutil, sys
sys.modules["torch"] = None  # any import of torch now fails
import ctqa
learned = {{"ctqa.models." + name for name in ("networks", "checkpoints", "inference", "series_network",
                                               "score_network", "timm_import", "denoise_network")}}
for info in pkgutil.walk_packages(ctqa.__path__, "ctqa."):
    if info.name not in learned:
        importlib.import_module(info.name)
from ctqa.cli import main
from ctqa.sample import write_sample
paths = write_sample({str(tmp_path / "sample")!r})
assert main(["assess", str(paths["ct"]), "--model", "physics", "--quiet", "--out", {str(tmp_path / "out")!r}]) == 0
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
