"""The 0-4 quality score in the Slicer module: Logic.globalScoreText (the Results row), the score model selector,
the per-slice plot switched between the quality map's mean and the score (mrml.show_slice_plot against real MRML
nodes from slicer-core, after a real `ctqa assess` process with a tiny untrained score network), and the widget
glue that fills the plot choices.

The module file needs Slicer to import, so its methods are compiled alone from its source (`_` is the identity).
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from module_source import MODULE_FILE, UI_FILE, class_with, module_constants

from ctqa.sample import make_sample
from ctqa.tasks import global_score
from ctqa.volume import CTVolume


def _plot_constants() -> dict:
    """PLOT_QUALITY, PLOT_SCORE: assigned as a tuple in the module."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            names = [target.id for target in node.targets[0].elts]
            if names == ["PLOT_QUALITY", "PLOT_SCORE"]:
                return dict(zip(names, ast.literal_eval(node.value)))
    raise AssertionError("PLOT_QUALITY, PLOT_SCORE not found")


CONSTANTS = {**module_constants("NO_SCORE_MODEL", "SCORE_NOT_INSTALLED"), **_plot_constants()}
NAMESPACE = {"_": lambda text: text, "json": json, "Path": Path, **CONSTANTS}
Logic = class_with("CTQualityAssessmentLogic", {"globalScoreText"}, NAMESPACE)
Widget = class_with("CTQualityAssessmentWidget", {"_fillPlotChoices", "onPlotChanged"}, NAMESPACE)

BLOCK = {
    "value": 2.7349,
    "sd": 0.3121,
    "worst_decile": 1.96,
    "scale": "0-4 LDCTIQAC2023",
    "model": "mdiqa-sim-v1",
    "slices_scored": 120,
    "calibrated": False,
    "device": "cpu",
    "trained_to": "radiologist scores",
}


#
# The Results row
#


def test_score_with_uncertainty_scale_model_and_worst_decile():
    assert Logic.globalScoreText({"global_score": BLOCK}) == (
        "2.7 ± 0.3 (0-4 LDCTIQAC2023, model mdiqa-sim-v1)\nworst 10 % of slices: 2.0"
    )


def test_one_slice_regression_and_calibrated_models():
    one_slice = {**BLOCK, "slices_scored": 1, "worst_decile": 2.7349}
    assert Logic.globalScoreText({"global_score": one_slice}) == "2.7 ± 0.3 (0-4 LDCTIQAC2023, model mdiqa-sim-v1)"
    regression = {**one_slice, "sd": None}  # no uncertainty (JSON null): no ±
    assert Logic.globalScoreText({"global_score": regression}) == "2.7 (0-4 LDCTIQAC2023, model mdiqa-sim-v1)"
    calibrated = {**one_slice, "calibrated": True, "trained_to": "calibrated to radiologist ratings"}
    assert Logic.globalScoreText({"global_score": calibrated}).endswith("model mdiqa-sim-v1, calibrated)")
    surrogate = {**one_slice, "trained_to": "surrogate"}  # the bundled model: no radiologist rated its training data
    assert Logic.globalScoreText({"global_score": surrogate}) == (
        "2.7 ± 0.3 (0-4 LDCTIQAC2023, model mdiqa-sim-v1, surrogate-trained, not radiologist-rated)"
    )


def test_missing_score_says_why():
    assert Logic.globalScoreText({}) == "-"  # no run yet
    assert Logic.globalScoreText({"global_quality_score": 0.8}) == "-"  # a summary older than the score
    note = global_score.NOT_INSTALLED_NOTE
    assert note.startswith(CONSTANTS["SCORE_NOT_INSTALLED"])  # the module's copy matches the core's note
    assert Logic.globalScoreText({"global_score": None, "notes": [note]}) == "n/a: no score model is installed"
    assert Logic.globalScoreText({"global_score": None, "notes": []}) == "n/a (not computed in this run)"


def test_the_real_summary_block_formats(tmp_path):
    """The core's dataclass through to_json and JSON, as summary.json holds it."""
    from ctqa.results import to_json

    block = global_score.summarise(np.array([3.0, 2.0, np.nan]), np.array([0.25, 0.35, np.nan]), "tiny", {})
    summary = json.loads(json.dumps({"global_score": to_json(block)}))
    assert Logic.globalScoreText(summary) == (
        "2.5 ± 0.3 (0-4 LDCTIQAC2023, model tiny, surrogate-trained, not radiologist-rated)\nworst 10 % of slices: 2.0"
    )


