"""The Slicer module's source read without Slicer: its constants and parts of its classes, compiled from the AST
(the Slicer base classes and qt/ctk imports exist only in Slicer)."""

from __future__ import annotations

import ast
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "CTQualityAssessment"
MODULE_FILE = MODULE_DIR / "CTQualityAssessment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CTQualityAssessment.ui"


def module_constants(*names: str) -> dict:
    """{name: value} of the module-level constants assigned to names (literals only)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    return {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in names
    }


def class_with(class_name: str, method_names: set[str], namespace: dict) -> type:
    """The module's class compiled with only the named methods (no bases: the Slicer base classes need Slicer)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    cls.body = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name in method_names]
    assert {node.name for node in cls.body} == method_names
    cls.bases, cls.keywords, cls.decorator_list = [], [], []
    exec(compile(ast.Module(body=[cls], type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    return namespace[class_name]
