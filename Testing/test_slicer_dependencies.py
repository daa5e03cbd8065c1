"""CTQualityAssessmentLib.dependencies: requirement files, the missing-package check, and the install paths.

The pure helpers run on real installed and uninstalled distributions of this environment. The install paths run
against stand-ins for slicer.packaging (Slicer >= 5.11), slicer.util (5.6-5.10) and PyTorchUtils, which record the
calls instead of running pip: no package is installed by these tests.
"""

import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from CTQualityAssessmentLib import dependencies
from CTQualityAssessmentLib.dependencies import (
    BATCH_REQUIREMENTS_FILE,
    LEARNED_REQUIREMENTS_FILE,
    OPTIONAL_REQUIREMENTS_FILE,
    REQUIREMENTS_FILE,
    installed_version,
    missing_requirements,
    read_requirements,
    slicer_constraints,
    version_satisfies,
)

ROOT = Path(__file__).resolve().parents[1]
#: Bundled with Slicer (numpy, scipy, pydicom, SimpleITK) or with the PyTorch extension (torch).
NOT_FROM_PIP = {"numpy", "scipy", "pydicom", "simpleitk", "torch", "torchvision"}
NOT_INSTALLED = "light-the-torch>=0.5"  # a real package (PyTorchUtils installs it), not in this environment


def _names(lines):
    return {Requirement(line).name.lower() for line in lines}


@pytest.fixture(autouse=True)
def _not_installed_here():
    if installed_version("light-the-torch") is not None:
        pytest.skip("light-the-torch is installed here; the tests need a real package that is not")


#
# Requirement files
#


def test_requirement_files_parse_one_requirement_a_line():
    """slicer.packaging.load_requirements keeps every line that is not blank, '#' or '-': each must be a requirement
    on its own (a comment after a requirement would make it an invalid requirement)."""
    for path in (REQUIREMENTS_FILE, OPTIONAL_REQUIREMENTS_FILE, LEARNED_REQUIREMENTS_FILE, BATCH_REQUIREMENTS_FILE):
        lines = read_requirements(path)
        assert lines, path
        for line in lines:
            requirement = Requirement(line)
            assert str(requirement.specifier), f"{path.name}: {line} has no version bound"
            assert "#" not in line
        raw = path.read_text(encoding="utf-8").splitlines()
        assert all(line == line.strip() for line in raw if line and not line.startswith("#"))


def test_requirement_files_leave_slicer_and_pytorch_packages_alone():
    """The module's own path needs OpenCV; zlib-ng (faster compression of the input files it writes) is optional;
    NIfTI (nibabel) and the progress bar (tqdm) only for `ctqa batch`; TIFF (tifffile) never in Slicer."""
    assert _names(read_requirements(REQUIREMENTS_FILE)) == {"opencv-python-headless"}
    assert _names(read_requirements(OPTIONAL_REQUIREMENTS_FILE)) == {"zlib-ng"}
    assert _names(read_requirements(LEARNED_REQUIREMENTS_FILE)) == {"monai", "safetensors", "timm"}
    assert _names(read_requirements(BATCH_REQUIREMENTS_FILE)) == {"ray", "matplotlib", "nibabel", "tqdm"}
    for path in (REQUIREMENTS_FILE, OPTIONAL_REQUIREMENTS_FILE, LEARNED_REQUIREMENTS_FILE, BATCH_REQUIREMENTS_FILE):
        assert not _names(read_requirements(path)) & NOT_FROM_PIP


