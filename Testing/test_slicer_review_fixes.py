"""Fixes from the outside review of the Slicer module (issue 24): a failed results load still cleans up, and a stdout
line that parses as JSON but is no event object is a log line, not an exception in the timer slot."""

from __future__ import annotations

import types

import pytest
from module_source import class_with, module_constants

from CTQualityAssessmentLib.process import AssessmentProcess


def _job_with(lines: list[str]) -> AssessmentProcess:
    job = AssessmentProcess(["ctqa", "assess"])
    for line in lines:
        job._handle("out", line)
    return job


def test_json_lines_that_are_no_event_object_are_logged():
    job = _job_with(["[1, 2]", "42", '"text"', '{"event": "progress", "fraction": "x"}', "plain text"])
    assert [entry.text for entry in job.log] == [
        "[1, 2]", "42", '"text"', '{"event": "progress", "fraction": "x"}', "plain text"
    ]
    assert job.fraction == 0.0
    job._handle("out", '{"event": "progress", "fraction": 0.5, "stage": "noise"}')
    assert (job.fraction, job.stage) == (0.5, "noise")


class _Label:
    text = ""


def test_a_failed_results_load_still_cleans_up_and_restores_the_buttons():
    """tryWithErrorDisplay shows the error and re-raises (Slicer's util.py): cleanup and the GUI update still run."""
    calls = []

    class TryWithErrorDisplay:
        def __init__(self, message, waitCursor=False):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append("error shown")
            return False  # re-raise, as Slicer does

    slicer = types.SimpleNamespace(util=types.SimpleNamespace(tryWithErrorDisplay=TryWithErrorDisplay))
    Widget = class_with("CTQualityAssessmentWidget", {"_finish"}, {"_": lambda text: text, "slicer": slicer})
    widget = Widget()
    widget._timer = types.SimpleNamespace(stop=lambda: None)
    widget.ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(hide=lambda: None), statusLabel=_Label())
    widget._parameterNode = types.SimpleNamespace(opacity=0.5)
    widget._jobNodes = (None, None)  # the input node was deleted during the run

    def show_results(*args):
        raise RuntimeError("the input volume node no longer exists")

    widget.logic = types.SimpleNamespace(showResults=show_results)
    widget._updateGui = lambda: calls.append("gui updated")
    job = types.SimpleNamespace(state="finished", cleanup=lambda: calls.append("cleaned up"), log=[])
    with pytest.raises(RuntimeError, match="no longer exists"):
        widget._finish(job)
    assert calls == ["error shown", "cleaned up", "gui updated"]
    assert widget._job is None and widget.ui.statusLabel.text == "Failed to load the results"


class _Combo:
    def __init__(self):
        self.items, self.enabled = [], True

    def blockSignals(self, blocked):
        pass

    def clear(self):
        self.items = []

    def addItem(self, text, data):
        self.items.append(data)


class _Parameters:
    """A parameter node stand-in: assigning a field triggers the widget's update, as the ModifiedEvent does."""

    def __init__(self, widget, **fields):
        object.__setattr__(self, "_widget", widget)
        self.__dict__.update(fields)

    def __setattr__(self, name, value):
        self.__dict__[name] = value
        self._widget._updateGui()


def test_the_results_panel_follows_the_selected_input(tmp_path):
    """Issue 24, item 4: after switching input the panel shows that input's own assessment, or none."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    import json

    from slicer_scene import make_headless_scene

    from CTQualityAssessmentLib import mrml

    scene = make_headless_scene(str(tmp_path / "cache")).scene
    assessed, other = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("CT A", "CT B"))
    quality = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT A quality map")
    quality.SetAttribute(mrml.ROLE_ATTRIBUTE, mrml.QUALITY_MAP)
    quality.SetAttribute(mrml.SUMMARY_ATTRIBUTE, json.dumps({"gnl_hu": 12.5}))
    quality.SetNodeReferenceID(mrml.INPUT_REFERENCE, assessed.GetID())

    def nodes_by_class(class_name):
        collection = scene.GetNodesByClass(class_name)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]

    fake_slicer = types.SimpleNamespace(util=types.SimpleNamespace(getNodesByClass=nodes_by_class))
    shown = []
    Widget = class_with(
        "CTQualityAssessmentWidget",
        {"_updateGui", "_ownOutputs", "_fillChoicesFor", "_fillOverlayChoices", "_fillPlotChoices"},
        {**module_constants("INPUT_REFERENCE", "ROLE_ATTRIBUTE", "CHECKPOINT_CHOICE"),
         "PLOT_QUALITY": "quality", "PLOT_SCORE": "score",
         "QUALITY_MAP_ROLE": "QualityMap", "REFERENCE_SSIM_ROLE": "ReferenceSsimMap",
         "QUALITY_MAP_DENOISED_ROLE": "QualityMapDenoised", "_": lambda text: text, "slicer": fake_slicer,
         "json": json, "types": types, "staticmethod": staticmethod},
    )
    widget = Widget()
    widget._job = None
    button = types.SimpleNamespace(enabled=False, text="", toolTip="")
    widget.ui = types.SimpleNamespace(
        checkpointPathLineEdit=types.SimpleNamespace(setVisible=lambda visible: None),
        applyButton=button, denoiseButton=types.SimpleNamespace(enabled=False),
        overlayComboBox=_Combo(), plotComboBox=_Combo(),
    )
    widget._showSummary = shown.append
    widget._parameterNode = _Parameters(widget, model="default", inputVolume=assessed, qualityMap=None)

    widget._updateGui()
    assert widget._parameterNode.qualityMap is quality and shown[-1] == {"gnl_hu": 12.5}
    assert widget.ui.overlayComboBox.items[0] == mrml.QUALITY_MAP and widget.ui.overlayComboBox.enabled

    widget._parameterNode.inputVolume = other  # no assessment of its own: no figures, no choices
    assert widget._parameterNode.qualityMap is None and shown[-1] == {}
    assert widget.ui.overlayComboBox.items == [] and not widget.ui.plotComboBox.enabled
