"""Denoise and compare in the Slicer module: a real `ctqa assess --denoise` process run by the module's runner
(CTQualityAssessmentLib.process) on a volume node of a headless MRML scene (slicer-core), the denoised CT as a new
volume node (the input node unchanged), its quality map, before / after series in the per-slice plot; the runner's
command line; the Results row (Logic.denoisedText), the .ui, the overlay choices and Logic._prepare.

The module file needs Slicer to import, so its methods are compiled alone from its source (`_` is the identity).
The denoiser is a tiny untrained DenoiseNet with perturbed weights, the score model a tiny untrained ScoreNet.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from module_source import UI_FILE, class_with, module_constants

from ctqa.errors import InputError
from ctqa.models import registry
from ctqa.sample import make_sample
from ctqa.tasks import denoise
from ctqa.volume import CTVolume

CONSTANTS = module_constants("DENOISED_ROLE")
NAMESPACE = {"_": lambda text: text, "json": json, "Path": Path, **CONSTANTS}
Logic = class_with("CTQualityAssessmentLogic", {"denoisedText"}, NAMESPACE)
Widget = class_with("CTQualityAssessmentWidget", {"_fillOverlayChoices"}, NAMESPACE)

SUMMARY = {
    "gnl_hu": 14.23,
    "global_quality_score": 0.621,
    "global_score": {"value": 2.14},
    "denoised": {
        "model": "denoise_default",
        "method": "supervised",
        "gnl_hu": 6.1,
        "gnl_reduction_percent": 57.13,
        "global_quality_score": 0.853,
        "score": {"value": 3.04},
        "quality_caveat": "read with care",
    },
}


#
# The Results row, the .ui and the module's constants
#


def test_results_row_shows_before_and_after():
    assert Logic.denoisedText(SUMMARY) == (
        "GNL 14.2 → 6.1 HU (-57 %), apparent quality 0.62 → 0.85, score 2.1 → 3.0 (model denoise_default, supervised)\n"
        "read with care"
    )
    unscored = {**SUMMARY, "global_score": None, "denoised": {**SUMMARY["denoised"], "score": None}}
    assert Logic.denoisedText(unscored).startswith("GNL 14.2 → 6.1 HU (-57 %), apparent quality 0.62 → 0.85 (model ")
    no_noise = {**SUMMARY, "gnl_hu": None, "denoised": {**SUMMARY["denoised"], "gnl_reduction_percent": None}}
    assert Logic.denoisedText(no_noise).startswith("GNL - → 6.1 HU, apparent quality")
    assert Logic.denoisedText({}) == Logic.denoisedText({"denoised": None}) == "-"


def test_ui_has_the_button_the_model_selector_and_the_results_row():
    widgets = {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget")}
    assert widgets["denoiseButton"].get("class") == "QPushButton"
    assert widgets["denoiseButton"].find("property[@name='text']/string").text == "Denoise and compare"
    assert widgets["denoiseModelComboBox"].get("class") == "QComboBox"
    binding = widgets["denoiseModelComboBox"].find("property[@name='SlicerParameterName']/string").text
    assert binding == "denoiseModel"
    assert widgets["denoisedValueLabel"].get("class") == "QLabel"


def test_module_constants_match_the_mrml_glue():
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from CTQualityAssessmentLib import mrml

    assert CONSTANTS["DENOISED_ROLE"] == mrml.DENOISED_CT


class _Combo:
    """QComboBox as the widget uses it: addItem(text, data), clear, blockSignals."""

    def __init__(self):
        self.items, self.blocked = [], False

    def blockSignals(self, block):
        self.blocked = block

    def clear(self):
        self.items = []

    def addItem(self, text, data):
        self.items.append((text, data))


def test_overlay_choices_offer_the_denoised_map_only_after_denoising():
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    widget = Widget()
    widget.ui = SimpleNamespace(overlayComboBox=_Combo())
    plain = SimpleNamespace(reference_ssim_map=None, quality_map_denoised=None)
    widget._fillOverlayChoices(plain)
    assert [data for _, data in widget.ui.overlayComboBox.items] == ["QualityMap", "NoiseMap"]
    widget._fillOverlayChoices(SimpleNamespace(reference_ssim_map=None, quality_map_denoised=object()))
    assert [data for _, data in widget.ui.overlayComboBox.items] == ["QualityMap", "NoiseMap", "QualityMapDenoised"]


#
# The runner and the scene (slicer-core)
#


@pytest.fixture(scope="module")
def tiny_denoiser(tmp_path_factory):
    """A width-8 denoiser whose output differs from its input (small_models.save_tiny_denoiser)."""
    from small_models import save_tiny_denoiser

    return save_tiny_denoiser(tmp_path_factory.mktemp("denoiser") / "tiny", "supervised")


def test_learned_packages_are_installed_for_a_denoiser_and_a_missing_one_is_refused_first(tiny_denoiser, monkeypatch):
    calls = []
    Prepare = class_with(
        "CTQualityAssessmentLogic",
        {"_prepare"},
        {**NAMESPACE, "ensure_dependencies": lambda learned=False, batch=False: calls.append(learned)},
    )
    Prepare._prepare("physics", "none", str(tiny_denoiser))
    assert calls == [False, True]
    calls.clear()
    default_model = registry.default_model
    monkeypatch.setattr(registry, "default_model", lambda task: None if task == denoise.TASK else default_model(task))
    with pytest.raises(InputError, match="no denoise model is installed"):
        Prepare._prepare("physics", "none", "default")
    assert calls == [False]  # refused before PyTorch & co. are installed


def test_the_runner_passes_the_denoiser(tmp_path):
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from CTQualityAssessmentLib import process

    inputs = process.InputFiles(tmp_path, tmp_path / "volume.nrrd")
    command = process.command_line(inputs, tmp_path / "out", denoise_model="/models/denoiser.json")
    assert command[-3:] == ["--denoise", "--denoise-model", "/models/denoiser.json"]
    assert "--denoise" not in process.command_line(inputs, tmp_path / "out")


@pytest.fixture(scope="module")
def denoised_run(tmp_path_factory, tiny_denoiser):
    """A CT volume node (with its own window/level) in a headless scene, run through the module's process runner
    with the tiny denoiser and a tiny score model; the node's voxels before the run."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from slicer_scene import make_headless_scene
    from small_models import save_tiny_score_model

    from CTQualityAssessmentLib import mrml, process

    sample = make_sample().low_dose
    volume = CTVolume(sample.hu[8:12], sample.spacing, (5.0, -7.5, 20.0), sample.direction)
    scene = make_headless_scene(str(tmp_path_factory.mktemp("cache"))).scene
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrml.update_volume_node(ct, volume.hu.astype(np.int16), volume)
    ct.CreateDefaultDisplayNodes()
    ct.GetDisplayNode().AutoWindowLevelOff()
    ct.GetDisplayNode().SetWindowLevel(400.0, 40.0)
    before = np.array(_array(ct))
    score = save_tiny_score_model(tmp_path_factory.mktemp("score") / "tiny")
    outputs = process.run(ct, model="physics", device="cpu", score_model=str(score), denoise_model=str(tiny_denoiser))
    return scene, ct, before, outputs