def test_requirement_files_match_pyproject():
    """The same bounds as the pip package; pyproject's other dependencies are Slicer's own, or used only by `ctqa
    batch` (matplotlib draws preview.png and the reports, nibabel reads NIfTI series, tqdm draws the progress bar:
    they come with the batch requirements, as Ray, pyproject's batch extra), or tifffile (TIFF, never in Slicer)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in project["dependencies"]}
    learned = {
        Requirement(r).name.lower(): str(Requirement(r).specifier) for r in project["optional-dependencies"]["learned"]
    }
    for line in read_requirements(REQUIREMENTS_FILE) + read_requirements(OPTIONAL_REQUIREMENTS_FILE):
        assert core[Requirement(line).name.lower()] == str(Requirement(line).specifier), line
    for line in read_requirements(LEARNED_REQUIREMENTS_FILE):
        assert learned[Requirement(line).name.lower()] == str(Requirement(line).specifier), line
    batch = {
        Requirement(r).name.lower(): str(Requirement(r).specifier) for r in project["optional-dependencies"]["batch"]
    }
    for line in read_requirements(BATCH_REQUIREMENTS_FILE):
        assert {**core, **batch}[Requirement(line).name.lower()] == str(Requirement(line).specifier), line
    assert set(batch) <= _names(read_requirements(BATCH_REQUIREMENTS_FILE))
    in_slicer = _names(read_requirements(REQUIREMENTS_FILE) + read_requirements(OPTIONAL_REQUIREMENTS_FILE))
    assert set(core) - in_slicer == {
        "numpy",
        "scipy",
        "simpleitk",
        "pydicom",
        "matplotlib",
        "nibabel",
        "tqdm",
        "tifffile",
    }
    assert learned["torch"] == dependencies.TORCH_VERSION_REQUIREMENT


def test_read_requirements_skips_comments_blank_lines_and_pip_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# why\n\n  nibabel>=5.0  \n-c constraints.txt\n--index-url https://example.org\ntqdm\n")
    assert read_requirements(path) == ["nibabel>=5.0", "tqdm"]


#
# Missing requirements, on this environment's real packages
#


def test_missing_requirements_on_installed_and_uninstalled_packages():
    lines = [
        "numpy>=1.0",  # installed, new enough
        "numpy>=999",  # installed, too old
        "numpy<1",  # installed, too new
        NOT_INSTALLED,
        "opencv-python-headless>=4.8",
        "zlib_ng>=0.4",  # distribution zlib-ng, other spelling
        "SimpleITK>=2.3",  # distribution simpleitk, other case
        'pywin32>=300; sys_platform == "win32"',  # a marker that applies on Windows only
    ]
    expected = ["numpy>=999", "numpy<1", NOT_INSTALLED]
    if sys.platform == "win32":
        expected.append(lines[-1])
    assert missing_requirements(lines) == expected
    assert missing_requirements([]) == []


def test_installed_version_finds_any_spelling_and_none_for_absent():
    assert installed_version("zlib-ng") == installed_version("zlib_ng") is not None
    assert installed_version("light-the-torch") is None


def test_version_satisfies_local_and_pre_release_versions():
    assert version_satisfies("torch>=2.3", "2.13.0+cpu")  # PyTorch builds carry a local version
    assert version_satisfies("torch>=2.3", "2.4.0rc1")  # an installed pre-release within the bounds is fine
    assert not version_satisfies("torch>=2.3", "2.2.2+cu121")
    assert not version_satisfies("torch>=2.3", None)


def test_slicer_constraints_pin_the_installed_versions():
    constraints = slicer_constraints(("numpy", "SimpleITK", "light-the-torch"))
    assert [Requirement(line).name for line in constraints] == ["numpy", "SimpleITK"]
    for line in constraints:
        requirement = Requirement(line)
        assert str(requirement.specifier).startswith("==")
        assert version_satisfies(line, installed_version(requirement.name))


#
# Install paths, with stand-ins that record what would be installed
#


@pytest.fixture
def fake_slicer(monkeypatch):
    """The real slicer package of the slicer-core wheel (no slicer.packaging), with recording stand-ins."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    import slicer
    import slicer.util

    calls = {}
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: calls.setdefault("confirm", True))
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls.setdefault("pip_install", list(args)))
    return calls


def _requirements_file(tmp_path, *lines):
    path = tmp_path / "requirements.txt"
    path.write_text("# test\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_nothing_happens_when_everything_is_installed(tmp_path, fake_slicer):
    dependencies.ensure_requirements(_requirements_file(tmp_path, "numpy>=1.0", "opencv-python-headless>=4.8"))
    assert fake_slicer == {}


def test_older_slicer_confirms_then_pip_installs_only_the_missing_with_constraints(tmp_path, fake_slicer):
    assert dependencies.slicer_packaging() is None  # the wheel, like Slicer 5.6-5.10, has no slicer.packaging
    path = _requirements_file(tmp_path, "numpy>=1.0", NOT_INSTALLED)
    with pytest.raises(RuntimeError) as raised:  # the stand-in installs nothing, so the package stays missing
        dependencies.ensure_requirements(path)
    assert fake_slicer["confirm"] is True
    args = fake_slicer["pip_install"]
    assert args[:2] == [NOT_INSTALLED, "-c"] and args[2].endswith("slicer-constraints.txt")
    message = str(raised.value)
    assert "light-the-torch" in message and "still missing" in message
    assert f'slicer.util.pip_install("{NOT_INSTALLED}")' in message


def test_older_slicer_declined_installation_says_what_and_how(tmp_path, fake_slicer, monkeypatch):
    import slicer.util

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: False)
    with pytest.raises(RuntimeError, match="declined") as raised:
        dependencies.ensure_requirements(_requirements_file(tmp_path, NOT_INSTALLED))
    assert "pip_install" not in fake_slicer
    assert "Python console" in str(raised.value)


