"""Import timm where torchvision is a CUDA build beside a CPU-only torch (this project's development and CI machines).

timm imports torchvision, and torchvision's Python side registers fake (meta) kernels for its compiled operators at
import. When its compiled library does not match the installed torch (the PyPI torchvision is a CUDA build; the CPU
torch comes from another index), the operators were never defined and the import fails with ``RuntimeError:
operator torchvision::nms does not exist``. ``import_timm`` then defines the two operator schemas that the
registration needs (``torchvision::nms`` and ``torchvision::qnms``, schemas only, no kernels: nothing here calls
them) and imports again. The networks built from timm use no torchvision operator.

The shim runs only after a plain ``import timm`` has failed with that error: where torch and torchvision match (a
user's machine, Slicer's PyTorch extension) the first import succeeds and nothing else happens.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

#: The text of the import failure that the shim repairs.
MISSING_OPERATOR = "torchvision::nms does not exist"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# The library object must live as long as the process: its definitions are removed when it is garbage collected.
_torchvision_schemas: torch.library.Library | None = None


def _forget(package: str) -> None:
    """Drop a package and its submodules from sys.modules (after a failed, partial import)."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        del sys.modules[name]


def import_timm() -> ModuleType:
    """The timm module; defines torchvision's operator schemas first only if a plain import fails for want of them
    (see the module docstring). Any other import error propagates unchanged."""
    global _torchvision_schemas
    try:
        return importlib.import_module("timm")
    except RuntimeError as error:
        if MISSING_OPERATOR not in str(error) or _torchvision_schemas is not None:
            raise
    _forget("timm")
    _forget("torchvision")
    _torchvision_schemas = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _torchvision_schemas.define(schema)
    return importlib.import_module("timm")
