"""Every Slicer API the module uses exists: the names are checked against a list verified in Slicer's sources.

No Slicer application runs here, so a call to an API that does not exist (``slicer.pydeps``) or a call without an
argument the API needs (``registerCustomSampleDataSource`` without ``uris``) only shows up at start-up in Slicer.
These tests read the code (ast) instead of running it.

**Which names are collected.** In ``CTQualityAssessment.py``, every ``CTQualityAssessmentLib/*.py`` and
``Scripts/batch_assess.py``, every dotted name that starts at one of the roots ``slicer``, ``qt``, ``ctk``, ``vtk``
(and the two other Slicer modules the code calls, ``SampleData`` and ``PyTorchUtils``), wherever it appears (module
level or inside functions):

- attribute chains on a root: ``slicer.util.pip_install(...)`` gives ``slicer.util.pip_install``;
  ``slicer.app.layoutManager().setLayout(...)`` gives ``slicer.app.layoutManager`` (a call ends the chain:
  attributes of returned objects are not collected);
- imports: ``import slicer.packaging`` gives ``slicer.packaging``; ``from slicer.util import VTKObservationMixin``
  gives ``slicer.util.VTKObservationMixin``; ``import slicer.packaging as packaging`` and
  ``from slicer import util`` make ``packaging.pip_ensure`` / ``util.pip_install`` count as
  ``slicer.packaging.pip_ensure`` / ``slicer.util.pip_install``.

**What must be verified.** Each collected name is cut to its first three components (root plus two:
``slicer.util.pip_install``, ``slicer.app.layoutManager``, ``slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView``,
``qt.QMessageBox.Ok``; ``slicer.modules.plots.logic`` is checked as ``slicer.modules.plots``). The cut name must be a
key of ``Testing/slicer_api_verified.json``, whose value names where it was verified (``repo:path``). Deeper parts
(methods of returned objects, of MRML nodes) are left to the MRML tests and the self-test in Slicer.

Names that the installed wheels provide are also checked against them live: ``slicer.util.*``, MRML and logic classes
and ``slicer.mrmlScene.*`` (a ``vtkMRMLScene``) against ``slicer-core``, ``vtk.*`` against ``vtk``.

The same file checks that the module loads before the core's dependencies are installed (no ``ctqa``, OpenCV & co.
imported at load time), and that the Sample Data registration passes what ``SampleDataSource`` needs.
"""

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "CTQualityAssessment"
MODULE_FILE = MODULE_DIR / "CTQualityAssessment.py"
LIB_DIR = MODULE_DIR / "CTQualityAssessmentLib"
BATCH_SCRIPT = ROOT / "Scripts" / "batch_assess.py"
VERIFIED_FILE = Path(__file__).with_name("slicer_api_verified.json")

API_ROOTS = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils"}
CHECKED_DEPTH = 3
#: Names that were once used and do not exist in released Slicer: never to be added to the verified list.
KNOWN_MISSING = {"slicer.pydeps"}


def slicer_files() -> list[Path]:
    """The module file, the Slicer glue package and the batch script: the code that runs inside Slicer."""
    return [MODULE_FILE, *sorted(LIB_DIR.glob("*.py")), BATCH_SCRIPT]


def _dotted(node: ast.AST) -> list[str] | None:
    """['slicer', 'util', 'pip_install'] for the expression slicer.util.pip_install; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


class _Collector(ast.NodeVisitor):
    """Dotted API names used in one file (see the module docstring for the rule)."""

    def __init__(self):
        self.aliases = {root: root for root in API_ROOTS}  # local name -> dotted API name it stands for
        self.names: set[str] = set()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] not in API_ROOTS:
                continue
            self.names.add(alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module or node.module.split(".")[0] not in API_ROOTS:
            return
        for alias in node.names:
            name = f"{node.module}.{alias.name}"
            self.names.add(name)
            self.aliases[alias.asname or alias.name] = name

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = _dotted(node)
        if parts and parts[0] in self.aliases:
            self.names.add(".".join([self.aliases[parts[0]], *parts[1:]]))
            return  # the inner attributes are prefixes of this chain
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.aliases and self.aliases[node.id] not in API_ROOTS:
            self.names.add(self.aliases[node.id])  # an imported API name used on its own: VTKObservationMixin


def used_names(path: Path) -> set[str]:
    """Dotted API names used in path, cut to CHECKED_DEPTH components."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _Collector()
    # Imports first, so that aliases bound anywhere (also inside functions) are known when attributes are read.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            collector.visit(node)
    collector.visit(tree)
    return {".".join(name.split(".")[:CHECKED_DEPTH]) for name in collector.names}


def all_used_names() -> dict[str, list[str]]:
    """Dotted name -> files that use it."""
    used: dict[str, list[str]] = {}
    for path in slicer_files():
        for name in used_names(path):
            used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return used