def test_slicer_5_11_uses_pip_ensure_with_constraints(tmp_path, fake_slicer, monkeypatch):
    import slicer

    recorded = {}

    def pip_ensure(requirements, **kwargs):
        recorded.update(kwargs, requirements=requirements)
        recorded["constraints_text"] = Path(kwargs["constraints"]).read_text(encoding="utf-8")

    fake_packaging = types.SimpleNamespace(
        pip_ensure=pip_ensure, load_requirements=lambda path: [Requirement(line) for line in read_requirements(path)]
    )
    monkeypatch.setitem(sys.modules, "slicer.packaging", fake_packaging)
    monkeypatch.setattr(slicer, "packaging", fake_packaging, raising=False)
    assert dependencies.slicer_packaging() is fake_packaging

    with pytest.raises(RuntimeError, match="still missing"):
        dependencies.ensure_requirements(_requirements_file(tmp_path, NOT_INSTALLED))
    assert [str(r) for r in recorded["requirements"]] == [NOT_INSTALLED]
    assert recorded["requester"] == "CTQualityAssessment"
    assert "skip_in_testing" not in recorded  # its default, True: a test never installs into the Slicer it runs in
    assert "skip_packages" not in recorded  # documented as a discouraged workaround; constraints instead
    assert f"numpy=={installed_version('numpy')}" in recorded["constraints_text"]
    assert "pip_install" not in fake_slicer and "confirm" not in fake_slicer


def test_testing_mode_installs_nothing(tmp_path, fake_slicer, monkeypatch):
    """Slicer's testing mode (slicer.app.testingEnabled()): no confirmation, no pip, no PyTorchUtils; the reason
    says so (a self-test in the extension factory's shared Slicer must not change it)."""
    import slicer

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: True), raising=False)
    with pytest.raises(RuntimeError, match="testing mode installs nothing"):
        dependencies.ensure_requirements(_requirements_file(tmp_path, NOT_INSTALLED))
    assert fake_slicer == {}
    monkeypatch.setattr(dependencies, "TORCH_VERSION_REQUIREMENT", ">=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # would be imported to install
    with pytest.raises(RuntimeError, match="testing mode installs nothing"):
        dependencies.ensure_torch()
    dependencies.ensure_requirements(_requirements_file(tmp_path, "numpy>=1.0"))  # nothing missing: no error


ASSESSMENT_TESTS = ["test_process_sample", "test_checkpoint_file_is_refused", "test_learned_model",
                    "test_denoise_and_compare"]


def _self_test(installed: set[str]):
    """The module's CTQualityAssessmentTest.runTest with its test methods recorded, where only installed exist."""
    from module_source import class_with

    find_spec = {name: types.SimpleNamespace(name=name) for name in installed}.get
    Test = class_with(
        "CTQualityAssessmentTest",
        {"runTest"},
        {"importlib": types.SimpleNamespace(util=types.SimpleNamespace(find_spec=find_spec))},
    )
    test, ran = Test(), []
    test.delayDisplay = lambda text: ran.append(f"shown: {text}")
    test.setUp = lambda: ran.append("setUp")
    for name in ["test_widget_parameter_node_and_sample", *ASSESSMENT_TESTS]:
        setattr(test, name, lambda name=name: ran.append(name))
    test.runTest()
    return ran


def test_the_module_self_test_runs_what_needs_no_package_then_skips_without_opencv():
    """On a fresh Slicer (the testing mode installs nothing) the widget, the parameter node and the sample are still
    tested; only the assessments, which need OpenCV, are skipped; zlib-ng is not needed."""
    assert _self_test(set()) == [
        "setUp", "test_widget_parameter_node_and_sample",
        "shown: OpenCV (cv2) is not installed: the assessment tests are skipped",
    ]
    assert _self_test({"cv2"}) == ["setUp", "test_widget_parameter_node_and_sample", "setUp", *ASSESSMENT_TESTS]


def test_the_self_test_checks_the_widget_parameter_node_and_sample_without_an_install():
    import ast

    from module_source import MODULE_FILE

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    (test_class,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CTQualityAssessmentTest"]
    (method,) = [n for n in test_class.body if getattr(n, "name", "") == "test_widget_parameter_node_and_sample"]
    source = ast.unparse(method)
    for needed in ("widgetRepresentation().self()", "getParameterNode()", "loadSample()", "initializeParameterNode()"):
        assert needed in source
    assert "ensure_dependencies" not in source


def test_pip_failure_is_reported_with_the_package_and_the_fix(tmp_path, fake_slicer, monkeypatch):
    import subprocess

    import slicer.util

    def failing_pip_install(args):
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *args])

    monkeypatch.setattr(slicer.util, "pip_install", failing_pip_install)
    with pytest.raises(RuntimeError) as raised:
        dependencies.ensure_requirements(_requirements_file(tmp_path, NOT_INSTALLED))
    assert isinstance(raised.value.__cause__, subprocess.CalledProcessError)
    assert NOT_INSTALLED in str(raised.value) and "slicer.util.pip_install" in str(raised.value)


