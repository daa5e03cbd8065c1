"""Fixes from the outside review of the Slicer module (issue 24): a failed results load still cleans up, and a stdout
line that parses as JSON but is no event object is a log line, not an exception in the timer slot."""

from __future__ import annotations

import types

import pytest
from module_source import class_with

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
