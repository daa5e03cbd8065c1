"""The Chest series panel: Logic.seriesPanelRows formats summary.json's `series` block, the .ui holds its labels,
and the widget fills them after a run and clears them while one runs.

The module file needs Slicer to import, so the methods under test are compiled alone from its source (they are
pure: no Qt, no core import; `_`, Slicer's translation function, is the identity here).
"""

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from module_source import UI_FILE, class_with, module_constants

from ctqa.results import ClassCall, SeriesClasses, SeriesMeasures, to_json
from ctqa.volume import Acquisition
from CTQualityAssessmentLib.mrml import SUMMARY_ATTRIBUTE

DISAGREEMENT = "DICOM kernel B30f is a soft-tissue kernel; pixels say lung (p 0.97)"


CONSTANTS = module_constants("CHECKPOINT_CHOICE", "FLAGGED_STYLE", "SCORE_NOT_INSTALLED")
NAMESPACE = {"_": lambda text: text, "json": json, "Path": Path, **CONSTANTS}
Logic = class_with(
    "CTQualityAssessmentLogic", {"seriesPanelRows", "modelDescription", "globalScoreText", "denoisedText"}, NAMESPACE
)
Widget = class_with(
    "CTQualityAssessmentWidget", {"_updateGui", "_showSummary"}, {**NAMESPACE, "QUALITY_MAP_ROLE": "QM"}
)


def panel(summary: dict) -> dict[str, tuple[str, bool]]:
    """{value label name: (text, flagged)}."""
    rows = Logic.seriesPanelRows(summary)
    assert len({name for name, _, _ in rows}) == len(rows)
    return {name: (text, flagged) for name, text, flagged in rows}


def texts(summary: dict) -> dict[str, str]:
    return {name: text for name, (text, _) in panel(summary).items()}


def series_json(**changes) -> dict:
    """A complete series block (learned and physics calls, DICOM tags, one disagreement) as summary.json holds it:
    the core's own dataclasses through to_json and JSON (NaN -> null)."""
    series = SeriesMeasures(
        applies=True,
        note=None,
        water_equivalent_diameter_mm=312.4,
        kernel_index=0.4213,
        kernel_index_patches=180,
        noise_normalised_hu=14.2,
        slice_thickness_mm=3.0,
        snr=61.27,
        brisque=35.18,
        window=ClassCall("lung", 0.97),
        dose=ClassCall("low", 0.81),
        physics=SeriesClasses(ClassCall("lung", 0.88), ClassCall("standard", 0.6), "physics"),
        fitted_score=2.74,
        classifier="chest-series-v1",
        calls_from="learned",
        series_model="chest-series-v1",
        acquisition=Acquisition(
            manufacturer="SIEMENS", kernel="B30f", slice_thickness_mm=3.0, ctdivol_mgy=5.23, exposure_mas=100.0
        ),
        tag_disagreements=(DISAGREEMENT,),
    )
    return json.loads(json.dumps(to_json(replace(series, **changes))))


COMPLETE = {
    "seriesAppliesValueLabel": "yes",
    "seriesWindowValueLabel": "lung (p 0.97); physics: lung (p 0.88)",
    "seriesDoseValueLabel": "low (p 0.81); physics: standard (p 0.60)",
    "seriesClassifierValueLabel": "chest-series-v1",
    "seriesFittedScoreValueLabel": "2.7 of 4 (a fitted estimate, not a radiologist's score)",
    "seriesSnrValueLabel": "61.3",
    "seriesBrisqueValueLabel": "35.2",
    "seriesDiameterValueLabel": "312 mm",
    "seriesKernelIndexValueLabel": "0.42 cycles/mm (180 patches)",
    "seriesSliceThicknessValueLabel": "3.0 mm",
    "seriesTagsValueLabel": "kernel B30f, CTDIvol 5.2 mGy, 100 mAs",
    "seriesDisagreementValueLabel": DISAGREEMENT,
}


#
# Formatting
#


def test_complete_block_with_units_probabilities_and_the_flagged_disagreement():
    rows = panel({"series": series_json()})
    assert {name: text for name, (text, _) in rows.items()} == COMPLETE
    assert [name for name, (_, flagged) in rows.items() if flagged] == ["seriesDisagreementValueLabel"]