def test_torch_present_and_new_enough_needs_no_pytorch_extension(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import PyTorchUtils would fail
    dependencies.ensure_torch()


def test_torch_missing_without_pytorch_extension_names_the_extensions_manager(monkeypatch):
    monkeypatch.setattr(dependencies, "TORCH_VERSION_REQUIREMENT", ">=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="Extensions Manager") as raised:
        dependencies.ensure_torch()
    assert "torch>=999" in str(raised.value)


def test_torch_install_goes_through_pytorch_utils_and_a_decline_is_reported(monkeypatch):
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, forceComputationBackend, torchVersionRequirement))
            return None  # what PyTorchUtils returns when the user declines

    monkeypatch.setattr(dependencies, "TORCH_VERSION_REQUIREMENT", ">=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    with pytest.raises(RuntimeError, match="declined") as raised:
        dependencies.ensure_torch()
    assert calls == [(True, None, ">=999")]
    assert "PyTorch Utils" in str(raised.value)


def test_torch_without_torchvision_goes_through_pytorch_utils(monkeypatch):
    """timm needs torchvision; pip would take one for another torch build, so PyTorchUtils installs it (light-the-
    torch picks the build that matches torch), and the constraints keep pip off it afterwards."""
    pytest.importorskip("torch")
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append(torchVersionRequirement)
            return sys.modules["torch"]  # "installed": torchvision is still missing (the requirement below)

    monkeypatch.setattr(dependencies, "TORCHVISION_REQUIREMENT", "torchvision>=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    with pytest.raises(RuntimeError, match="still missing: torchvision>=999"):
        dependencies.ensure_torch()
    assert calls == [dependencies.TORCH_VERSION_REQUIREMENT]
    assert "torchvision" in dependencies.SLICER_OWNED_PACKAGES


def test_learned_and_batch_install_the_core_then_their_files(monkeypatch):
    order = []

    def ensure_requirements(path, optional=None):
        order.append(path.name if optional is None else f"{path.name} + {optional.name}")

    monkeypatch.setattr(dependencies, "ensure_requirements", ensure_requirements)
    monkeypatch.setattr(dependencies, "ensure_torch", lambda: order.append("torch"))
    core = "requirements.txt + requirements-optional.txt"
    dependencies.ensure_dependencies()
    assert order == [core]
    order.clear()
    dependencies.ensure_dependencies(learned=True)
    assert order == [core, "torch", "requirements-learned.txt"]
    order.clear()
    dependencies.ensure_dependencies(batch=True)
    assert order == [core, "requirements-batch.txt"]


#
# zlib-ng is optional: it never blocks a run, the tests or the self-test
#

OPTIONAL_NOT_INSTALLED = "pip-requirements-parser>=999"  # a name that is not installed here either


def _without_zlib_ng(monkeypatch):
    """This environment as a Slicer where the zlib-ng wheel could not be installed."""
    real = dependencies.installed_version
    monkeypatch.setattr(
        dependencies, "installed_version", lambda name: None if name.replace("_", "-") == "zlib-ng" else real(name)
    )


def test_a_missing_zlib_ng_never_blocks_a_run_in_testing_mode(monkeypatch, fake_slicer):
    """Slicer's testing mode installs nothing: with OpenCV there, a physics-only Apply and the self-test go on."""
    import slicer

    _without_zlib_ng(monkeypatch)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: True), raising=False)
    assert missing_requirements(read_requirements(OPTIONAL_REQUIREMENTS_FILE)) == ["zlib-ng>=0.4"]
    dependencies.ensure_dependencies()  # raised "testing mode installs nothing" when zlib-ng was required
    assert fake_slicer == {}


def test_optional_packages_are_never_asked_for_on_their_own(tmp_path, fake_slicer):
    required = _requirements_file(tmp_path, "numpy>=1.0")
    optional = tmp_path / "optional.txt"
    optional.write_text(OPTIONAL_NOT_INSTALLED + "\n", encoding="utf-8")
    dependencies.ensure_requirements(required, optional=optional)
    assert fake_slicer == {}  # no dialog, no pip