@pytest.fixture(scope="module")
def verified() -> dict[str, str]:
    return json.loads(VERIFIED_FILE.read_text(encoding="utf-8"))


def test_collector_reads_chains_imports_and_aliases(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "import qt\n"
        "import slicer\n"
        "from slicer.util import VTKObservationMixin\n"
        "class W(VTKObservationMixin):\n"
        "    def f(self):\n"
        "        import slicer.packaging as packaging\n"
        "        from slicer import util\n"
        "        packaging.pip_ensure(packaging.load_requirements('r.txt'))\n"
        "        util.pip_install('x')\n"
        "        slicer.app.layoutManager().sliceWidget('Red').mrmlSliceCompositeNode()\n"
        "        slicer.modules.plots.logic().ShowChartInLayout(None)\n"
        "        return qt.QMessageBox.Ok, self.ui.slicer\n",
        encoding="utf-8",
    )
    assert used_names(source) == {
        "qt",
        "slicer",
        "slicer.util.VTKObservationMixin",
        "slicer.packaging",
        "slicer.packaging.pip_ensure",
        "slicer.packaging.load_requirements",
        "slicer.util",
        "slicer.util.pip_install",
        "slicer.app.layoutManager",
        "slicer.modules.plots",
        "qt.QMessageBox.Ok",
    }


def test_every_slicer_api_name_used_is_verified(verified):
    used = all_used_names()
    assert used, "no Slicer API name found: the check would be empty"
    unverified = {name: files for name, files in sorted(used.items()) if name not in verified}
    assert not unverified, (
        "Slicer API names not in Testing/slicer_api_verified.json (check them in Slicer's sources, then add them "
        f"with the source): {unverified}"
    )


def test_verified_list_has_sources_and_no_known_missing_api(verified):
    assert not KNOWN_MISSING & set(verified)
    for name, source in verified.items():
        assert name.split(".")[0] in API_ROOTS and len(name.split(".")) <= CHECKED_DEPTH, name
        assert ":" in source, f"{name}: the source must read repo:path"


def test_verified_names_exist_in_the_slicer_core_wheel(verified):
    """The wheel's slicer.util is Slicer's own util.py, its MRML classes are Slicer's, and vtk is VTK: names found
    there must exist (a typo in the verified list fails here)."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    import slicer
    import slicer.util
    import vtk

    def exists(obj, attributes):
        for attribute in attributes:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True

    checked = 0
    for name in verified:
        root, *rest = name.split(".")
        if root == "vtk":
            assert exists(vtk, rest), name
        elif root != "slicer" or not rest:
            continue
        elif rest[0] == "util":
            assert exists(slicer.util, rest[1:]), name
        elif rest[0] == "mrmlScene":  # the application's scene is a vtkMRMLScene
            assert exists(slicer.vtkMRMLScene, rest[1:]), name
        elif rest[0].startswith("vtk") and hasattr(slicer, rest[0]):
            assert exists(slicer, rest), name
        else:
            continue
        checked += 1
    assert checked, "no name checked against the wheel"


#
# Imports at module level: the module must load before the core's dependencies are installed
#


def _top_level_imports(path: Path) -> set[str]:
    """Modules (and imported members) named by import statements that run when the file is imported: module level,
    also inside if/try/with blocks and class bodies, but not inside functions or methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from CTQualityAssessmentLib import process" imports the module CTQualityAssessmentLib.process
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            # these bodies run at import time (class bodies too); function bodies do not
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return modules


def _load_time_imports(path: Path, lib_dir: Path = LIB_DIR, seen: set[Path] | None = None) -> set[str]:
    """Modules imported when path is imported, following the module's own CTQualityAssessmentLib files."""
    seen = set() if seen is None else seen
    seen.add(path)
    modules = _top_level_imports(path)
    for name in list(modules):
        parts = name.split(".")
        if parts[0] != "CTQualityAssessmentLib":
            continue
        for lib_file in (lib_dir / "__init__.py", lib_dir / f"{parts[1]}.py" if len(parts) > 1 else None):
            if lib_file is not None and lib_file.is_file() and lib_file not in seen:
                modules |= _load_time_imports(lib_file, lib_dir, seen)
    return modules


CORE_PACKAGES = {"ctqa", "cv2", "scipy", "nibabel", "tifffile", "zlib_ng", "tqdm", "torch", "monai", "safetensors"}


@pytest.mark.parametrize("path", [MODULE_FILE, LIB_DIR / "dependencies.py"], ids=lambda p: p.name)
def test_module_imports_nothing_from_the_core_at_load_time(path):
    """Slicer imports the module file at start-up, before ensure_dependencies() can install OpenCV & co.; the core
    (ctqa imports cv2, scipy, ...) may only be imported inside functions, after ensure_dependencies()."""
    imported = {name.split(".")[0] for name in _load_time_imports(path)}
    assert not imported & CORE_PACKAGES, f"{path.name} imports {sorted(imported & CORE_PACKAGES)} when it loads"