def test_disagreements_one_line_each_and_none_when_tags_agree():
    second = "DICOM CTDIvol 1.1 mGy is a low dose; pixels say standard (p 0.90)"
    rows = panel({"series": series_json(tag_disagreements=(DISAGREEMENT, second))})
    assert rows["seriesDisagreementValueLabel"] == (f"{DISAGREEMENT}\n{second}", True)
    assert panel({"series": series_json(tag_disagreements=())})["seriesDisagreementValueLabel"] == ("none", False)


def test_physics_calls_alone_are_shown_once_as_physics():
    physics = SeriesClasses(ClassCall("soft_tissue", 0.91), ClassCall("standard", 0.64), "physics")
    calls = {"window": physics.window, "dose": physics.dose, "physics": physics}
    block = series_json(**calls, classifier=None, calls_from="physics")
    shown = texts({"series": block})
    assert shown["seriesWindowValueLabel"] == "physics: soft tissue (p 0.91)"
    assert shown["seriesDoseValueLabel"] == "physics: standard (p 0.64)"
    assert shown["seriesClassifierValueLabel"] == "physics classifier of chest-series-v1"


def test_partial_block_without_classes_score_brisque_thickness_or_tags():
    """What runs produce until the classifier exists: no calls, no score; BRISQUE NaN (null), no DICOM tags."""
    block = series_json(
        window=None,
        dose=None,
        physics=None,
        fitted_score=None,
        classifier=None,
        brisque=float("nan"),
        slice_thickness_mm=None,
        acquisition=None,
        tag_disagreements=(),
    )
    assert block["brisque"] is None
    rows = panel({"series": block})
    missing = {
        "seriesWindowValueLabel",
        "seriesDoseValueLabel",
        "seriesClassifierValueLabel",
        "seriesFittedScoreValueLabel",
        "seriesBrisqueValueLabel",
        "seriesSliceThicknessValueLabel",
        "seriesTagsValueLabel",
        "seriesDisagreementValueLabel",
    }
    assert {name for name, (text, _) in rows.items() if text == "-"} == missing
    assert rows["seriesDiameterValueLabel"] == ("312 mm", False)
    assert rows["seriesKernelIndexValueLabel"] == ("0.42 cycles/mm (180 patches)", False)
    assert not any(flagged for _, flagged in rows.values())


def test_older_summary_block_shows_what_it_has():
    """The physics-only block of earlier runs: no applies, the kernel index under its old key (shown as "-")."""
    old = {
        "water_equivalent_diameter_mm": 298.0,
        "kernel_index_per_mm": 0.35,
        "kernel_index_patches": 120,
        "noise_normalised_hu": 12.0,
        "slice_thickness_mm": 1.0,
        "acquisition": None,
    }
    shown = texts({"series": old})
    assert shown["seriesDiameterValueLabel"] == "298 mm"
    assert shown["seriesSliceThicknessValueLabel"] == "1.0 mm"
    assert shown["seriesKernelIndexValueLabel"] == "-"
    assert shown["seriesAppliesValueLabel"] == "-"
    assert shown["seriesWindowValueLabel"] == shown["seriesSnrValueLabel"] == "-"


def test_block_that_does_not_apply_says_why():
    block = series_json(applies=False, note="not a body CT", window=None, dose=None, physics=None, fitted_score=None)
    shown = texts({"series": block})
    assert shown["seriesAppliesValueLabel"] == "does not apply: not a body CT"
    assert shown["seriesWindowValueLabel"] == shown["seriesFittedScoreValueLabel"] == "-"
    assert texts({"series": series_json(applies=False, note=None)})["seriesAppliesValueLabel"] == "does not apply"


def test_a_note_on_a_block_that_applies_is_shown():
    note = "no series model is installed: window and dose are not classified"
    block = series_json(note=note, window=None, dose=None, physics=None, classifier=None, fitted_score=None)
    assert texts({"series": block})["seriesAppliesValueLabel"] == f"yes; {note}"