def test_optional_packages_come_with_the_missing_required_ones_in_one_install(tmp_path, fake_slicer):
    required = _requirements_file(tmp_path, NOT_INSTALLED)
    optional = tmp_path / "optional.txt"
    optional.write_text(OPTIONAL_NOT_INSTALLED + "\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="still missing") as raised:  # the stand-in installs nothing
        dependencies.ensure_requirements(required, optional=optional)
    assert fake_slicer["pip_install"][:3] == [NOT_INSTALLED, OPTIONAL_NOT_INSTALLED, "-c"]  # one confirmation
    assert "pip-requirements-parser" not in str(raised.value)  # only what is required is named


def test_pip_failing_with_an_optional_package_installs_the_required_ones_alone(tmp_path, fake_slicer, monkeypatch,
                                                                                caplog):
    import logging
    import subprocess

    import slicer.util

    calls = []

    def pip_install(args):
        calls.append(list(args))
        if OPTIONAL_NOT_INSTALLED in args:  # no wheel for this computer
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *args])

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(dependencies, "installed_version", lambda name, real=dependencies.installed_version: (
        "1.0" if name == "light-the-torch" and len(calls) > 1 else real(name)))  # the retry installs it
    required = _requirements_file(tmp_path, NOT_INSTALLED.replace(">=0.5", ">=0.1"))
    optional = tmp_path / "optional.txt"
    optional.write_text(OPTIONAL_NOT_INSTALLED + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        dependencies.ensure_requirements(required, optional=optional)  # no error: the required one is there
    assert [call[:-2] for call in calls] == [["light-the-torch>=0.1", OPTIONAL_NOT_INSTALLED], ["light-the-torch>=0.1"]]
    assert "not installed (optional, the module works without): pip-requirements-parser" in caplog.text


def test_slicer_5_11_installs_the_optional_requirements_in_the_same_pip_ensure(tmp_path, fake_slicer, monkeypatch):
    import slicer

    recorded = []
    fake_packaging = types.SimpleNamespace(
        pip_ensure=lambda requirements, **kwargs: recorded.append([str(r) for r in requirements]),
        load_requirements=lambda path: [Requirement(line) for line in read_requirements(path)],
    )
    monkeypatch.setitem(sys.modules, "slicer.packaging", fake_packaging)
    monkeypatch.setattr(slicer, "packaging", fake_packaging, raising=False)
    optional = tmp_path / "optional.txt"
    optional.write_text(OPTIONAL_NOT_INSTALLED + "\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="still missing"):
        dependencies.ensure_requirements(_requirements_file(tmp_path, NOT_INSTALLED), optional=optional)
    assert recorded == [[NOT_INSTALLED, OPTIONAL_NOT_INSTALLED]]


ZLIB_NG_MISSING = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "zlib_ng":
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, NotInstalled())
import gzip
import numpy as np
from ctqa.io import read_volume, write_map
from ctqa.volume import CTVolume
volume = CTVolume(np.arange(60.0).reshape(3, 4, 5) - 500.0, (1.0, 1.0, 2.0))
write_map(volume.hu.astype(np.int16), volume, sys.argv[1])
data = open(sys.argv[1], "rb").read()
header, _, body = data.partition(b"\\n\\n")
assert b"encoding: gzip" in header
assert gzip.decompress(body) == volume.hu.astype(np.int16).tobytes()
print("zlib_ng" in sys.modules, float(read_volume(sys.argv[1]).hu.mean()))
"""


def test_the_input_files_are_compressed_with_the_standard_zlib_without_zlib_ng(tmp_path):
    import os
    import subprocess

    environment = dict(os.environ, PYTHONPATH=str(ROOT / "CTQualityAssessment"))
    done = subprocess.run([sys.executable, "-c", ZLIB_NG_MISSING, str(tmp_path / "volume.nrrd")],
                          capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "-470.5"]  # written with the standard zlib, read back


def test_requirement_files_are_where_slicer_installs_the_module_resources():
    """CMake copies MODULE_PYTHON_RESOURCES beside the module's scripts: Resources/ next to CTQualityAssessmentLib/."""
    assert REQUIREMENTS_FILE == ROOT / "CTQualityAssessment" / "Resources" / "requirements.txt"
    assert LEARNED_REQUIREMENTS_FILE.parent == BATCH_REQUIREMENTS_FILE.parent == REQUIREMENTS_FILE.parent