def _array(node) -> np.ndarray:
    import slicer

    return slicer.util.arrayFromVolume(node)


def _matrix(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _series_columns(chart) -> list[str]:
    return [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes())]


def test_denoised_ct_is_a_new_volume_node_and_the_input_is_unchanged(denoised_run):
    from CTQualityAssessmentLib import mrml

    scene, ct, before, outputs = denoised_run
    np.testing.assert_array_equal(_array(ct), before)
    assert ct.GetName() == "CT" and not ct.GetAttribute(mrml.ROLE_ATTRIBUTE)
    denoised = outputs.denoised_ct
    assert denoised is not None and denoised.GetID() != ct.GetID() and denoised.IsA("vtkMRMLScalarVolumeNode")
    assert denoised.GetName() == "CT denoised" and denoised.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.DENOISED_CT
    after = _array(denoised)
    assert after.shape == before.shape and after.dtype == np.int16 and not np.array_equal(after, before)
    np.testing.assert_allclose(_matrix(denoised), _matrix(ct))
    display = denoised.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (400.0, 40.0, 0)
    quality = outputs.quality_map_denoised
    assert quality.GetName() == "CT denoised quality map" and 0.0 < np.nanmean(_array(quality)) <= 1.0
    block = outputs.summary["denoised"]
    assert block["model"] == "tiny-denoiser" and block["score"]["slices_scored"] == 4