def test_load_time_imports_follow_the_lib_package(tmp_path):
    lib = tmp_path / "CTQualityAssessmentLib"
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    (lib / "helper.py").write_text("import ctqa.io\n")
    (lib / "other.py").write_text("def f():\n    import ctqa.pipeline\n")
    module = tmp_path / "Module.py"
    module.write_text("from CTQualityAssessmentLib import helper, other\n")
    imported = _load_time_imports(module, lib)
    assert "ctqa.io" in imported and "ctqa.pipeline" not in imported


def test_top_level_import_reader_sees_nested_import_time_statements(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "import os\n"
        "try:\n    import ctqa.io\nexcept ImportError:\n    pass\n"
        "class A:\n    from ctqa import pipeline\n    def f(self):\n        import ctqa.sample\n"
        "def g():\n    from ctqa import errors\n",
        encoding="utf-8",
    )
    assert _top_level_imports(source) == {"os", "ctqa.io", "ctqa", "ctqa.pipeline"}


#
# Sample data registration
#


def _calls_named(tree: ast.AST, attribute: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
    ]


def test_sample_data_registration_passes_uris_and_file_names():
    """SampleDataSource computes len(uris) and zips fileNames: leaving them out (None) raises at every start-up."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    calls = _calls_named(tree, "registerCustomSampleDataSource")
    assert len(calls) == 1
    keywords = {keyword.arg: keyword.value for keyword in calls[0].keywords}
    assert not calls[0].args, "pass keywords only: the positional order differs between Slicer versions"
    for name in ("uris", "fileNames"):
        assert name in keywords, f"registerCustomSampleDataSource without {name}"
        value = keywords[name]
        assert isinstance(value, (ast.List, ast.Tuple)), f"{name} must be a list (None crashes SampleDataSource)"
    assert len(keywords["uris"].elts) == len(keywords["fileNames"].elts)
    # loadFileType (<= 5.10) was renamed loadFileTypes later; with no files neither is needed.
    assert not {"loadFileType", "loadFileTypes"} & set(keywords)
    assert {"category", "sampleName", "customDownloader"} <= set(keywords)


class _SampleDataStandIn:
    """SampleDataLogic.registerCustomSampleDataSource with the checks its SampleDataSource makes on the arguments
    (Slicer/Slicer:Modules/Scripted/SampleData/SampleData.py): a list of uris gives every other per-file list a
    default of that length; fileNames is zipped with them; all lengths must agree."""

    def __init__(self):
        self.sources = []
        self.SampleDataLogic = self

    def registerCustomSampleDataSource(
        self,
        category="Custom",
        sampleName=None,
        uris=None,
        fileNames=None,
        nodeNames=None,
        customDownloader=None,
        thumbnailFileName=None,
        loadFileType="VolumeFile",
        loadFiles=None,
        loadFileProperties=None,
        checksums=None,
    ):
        if isinstance(uris, (list, tuple)):
            count = len(uris)
            nodeNames = [None] * count if nodeNames is None else nodeNames
            loadFiles = [None] * count if loadFiles is None else loadFiles
            checksums = [None] * count if checksums is None else checksums
            loadFileType = [loadFileType] * count if isinstance(loadFileType, str) else loadFileType
        file_types = [file_type for _, _, file_type in zip(fileNames, nodeNames, loadFileType)]  # None: TypeError
        if not len(uris) == len(fileNames) == len(nodeNames) == len(loadFiles) == len(file_types) == len(checksums):
            raise ValueError("All fields of sample data source must have the same length")
        self.sources.append(
            dict(
                category=category,
                sampleName=sampleName,
                customDownloader=customDownloader,
                thumbnailFileName=thumbnailFileName,
            )
        )


def _module_function(name: str, namespace: dict):
    """Compile one top-level function of the module file alone (the file itself needs Slicer to import)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    return namespace[name]


def test_register_sample_data_runs_against_sample_data_checks(monkeypatch):
    import os

    sample_data = _SampleDataStandIn()
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    button = object()
    namespace = {"os": os, "SAMPLE_NAME": "CTQualityAssessmentSample", "__file__": str(MODULE_FILE)}
    namespace["onSampleDataButton"] = button
    _module_function("registerSampleData", namespace)()
    (source,) = sample_data.sources
    assert source["customDownloader"] is button
    assert source["sampleName"] == "CTQualityAssessmentSample"
    assert Path(source["thumbnailFileName"]).is_file()


def test_the_sample_data_stand_in_refuses_the_old_call():
    """Without uris and fileNames, as the module called it before: the error Slicer raised at every start-up."""
    with pytest.raises(TypeError):
        _SampleDataStandIn().registerCustomSampleDataSource(category="C", sampleName="S", customDownloader=print)
