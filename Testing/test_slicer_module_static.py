"""Static checks of the Slicer module (the module file itself only runs inside Slicer).

Every widget name the code uses exists in the .ui, every SlicerParameterName in the .ui is a parameter node field,
every Lib file and resource is listed in the module's CMakeLists.txt.
"""

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from module_source import module_constants

MODULE_DIR = Path(__file__).resolve().parents[1] / "CTQualityAssessment"
MODULE_FILE = MODULE_DIR / "CTQualityAssessment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CTQualityAssessment.ui"
PARAMETER_NODE_CLASS = "CTQualityAssessmentParameterNode"


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget")}


def _parameter_bindings(ui_widgets) -> dict[str, str]:
    """widget name -> SlicerParameterName."""
    bindings = {}
    for name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[name] = prop.findtext("string")
    return bindings


def _parameter_fields(module_tree) -> set[str]:
    for node in ast.walk(module_tree):
        if isinstance(node, ast.ClassDef) and node.name == PARAMETER_NODE_CLASS:
            decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
            assert "parameterNodeWrapper" in decorators
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{PARAMETER_NODE_CLASS} not found in {MODULE_FILE.name}")


def test_widgets_used_by_the_code_exist_in_the_ui(module_tree, ui_widgets):
    used = {
        node.attr
        for node in ast.walk(module_tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "no self.ui.<widget> found: the check would be empty"
    assert used <= set(ui_widgets), f"widgets missing from the .ui: {sorted(used - set(ui_widgets))}"


def test_ui_parameter_names_are_parameter_node_fields(module_tree, ui_widgets):
    bindings = _parameter_bindings(ui_widgets)
    fields = _parameter_fields(module_tree)
    assert bindings, "the .ui binds no widget to the parameter node"
    unknown = {widget: name for widget, name in bindings.items() if name not in fields}
    assert not unknown, f"SlicerParameterName not in {PARAMETER_NODE_CLASS}: {unknown}"
    assert len(set(bindings.values())) == len(bindings), "two widgets bound to the same parameter"


def test_inputs_of_the_issue_are_bound(ui_widgets, module_tree):
    bound = set(_parameter_bindings(ui_widgets).values())
    assert {"inputVolume", "referenceVolume", "segmentation", "model", "device", "opacity", "showResults"} <= bound
    assert ui_widgets["modelComboBox"].get("class") == "QComboBox"  # filled from Choice(CHOICES["model"])
    # checkpointPath is a str bound by hand (a Path field would show "." in the line edit when empty)
    assert "checkpointPath" not in bound and "checkpointPath" in _parameter_fields(module_tree)
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointPathChanged)' in source
    assert "self.ui.checkpointPathLineEdit.currentPath = self._checkpointFile()" in source


def test_cmake_lists_every_lib_file_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(\S+\.py)$", cmake, flags=re.MULTILINE))
    on_disk = {"${MODULE_NAME}.py"} | {
        f"${{MODULE_NAME}}Lib/{p.name}" for p in (MODULE_DIR / "CTQualityAssessmentLib").glob("*.py")
    }
    on_disk |= {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "ctqa").rglob("*.py")}
    assert listed == on_disk
    for resource in re.findall(r"(Resources/\S+)", cmake):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "CTQualityAssessment")).is_file(), resource
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake


def test_icon_is_128_pixels_square():
    header = (MODULE_DIR / "Resources" / "Icons" / "CTQualityAssessment.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == int.from_bytes(header[20:24], "big") == 128


def test_role_attribute_matches_the_mrml_glue():
    """The module keeps its own copy of the role attribute (importing mrml would import the core at load time)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    values = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(target, "id", "") == "ROLE_ATTRIBUTE" for target in node.targets)
    ]
    glue = (MODULE_DIR / "CTQualityAssessmentLib" / "mrml.py").read_text(encoding="utf-8")
    assert values and f'ROLE_ATTRIBUTE = "{values[0]}"' in glue


def test_result_roles_match_the_mrml_glue():
    """The Results panel finds the selected input's outputs by the glue's reference and role names."""
    constants = module_constants("INPUT_REFERENCE")
    glue = (MODULE_DIR / "CTQualityAssessmentLib" / "mrml.py").read_text(encoding="utf-8")
    assert f'INPUT_REFERENCE = "{constants["INPUT_REFERENCE"]}"' in glue
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    (roles,) = [
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
        and [t.id for t in node.targets[0].elts][0] == "QUALITY_MAP_ROLE"
    ]
    values = [element.value for element in roles.elts]
    assert values == ["QualityMap", "ReferenceSsimMap", "QualityMapDenoised"]
    assert 'QUALITY_MAP, NOISE_MAP, REFERENCE_SSIM_MAP = "QualityMap", "NoiseMap", "ReferenceSsimMap"' in glue
    assert 'QUALITY_MAP_DENOISED = "DenoisedCT", "QualityMapDenoised"' in glue
