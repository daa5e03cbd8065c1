"""Assess every CT series under a folder: `ctqa batch` (on Ray) as a script, for Slicer's Python or plain Python.

    PythonSlicer Scripts/batch_assess.py ROOT --out DIR [ctqa batch options]
    Slicer --no-main-window --python-script Scripts/batch_assess.py -- ROOT --out DIR [ctqa batch options]
    python Scripts/batch_assess.py ROOT --out DIR [ctqa batch options]

Options, outputs (DIR/index.csv, DIR/report.html, one folder per series) and exit status (0 all assessed, 1 some
failed, 2 bad arguments, 130 Ctrl-C) are those of `ctqa batch --help`. The core comes from CTQualityAssessment/ beside
this folder, or in the Slicer application from the installed module; Ray and the core's packages must be installed
(in Slicer: once through the module, e.g. CTQualityAssessmentLogic().batchAssess(ROOT, DIR) from the Python console).
"""

import sys
from pathlib import Path


def module_dir() -> Path:
    """The folder holding the ctqa package: the installed module's in the Slicer application, else
    CTQualityAssessment/ of this checkout."""
    slicer = sys.modules.get("slicer")  # the Slicer application has imported it, and only there has it app
    if hasattr(slicer, "app") and hasattr(slicer.modules, "ctqualityassessment"):
        return Path(slicer.modules.ctqualityassessment.path).parent
    return Path(__file__).resolve().parents[1] / "CTQualityAssessment"


def main(argv: list[str]) -> int:
    """`ctqa batch` with argv (after a leading "--", which Slicer's --python-script passes on)."""
    sys.path.insert(0, str(module_dir()))
    from ctqa.cli import main as ctqa

    return ctqa(["batch", *(argv[1:] if argv[:1] == ["--"] else argv)])


if __name__ == "__main__":
    status = main(sys.argv[1:])
    slicer = sys.modules.get("slicer")
    if hasattr(slicer, "app"):  # the Slicer application exits with the status once its pending events are done
        slicer.util.exit(status)
    else:
        sys.exit(status)