#
# The .ui and the module's constants
#


def _widgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget")}


def test_ui_has_the_score_row_the_score_model_selector_and_the_plot_choice():
    widgets = _widgets()
    assert widgets["globalScoreValueLabel"].get("class") == "QLabel"
    tooltip = widgets["globalScoreLabel"].find("property[@name='toolTip']/string").text
    assert "LDCTIQAC2023" in tooltip and "worst 10 %" in tooltip
    assert widgets["plotComboBox"].get("class") == widgets["scoreModelComboBox"].get("class") == "QComboBox"
    binding = widgets["scoreModelComboBox"].find("property[@name='SlicerParameterName']/string").text
    assert binding == "scoreModel"


def test_module_constants_match_the_core():
    from CTQualityAssessmentLib import mrml

    assert CONSTANTS["NO_SCORE_MODEL"] == global_score.NO_SCORE_MODEL
    assert (CONSTANTS["PLOT_QUALITY"], CONSTANTS["PLOT_SCORE"]) == (mrml.PLOT_QUALITY, mrml.PLOT_SCORE)


#
# The widget's plot choices
#


class _Combo:
    """QComboBox as the widget uses it: addItem(text, data), itemData, clear, blockSignals, enabled."""

    def __init__(self):
        self.items, self.enabled, self.blocked = [], True, False

    def blockSignals(self, block):
        self.blocked = block

    def clear(self):
        self.items = []

    def addItem(self, text, data):
        assert self.blocked, "items added while signals are live would switch the plot"
        self.items.append((text, data))

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None


def test_plot_choices_offer_the_score_only_when_the_run_has_one():
    widget = Widget()
    widget.ui = SimpleNamespace(plotComboBox=_Combo())
    widget._fillPlotChoices(SimpleNamespace(summary={"global_score": BLOCK}))
    combo = widget.ui.plotComboBox
    assert [data for _, data in combo.items] == ["quality", "score"] and combo.enabled and not combo.blocked
    widget._fillPlotChoices(SimpleNamespace(summary={"global_score": None}))
    assert [data for _, data in combo.items] == ["quality"] and not combo.enabled


#
# The plot in MRML, after a real run (slicer-core)
#


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from small_models import save_tiny_score_model

    return save_tiny_score_model(tmp_path_factory.mktemp("score") / "tiny")