@pytest.mark.parametrize("summary", [{}, {"global_quality_score": 0.8}, {"series": None}], ids=["empty", "no", "null"])
def test_without_a_series_block_every_row_is_a_dash(summary):
    rows = panel(summary)
    assert list(rows) == list(COMPLETE)  # the same rows always, so the widget can clear them all
    assert set(rows.values()) == {("-", False)}


#
# The .ui
#


@pytest.fixture(scope="module")
def ui_tree() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def _widget(root: ElementTree.Element, name: str) -> ElementTree.Element:
    (widget,) = [w for w in root.iter("widget") if w.get("name") == name]
    return widget


def _property(widget: ElementTree.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string") or prop.findtext("bool")
    return None


def test_panel_is_a_collapsed_ctk_collapsible_button_below_the_results(ui_tree):
    panel_widget = _widget(ui_tree, "seriesCollapsibleButton")
    assert panel_widget.get("class") == "ctkCollapsibleButton"
    assert _property(panel_widget, "text") == "Chest series"
    assert _property(panel_widget, "collapsed") == "true"  # opened by the widget after a run with a series block
    top_level = [item.find("widget").get("name") for item in ui_tree.find("widget/layout") if item.find("widget")]
    assert top_level.index("seriesCollapsibleButton") == top_level.index("resultsCollapsibleButton") + 1


def test_every_row_has_a_value_label_and_a_title_with_a_tooltip_in_the_panel(ui_tree):
    form = _widget(ui_tree, "seriesCollapsibleButton").find("layout")
    cells = {
        (int(item.get("row")), int(item.get("column"))): item.find("widget")
        for item in form.findall("item")
        if item.find("widget") is not None
    }
    value_labels = [cells[row, 1].get("name") for row in range(len(COMPLETE))]
    assert value_labels == list(COMPLETE)  # the .ui's rows in the order the Logic gives them
    for row, name in enumerate(value_labels):
        title = cells[row, 0]
        assert cells[row, 1].get("class") == title.get("class") == "QLabel"
        assert title.get("name") == name.replace("ValueLabel", "Label")
        assert (_property(title, "text") or "").endswith(":")
        assert len(_property(title, "toolTip") or "") > 20, f"{title.get('name')}: no definition in its tooltip"
        assert _property(cells[row, 1], "wordWrap") == "true"


#
# The widget
#


class _Ui:
    """Stands in for the widget's `self.ui`: any widget the code asks for, with the properties it sets."""

    def __getattr__(self, name):
        widget = SimpleNamespace(text="", styleSheet="", setVisible=lambda visible: None)
        setattr(self, name, widget)
        return widget


class _QualityMap:
    def __init__(self, summary: dict):
        self.summary = summary

    def GetAttribute(self, name):
        return json.dumps(self.summary) if name == SUMMARY_ATTRIBUTE else None


def test_widget_fills_the_panel_from_the_map_and_clears_it_while_a_run_is_under_way():
    summary = {"settings": {"model": "physics", "model_kind": "builtin"}, "series": series_json()}
    widget = Widget()
    widget.ui, widget.logic, widget._acquisitionText, widget._job = _Ui(), Logic(), "kernel B30f", None
    widget._parameterNode = SimpleNamespace(model="physics", inputVolume=object(), qualityMap=_QualityMap(summary))
    widget._ownOutputs = lambda volume: {"QM": widget._parameterNode.qualityMap}  # the map is the input's own

    widget._updateGui()
    assert {name: getattr(widget.ui, name).text for name in COMPLETE} == COMPLETE
    assert widget.ui.seriesDisagreementValueLabel.styleSheet == CONSTANTS["FLAGGED_STYLE"] != ""
    assert widget.ui.seriesWindowValueLabel.styleSheet == ""
    assert widget.ui.acquisitionValueLabel.text == "kernel B30f"

    widget._job = object()  # Apply pressed: a new run is under way
    widget._updateGui()
    assert {getattr(widget.ui, name).text for name in COMPLETE} == {"-"}
    assert widget.ui.seriesDisagreementValueLabel.styleSheet == ""
    assert widget.ui.acquisitionValueLabel.text == widget.ui.scoreValueLabel.text == "-"