def test_plot_has_before_and_after_series_for_each_quantity(denoised_run):
    from CTQualityAssessmentLib import mrml

    scene, ct, _, outputs = denoised_run
    chart = mrml.show_slice_plot(ct, mrml.PLOT_QUALITY)
    assert _series_columns(chart) == ["quality_mean", "quality_p10", "quality_mean_denoised", "quality_p10_denoised"]
    styles = [chart.GetNthPlotSeriesNode(i).GetLineStyle() for i in range(4)]
    series = chart.GetNthPlotSeriesNode(0)
    assert styles == [series.LineStyleSolid] * 2 + [series.LineStyleDash] * 2
    assert chart.GetTitle() == "CT: quality per slice before / after denoising"
    table = outputs.slice_table.GetTable()
    after = [table.GetValueByName(row, "quality_mean_denoised").ToDouble() for row in range(table.GetNumberOfRows())]
    assert len(after) == 4 and all(0.0 < value <= 1.0 for value in after)
    assert mrml.show_slice_plot(ct, mrml.PLOT_SCORE) is chart
    assert _series_columns(chart) == ["score", "score_denoised"]
    mrml.show_slice_plot(ct, mrml.PLOT_QUALITY)


def test_the_denoised_map_is_shown_over_the_denoised_ct(denoised_run):
    from CTQualityAssessmentLib import mrml

    scene, ct, _, outputs = denoised_run
    assert mrml.show_output_overlay(ct, mrml.QUALITY_MAP_DENOISED, 0.4) is outputs.quality_map_denoised
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        assert composite.GetBackgroundVolumeID() == outputs.denoised_ct.GetID()
        assert composite.GetForegroundVolumeID() == outputs.quality_map_denoised.GetID()
    mrml.show_output_overlay(ct, mrml.QUALITY_MAP, 0.4)
    assert composites.GetItemAsObject(0).GetBackgroundVolumeID() == ct.GetID()


def test_a_run_without_denoising_keeps_the_denoised_ct_and_drops_its_map_and_series(denoised_run):
    from CTQualityAssessmentLib import mrml

    scene, ct, _, outputs = denoised_run
    saved = SimpleNamespace(
        maps={"quality_map": _array(outputs.quality_map), "noise_map": _array(outputs.noise_map)},
        slices=[
            _plain_row(outputs.slice_table, row) for row in range(outputs.slice_table.GetTable().GetNumberOfRows())
        ],
        rois=None,
        summary={**outputs.summary, "denoised": None},
    )
    again = mrml.outputs_to_scene(saved, ct)
    nodes = mrml.own_output_nodes(ct)
    assert nodes[mrml.DENOISED_CT] is outputs.denoised_ct  # the user's copy stays
    assert mrml.QUALITY_MAP_DENOISED not in nodes and mrml.SLICE_MEAN_DENOISED_SERIES not in nodes
    assert again.quality_map_denoised is None and again.denoised_ct is None
    assert _series_columns(again.slice_chart) == ["quality_mean", "quality_p10"]


def _plain_row(table_node, row: int) -> dict:
    """A slices.csv row of the table node, without the denoised CT's figures (a run without --denoise)."""
    from ctqa.results import SLICE_COLUMNS

    table = table_node.GetTable()
    values = {}
    for column in SLICE_COLUMNS:
        value = table.GetValueByName(row, column)
        number = value.ToDouble() if column not in ("slice", "voxels") else value.ToInt()
        values[column] = None if column.endswith("_denoised") or number != number else number
    return values