def test_learned_packages_are_installed_for_a_named_score_model_or_where_pytorch_is(checkpoint, monkeypatch):
    """Logic._prepare: PyTorch is never installed just for the default score (left out with a note instead)."""
    import importlib.util

    from ctqa.models import registry

    calls = []
    Prepare = class_with(
        "CTQualityAssessmentLogic",
        {"_prepare"},
        {**NAMESPACE, "ensure_dependencies": lambda learned=False, batch=False: calls.append(learned)},
    )

    def prepared(model: str, scoreModel: str) -> list[bool]:
        calls.clear()
        Prepare._prepare(model, scoreModel)
        return list(calls)

    assert prepared("physics", "none") == [False]
    assert prepared("physics", str(checkpoint)) == [False, True]
    assert prepared("physics", "score_features") == [False]  # the physics-feature score needs no learned stack
    default_model = registry.default_model
    monkeypatch.setattr(registry, "default_model", lambda task: None if task == "global_score" else default_model(task))
    assert prepared("physics", "default") == [False]  # no score model installed
    monkeypatch.setattr(  # a bundled default score model
        registry, "default_model", lambda task: str(checkpoint) if task == "global_score" else default_model(task)
    )
    assert prepared("physics", "default") == [False, True]  # PyTorch is here: timm & co. may come from pip
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    assert prepared("physics", "default") == [False]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, checkpoint):
    """A completed output folder of a 4-slice CT assessed with the tiny score network, read back as the module's
    process runner reads it (the run itself in process: the command line is tested below, the CLI end to end in
    test_global_score.py), and a headless scene holding the CT."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from slicer_scene import make_headless_scene

    from ctqa.outputs import read_outputs
    from ctqa.pipeline import assess, write_outputs
    from CTQualityAssessmentLib import mrml

    sample = make_sample().low_dose
    volume = CTVolume(sample.hu[8:12], sample.spacing, sample.origin, sample.direction)
    assessment = assess(volume, model="physics", series_model="physics", score_model=str(checkpoint), device="cpu")
    folder = tmp_path_factory.mktemp("run") / "out"
    write_outputs(assessment, folder, preview=False, compress=False)
    scene = make_headless_scene(str(tmp_path_factory.mktemp("cache"))).scene
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml.update_volume_node(ct, volume.hu, volume)
    return scene, ct, read_outputs(folder), checkpoint


def test_the_process_runner_passes_the_score_model(tmp_path):
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from CTQualityAssessmentLib import process

    inputs = process.InputFiles(tmp_path, tmp_path / "volume.nrrd")
    command = process.command_line(inputs, tmp_path / "out", "physics", "cpu", score_model="/models/score.json")
    assert command[command.index("--score-model") + 1] == "/models/score.json"
    default = process.command_line(inputs, tmp_path / "out")
    assert default[default.index("--score-model") + 1] == "default"


def _series_columns(chart) -> list[str]:
    return [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes())]


def test_plot_switches_between_quality_and_score(scored_run):
    from CTQualityAssessmentLib import mrml

    scene, ct, saved, _ = scored_run
    assert saved.summary["global_score"]["slices_scored"] == 4
    outputs = mrml.outputs_to_scene(saved, ct)
    table = outputs.slice_table.GetTable()
    scores = [table.GetValueByName(row, "score").ToDouble() for row in range(table.GetNumberOfRows())]
    assert np.isfinite(scores).all() and all(0.0 <= score <= 4.0 for score in scores)

    chart = outputs.slice_chart
    assert _series_columns(chart) == ["quality_mean", "quality_p10"]  # a run starts on the quality map
    assert chart.GetYAxisRange() == (0.0, 1.0) and chart.GetTitle() == "CT: quality per slice"

    assert mrml.show_slice_plot(ct, mrml.PLOT_SCORE) is chart
    assert _series_columns(chart) == ["score"]
    assert chart.GetYAxisRange() == (0.0, 4.0) and "0-4" in chart.GetYAxisTitle()
    assert chart.GetNthPlotSeriesNode(0).GetTableNodeID() == outputs.slice_table.GetID()

    mrml.show_slice_plot(ct, mrml.PLOT_QUALITY)
    assert _series_columns(chart) == ["quality_mean", "quality_p10"] and chart.GetYAxisRange() == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown plot"):
        mrml.show_slice_plot(ct, "noise")

    widget = Widget()  # the combo's signal: itemData(index) -> show_slice_plot on the assessed volume
    widget.ui = SimpleNamespace(plotComboBox=_Combo())
    widget._fillPlotChoices(outputs)
    widget._parameterNode = SimpleNamespace(qualityMap=outputs.quality_map, inputVolume=ct)
    NAMESPACE["slicer"] = SimpleNamespace(util=SimpleNamespace(tryWithErrorDisplay=_no_error_display))
    widget.onPlotChanged(1)
    assert _series_columns(chart) == ["score"]
    widget.onPlotChanged(0)
    assert _series_columns(chart) == ["quality_mean", "quality_p10"]


def test_a_run_without_a_score_removes_the_score_series(scored_run):
    from ctqa.errors import InputError
    from CTQualityAssessmentLib import mrml

    scene, ct, saved, _ = scored_run
    mrml.outputs_to_scene(saved, ct)
    assert mrml.SLICE_SCORE_SERIES in mrml.own_output_nodes(ct)
    unscored = replace(
        saved,
        slices=[{**row, "score": None, "score_sd": None} for row in saved.slices],
        summary={**saved.summary, "global_score": None},
    )
    outputs = mrml.outputs_to_scene(unscored, ct)
    assert mrml.SLICE_SCORE_SERIES not in mrml.own_output_nodes(ct)
    assert _series_columns(outputs.slice_chart) == ["quality_mean", "quality_p10"]
    with pytest.raises(InputError, match="^CT: the last assessment has no 0-4 score$"):
        mrml.show_slice_plot(ct, mrml.PLOT_SCORE)


class _no_error_display:
    """slicer.util.tryWithErrorDisplay stand-in: lets errors through (a test sees them)."""

    def __init__(self, message, waitCursor=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False
