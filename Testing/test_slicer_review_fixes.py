"""Fixes from the outside review of the Slicer module (issue 24): a failed results load still cleans up, a stdout
line that parses as JSON but is no event object is a log line, not an exception in the timer slot; and the smaller
items (5a-5i): cancel never waits for the process in the GUI, no console window on Windows, Slicer installs only what
its path uses and the sample and model choices need no install, no labelmap as input and outputs hidden as they are
added, the layout chosen once, compressed files in Slicer's temporary folder, saved scenes with choices no longer
available, the empty checkpoint path, and where Slicer's Viridis table is defined."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types

import pytest
from module_source import class_with, module_constants

from CTQualityAssessmentLib import process
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


class _Timer:
    """qt.QTimer's start() and stop(), recorded."""

    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


#: The widget's methods that remove the files of ended jobs, and what they need from the module.
ENDING_METHODS = {"_removeEndedJobs", "_tryRemove", "_givenUp"}


def _ending_namespace(**extra):
    import logging

    return {**module_constants("CLEANUP_RETRY_S", "EXIT_WAIT_S"), "logging": logging, "time": time,
            "staticmethod": staticmethod, "_": lambda text: text, **extra}


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
    Widget = class_with("CTQualityAssessmentWidget", {"_finish", *ENDING_METHODS}, _ending_namespace(slicer=slicer))
    widget = Widget()
    widget._cleanupFailures = {}
    widget._timer = types.SimpleNamespace(stop=lambda: None)
    widget.ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(hide=lambda: None), statusLabel=_Label())
    widget._parameterNode = types.SimpleNamespace(opacity=0.5, showResults=True)
    widget._jobNodes, widget._layoutChosen = (None, None), False  # the input node was deleted during the run

    def show_results(*args):
        raise RuntimeError("the input volume node no longer exists")

    widget.logic = types.SimpleNamespace(showResults=show_results)
    widget._updateGui = lambda: calls.append("gui updated")
    widget._endingJobs, widget._endingTimer = [], _Timer()
    job = types.SimpleNamespace(state="finished", log=[], ended=lambda: True, folder="/tmp/run")
    job.cleanup = lambda: calls.append("cleaned up") or True
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


#
# Item 5a: cancel, scene close and exit never wait for the process in the GUI thread
#

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
    "time.sleep(60)"


@pytest.mark.skipif(os.name != "posix", reason="a process that ignores SIGTERM")
def test_cancel_never_waits_and_a_process_that_ignores_it_is_killed_later(monkeypatch):
    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 0.5)
    job = process.CtqaProcess([sys.executable, "-c", IGNORES_SIGTERM])
    job._launch()
    deadline = time.monotonic() + 30
    while not any(line.text == "ready" for line in job.log) and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    asked = time.monotonic()
    job.cancel()
    assert time.monotonic() - asked < 0.2 and job.state == process.CANCELLED
    slowest = 0.0
    while True:
        polled = time.monotonic()
        ended = job.ended()
        slowest = max(slowest, time.monotonic() - polled)
        if ended or polled - asked > 10:
            break
        time.sleep(0.02)
    assert ended and slowest < 0.2  # each poll returns at once, as a QTimer slot must
    assert 0.5 <= time.monotonic() - asked < 5  # killed after the grace period, not before
    assert job.exit_status == -9


class _EndingJob:
    """A cancelled job whose process takes two polls to end."""

    def __init__(self, calls):
        self.calls, self.polls, self.state, self.log = calls, 0, process.CANCELLED, []
        self.folder = "/tmp/CTQualityAssessment-test"

    def cancel(self):
        self.calls.append("cancel")

    def ended(self):
        self.polls += 1
        return self.polls > 2

    def kill(self):
        self.calls.append("kill")

    def cleanup(self):
        self.calls.append("cleanup")
        return True


def _widget_with_job(job, calls, **namespace):
    Widget = class_with(
        "CTQualityAssessmentWidget",
        {"_cancel", "_finish", "cleanup", "_removeJobsOnExit", *ENDING_METHODS},
        _ending_namespace(slicer=None, **namespace),
    )
    widget = Widget()
    widget._job, widget._endingJobs, widget._endingTimer, widget._timer = job, [], _Timer(), _Timer()
    widget._hideOutputsTimer, widget._cleanupFailures = _Timer(), {}
    widget.ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(hide=lambda: None), statusLabel=_Label())
    widget._parameterNode = types.SimpleNamespace(opacity=0.5)
    widget._updateGui = lambda: calls.append("gui updated")
    widget.removeObservers = lambda: calls.append("observers removed")
    return widget


def test_the_widget_deletes_a_cancelled_jobs_files_only_once_its_process_has_ended():
    calls = []
    job = _EndingJob(calls)
    widget = _widget_with_job(job, calls)
    widget._cancel()
    assert calls == ["cancel", "gui updated"] and widget._job is None
    assert widget._endingJobs == [job] and widget._endingTimer.active  # the timer polls it, nothing waits
    assert widget.ui.statusLabel.text == "Cancelled"
    widget._removeEndedJobs()
    assert "cleanup" not in calls
    widget._removeEndedJobs()
    assert calls[-1] == "cleanup" and widget._endingJobs == [] and not widget._endingTimer.active


def test_on_exit_the_ending_jobs_are_killed_and_their_files_removed_at_once():
    calls = []
    widget = _widget_with_job(_EndingJob(calls), calls)
    widget.cleanup()  # Slicer exits: cancel, then kill what is still ending; no timer will run again
    assert calls == ["cancel", "gui updated", "kill", "cleanup", "observers removed"]
    assert widget._endingJobs == [] and not widget._endingTimer.active


#
# Item 5b: no console window on Windows, as slicer.util.launchConsoleProcess starts processes
#


class _StartupInfo:
    """subprocess.STARTUPINFO (Windows only)."""

    def __init__(self):
        self.dwFlags, self.wShowWindow = 0, None


@pytest.fixture
def windows(monkeypatch):
    """process as on Windows: its Popen calls recorded (STARTUPINFO and the flags from Python's Windows values)."""
    monkeypatch.setattr(process, "ON_WINDOWS", True)
    for name, value in (("STARTUPINFO", _StartupInfo), ("STARTF_USESHOWWINDOW", 1), ("SW_HIDE", 0),
                        ("CREATE_NEW_PROCESS_GROUP", 0x200)):
        monkeypatch.setattr(subprocess, name, value, raising=False)
    started = []

    def popen(command, **options):
        started.append((command, options))
        return types.SimpleNamespace(stdout=[], stderr=[], pid=4242, poll=lambda: None)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started


def test_processes_start_without_a_console_window_on_windows(windows, monkeypatch):
    monkeypatch.setenv("SystemRoot", r"D:\Windows")
    process.start_ctqa(["PythonSlicer", "-m", "ctqa.cli", "assess"])
    process.kill_process_tree(types.SimpleNamespace(pid=4242, poll=lambda: None))
    (_, assess), (taskkill, kill) = windows
    assert assess["creationflags"] == subprocess.CREATE_NEW_PROCESS_GROUP
    # started, never waited for; Windows' own taskkill.exe, not whatever the PATH finds first
    assert taskkill == [os.path.join(r"D:\Windows", "System32", "taskkill.exe"), "/F", "/T", "/PID", "4242"]
    for options in (assess, kill):
        startup = options["startupinfo"]  # util.launchConsoleProcess: info.dwFlags = 1, info.wShowWindow = 0
        assert (startup.dwFlags, startup.wShowWindow) == (1, 0)


@pytest.mark.skipif(os.name == "nt", reason="the other platforms")
def test_no_startup_info_elsewhere():
    assert process.hidden_console() == {}


#
# Item 5c: Slicer installs only what its path uses; Sample Data installs nothing; no ctqa.pipeline in the GUI
#

#: Packages Slicer does not bundle (numpy, scipy, SimpleITK and pydicom it does).
NOT_BUNDLED = ("cv2", "zlib_ng", "nibabel", "tifffile", "tqdm", "torch", "monai", "safetensors", "timm", "ray",
               "matplotlib")
GUI_IMPORTS = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_BUNDLED!r}:
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, NotInstalled())
from ctqa.sample import write_sample
write_sample(sys.argv[1])
from CTQualityAssessmentLib import process
for choices in (("physics", "default", None), ("default", "none", "default"), ("physics", "score_mdiqa", None)):
    print(process.needs_learned_packages(*choices))
print(sorted(name for name in sys.modules if name == "ctqa.pipeline" or name.startswith("ctqa.tasks")))
"""


def test_the_sample_and_the_model_choices_need_no_installed_package(tmp_path):
    """Before the first install: the sample is written and the model choices are resolved with Slicer's bundled
    packages alone, and ctqa.pipeline (the tasks, the physics, torch's side) is never imported in the GUI."""
    environment = dict(os.environ, PYTHONPATH=str(process.MODULE_DIR))
    done = subprocess.run(
        [sys.executable, "-c", GUI_IMPORTS, str(tmp_path / "sample")],
        capture_output=True, text=True, env=environment, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["False", "True", "True", "[]"]
    assert (tmp_path / "sample").is_dir()


def test_loading_the_sample_installs_nothing():
    import ast

    from module_source import MODULE_FILE

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    (load,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "loadSample"]
    called = {node.func.id for node in ast.walk(load) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "ensure_dependencies" not in called


def _pipeline_choice(model, score_model, denoise_model):
    """What Logic._prepare decided through ctqa.pipeline before (the oracle): learned packages needed or not."""
    import importlib.util

    from ctqa.models.feature_score import is_feature_card
    from ctqa.pipeline import resolve_denoise_model, resolve_model, resolve_score_model

    learned = resolve_model(model).is_learned
    if denoise_model is not None:
        resolve_denoise_model(denoise_model, require_packages=False)
        learned = True
    spec = resolve_score_model(score_model, require_packages=False)
    if spec is not None and not is_feature_card(spec.card):
        learned = learned or score_model != "default" or importlib.util.find_spec("torch") is not None
    return learned


def _outcome(function, *choices):
    from ctqa.errors import InputError

    try:
        return function(*choices)
    except InputError as error:
        return f"InputError: {error}"


def test_the_registry_reading_decides_as_the_pipeline_did(monkeypatch):
    from ctqa.models import feature_score, registry
    from ctqa.tasks import global_score

    assert process.FEATURE_SCORE_BACKBONE == feature_score.BACKBONE
    assert process.NO_SCORE_MODEL == global_score.NO_SCORE_MODEL
    models = [*registry.available_models("quality_map"), "no_such_model"]
    scores = [*registry.available_models("global_score"), "none", "NONE", "no_such_model"]
    denoisers = [None, *registry.available_models("denoise"), "no_such_model"]
    for model in models:
        for score in scores:
            for denoiser in denoisers:
                choices = (model, score, denoiser)
                assert _outcome(process.needs_learned_packages, *choices) == _outcome(_pipeline_choice, *choices)
    default_model = registry.default_model
    monkeypatch.setattr(registry, "default_model", lambda task: None if task != "quality_map" else default_model(task))
    for choices in (("physics", "default", "default"), ("physics", "default", None)):  # nothing installed
        assert _outcome(process.needs_learned_packages, *choices) == _outcome(_pipeline_choice, *choices)


#
# Item 5e: a labelmap is never auto-selected as the input; outputs added to the scene are hidden from the selectors
#


def _headless_scene(tmp_path):
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    from slicer_scene import make_headless_scene

    return make_headless_scene(str(tmp_path / "cache"))


def _util_over(scene):
    """slicer.util.getNodesByClass over scene (the module's calls go to the application's scene)."""

    def nodes_by_class(class_name):
        collection = scene.GetNodesByClass(class_name)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]

    return types.SimpleNamespace(util=types.SimpleNamespace(getNodesByClass=nodes_by_class))


def test_a_labelmap_or_an_output_is_never_chosen_as_the_input(tmp_path):
    from CTQualityAssessmentLib import mrml

    scene = _headless_scene(tmp_path).scene
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    quality = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT quality map")
    quality.SetAttribute(mrml.ROLE_ATTRIBUTE, mrml.QUALITY_MAP)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    assert labels.IsA("vtkMRMLScalarVolumeNode")  # a subclass: getNodesByClass returns it first
    Widget = class_with(
        "CTQualityAssessmentWidget",
        {"initializeParameterNode"},
        {**module_constants("ROLE_ATTRIBUTE"), "slicer": _util_over(scene)},
    )
    widget = Widget()
    parameters = types.SimpleNamespace(inputVolume=None)
    widget.logic = types.SimpleNamespace(getParameterNode=lambda: parameters)
    widget.setParameterNode = lambda node: setattr(widget, "_parameterNode", node)
    widget.initializeParameterNode()
    assert parameters.inputVolume is ct


def test_the_volume_selectors_offer_no_labelmap():
    """qMRMLNodeComboBox with showChildNodeTypes false lists nodeTypes' own class only (labelmaps are a subclass)."""
    import xml.etree.ElementTree as ElementTree

    from module_source import UI_FILE

    widgets = {widget.get("name"): widget for widget in ElementTree.parse(UI_FILE).iter("widget")}
    for name in ("inputVolumeSelector", "referenceVolumeSelector"):
        properties = {prop.get("name"): prop for prop in widgets[name].findall("property")}
        assert properties["nodeTypes"].findtext("stringlist/string") == "vtkMRMLScalarVolumeNode"
        assert properties["showChildNodeTypes"].findtext("bool") == "false"


def test_outputs_added_to_the_scene_are_hidden_from_the_input_selectors(tmp_path):
    """The NodeAddedEvent arrives before the output has its role attribute: the refresh runs from a single-shot timer,
    once the event loop is back (and once for all the nodes of a loaded scene)."""
    from CTQualityAssessmentLib import mrml

    scene = _headless_scene(tmp_path).scene
    Widget = class_with(
        "CTQualityAssessmentWidget",
        {"onNodeAdded", "_hideOutputsFromInputSelectors"},
        {**module_constants("ROLE_ATTRIBUTE", "DENOISED_ROLE"), "slicer": _util_over(scene)},
    )
    widget = Widget()
    widget._hideOutputsTimer = _Timer()
    proxies = [types.SimpleNamespace(hiddenNodeIDs=[]) for _ in range(2)]
    widget.ui = types.SimpleNamespace(
        inputVolumeSelector=types.SimpleNamespace(sortFilterProxyModel=lambda: proxies[0]),
        referenceVolumeSelector=types.SimpleNamespace(sortFilterProxyModel=lambda: proxies[1]),
    )
    scene.AddObserver(scene.NodeAddedEvent, widget.onNodeAdded)
    quality = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT quality map")  # as mrml._own_node does
    quality.SetAttribute(mrml.ROLE_ATTRIBUTE, mrml.QUALITY_MAP)
    denoised = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT denoised")
    denoised.SetAttribute(mrml.ROLE_ATTRIBUTE, mrml.DENOISED_CT)
    assert widget._hideOutputsTimer.active and proxies[0].hiddenNodeIDs == []
    widget._hideOutputsFromInputSelectors()  # the timer fires
    assert proxies[0].hiddenNodeIDs == proxies[1].hiddenNodeIDs == [quality.GetID()]  # the denoised CT is a CT


def test_the_widget_observes_node_additions():
    from module_source import MODULE_FILE

    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)" in source
    assert "self._hideOutputsTimer.setSingleShot(True)" in source
    assert "self._hideOutputsTimer.timeout.connect(self._hideOutputsFromInputSelectors)" in source


#
# Item 5f: the layout is chosen at the first run only; the views can be left alone (a checkbox)
#


def test_results_choose_the_layout_once_and_leave_the_views_alone_when_asked(tmp_path, monkeypatch):
    import slicer

    from CTQualityAssessmentLib import mrml

    headless = _headless_scene(tmp_path)
    scene = headless.scene
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    outputs = types.SimpleNamespace(
        quality_map=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "map"),
        slice_chart=scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "chart"),
        slice_table=scene.AddNewNodeByClass("vtkMRMLTableNode", "slices"),
        segment_table=scene.AddNewNodeByClass("vtkMRMLTableNode", "segments"),
    )
    overlays, layouts = [], []
    monkeypatch.setattr(mrml, "outputs_to_scene", lambda saved, volume, segmentation: outputs)
    monkeypatch.setattr(mrml, "show_overlay", lambda quality_map, volume, opacity: overlays.append(volume))
    application = types.SimpleNamespace(
        layoutManager=lambda: types.SimpleNamespace(setLayout=layouts.append),
        applicationLogic=lambda: headless.app_logic,
    )
    fake_slicer = types.SimpleNamespace(app=application, vtkMRMLLayoutNode=slicer.vtkMRMLLayoutNode)
    Logic = class_with("CTQualityAssessmentLogic", {"showResults"}, {"slicer": fake_slicer})
    job = types.SimpleNamespace(result=lambda: "saved outputs")
    selection = headless.app_logic.GetSelectionNode()

    assert Logic.showResults(job, ct, None, 0.5, show=True, chooseLayout=True) is outputs
    assert layouts == [slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView] and overlays == [ct]
    assert selection.GetActivePlotChartID() == outputs.slice_chart.GetID()
    assert selection.GetActiveTableID() == outputs.segment_table.GetID()
    Logic.showResults(job, ct, None, 0.5, show=True, chooseLayout=False)  # later runs: the user's layout stays
    assert len(layouts) == 1 and len(overlays) == 2
    selection.SetActiveTableID(None)
    Logic.showResults(job, ct, None, 0.5, show=False, chooseLayout=False)  # unchecked: views left as they are
    assert len(layouts) == 1 and len(overlays) == 2 and selection.GetActiveTableID() is None


def test_the_widget_asks_for_the_layout_at_its_first_shown_run_only():
    shown = []

    def show_results(job, volume, segmentation, opacity, show, chooseLayout):
        shown.append((show, chooseLayout))
        return types.SimpleNamespace(summary={}, quality_map="map")

    tryWithErrorDisplay = type(
        "TryWithErrorDisplay", (), {"__init__": lambda self, *a, **k: None, "__enter__": lambda self: self,
                                    "__exit__": lambda self, *exc: False}
    )
    slicer = types.SimpleNamespace(util=types.SimpleNamespace(tryWithErrorDisplay=tryWithErrorDisplay))
    Widget = class_with("CTQualityAssessmentWidget", {"_finish", *ENDING_METHODS}, _ending_namespace(slicer=slicer))
    widget = Widget()
    widget._timer, widget._endingJobs, widget._endingTimer, widget._cleanupFailures = _Timer(), [], _Timer(), {}
    widget.ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(hide=lambda: None), statusLabel=_Label())
    widget.logic = types.SimpleNamespace(showResults=show_results, acquisitionDescription=lambda volume: "-")
    widget._jobNodes, widget._layoutChosen = ("CT", None), False
    for name in ("_updateGui", "_fillOverlayChoices", "_fillPlotChoices", "_hideOutputsFromInputSelectors"):
        setattr(widget, name, lambda *args: None)
    job = types.SimpleNamespace(state="done", log=[types.SimpleNamespace(seconds=1.0)], ended=lambda: True)
    job.cleanup = lambda: True
    for checked in (False, True, True):
        widget._parameterNode = types.SimpleNamespace(opacity=0.5, showResults=checked, qualityMap=None)
        widget._finish(job)
    assert shown == [(False, False), (True, True), (True, False)]


#
# Item 5g: the run's files go to Slicer's temporary folder, compressed
#


def test_inputs_are_written_compressed(tmp_path):
    """The CT and the reference are written by the module (ctqa.io.write_map) gzip-compressed; the segmentation is
    written by Slicer's storage node (compressed by its default, not set here), with its segments."""
    import numpy as np
    import slicer

    scene = _headless_scene(tmp_path).scene
    ct, reference = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in ("CT", "reference"))
    for node in (ct, reference):
        slicer.util.updateVolumeFromArray(node, np.full((4, 8, 8), -1000, np.int16))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
    segmentation.GetSegmentation().AddEmptySegment("body")
    inputs = process.write_inputs(ct, reference, segmentation)
    try:
        for path in (inputs.volume, inputs.reference):
            header = path.read_bytes().split(b"\n\n")[0]
            assert b"encoding: gzip" in header, path.name
            assert path.stat().st_size < 4 * 8 * 8 * 2  # smaller than the raw voxels
        assert b"Segment0_ID:=body" in inputs.segmentation.read_bytes().split(b"\n\n")[0]  # our node's segment
    finally:
        shutil.rmtree(inputs.folder)


def test_the_segmentation_is_written_without_a_compression_call():
    """vtkMRMLStorageNode's UseCompression is 1 by default: UseCompressionOn() would change nothing."""
    source = (process.MODULE_DIR / "CTQualityAssessmentLib" / "process.py").read_text(encoding="utf-8")
    assert "UseCompressionOn" not in source


def test_the_run_folder_is_in_slicers_temporary_folder_inside_slicer(tmp_path, monkeypatch):
    """A folder of its own for each run (tempfile.mkdtemp) in slicer.app.temporaryPath, even for two runs started in
    the same millisecond (slicer.util.tempDirectory names folders by the millisecond and reuses an existing one)."""
    pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")
    import slicer
    import slicer.util

    def temp_directory(key):
        raise AssertionError("slicer.util.tempDirectory: two runs in one millisecond would share a folder")

    assert not hasattr(slicer, "app")  # the wheel, like PythonSlicer: the system's temporary folder
    outside = process.temporary_folder()
    assert outside.is_dir() and outside.name.startswith("CTQualityAssessment-")
    outside.rmdir()
    slicer_temp = tmp_path / "Slicer-user"  # Slicer creates it when temporaryPath is read; here it is not there yet
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(slicer_temp)), raising=False)
    monkeypatch.setattr(slicer.util, "tempDirectory", temp_directory)
    folders = [process.temporary_folder() for _ in range(20)]
    assert len(set(folders)) == 20
    assert all(folder.is_dir() and folder.parent == slicer_temp for folder in folders)
    assert all(folder.name.startswith("CTQualityAssessment-") for folder in folders)


#
# Item 5h: a scene with a choice no longer available; an empty checkpoint path
#


class _WrappedParameters:
    """A parameterNodeWrapper stand-in: fields, and default(name).value (Slicer's wrapper.py _default)."""

    DEFAULTS = {"model": "physics", "device": "auto"}

    def __init__(self, **values):
        self.__dict__.update(values)

    def default(self, name):
        return types.SimpleNamespace(value=self.DEFAULTS[name])


def test_a_choice_no_longer_available_falls_back_to_the_default_with_a_log_line(caplog):
    import logging

    choices = {"model": ["default", "physics", "user checkpoint file"], "device": ["auto", "cpu", "cuda"]}
    Widget = class_with(
        "CTQualityAssessmentWidget", {"_fallBackToAvailableChoices"}, {"CHOICES": choices, "logging": logging}
    )
    parameters = _WrappedParameters(model="n2q_removed_since", device="cuda")
    with caplog.at_level(logging.WARNING):
        Widget._fallBackToAvailableChoices(parameters)
    assert (parameters.model, parameters.device) == ("physics", "cuda")
    assert "the scene's model 'n2q_removed_since' is not available; now 'physics'" in caplog.text


def test_every_choice_field_takes_its_list_from_choices():
    """Each Choice of the parameter node is CHOICES[its field], so that the fallback checks the combo box's list."""
    import ast

    from module_source import MODULE_FILE

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    parameters = classes["CTQualityAssessmentParameterNode"]
    with_choice = {}
    for field in parameters.body:
        if isinstance(field, ast.AnnAssign) and "Choice(" in ast.unparse(field.annotation):
            with_choice[field.target.id] = ast.unparse(field.annotation)
    assert with_choice == {name: f"Annotated[str, Choice(CHOICES['{name}'])]" for name in with_choice}
    (choices,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CHOICES"]
    assert set(with_choice) == {key.value for key in choices.value.keys}


def test_an_empty_checkpoint_path_is_refused_in_the_modules_words():
    Widget = class_with(
        "CTQualityAssessmentWidget",
        {"_selectedModel", "_checkpointFile"},
        {**module_constants("CHECKPOINT_CHOICE"), "_": lambda text: text},
    )
    widget = Widget()
    for empty in ("", ".", "  "):  # "." : a scene saved when the field was a Path
        widget._parameterNode = types.SimpleNamespace(model="user checkpoint file", checkpointPath=empty)
        with pytest.raises(ValueError, match=r"^Choose the checkpoint file \(.safetensors\) of the user checkpoint"):
            widget._selectedModel()
    widget._parameterNode = types.SimpleNamespace(model="user checkpoint file", checkpointPath="/m/tiny.safetensors")
    assert widget._selectedModel() == "/m/tiny.safetensors"
    widget._parameterNode = types.SimpleNamespace(model="physics", checkpointPath="")
    assert widget._selectedModel() == "physics"


#
# Item 5i: the Viridis comment names Slicer's file
#


def test_the_viridis_table_is_named_where_slicer_defines_it():
    """Slicer/Slicer:Base/Logic/Resources/ColorFiles/Viridis.txt (256 rows, loaded by vtkSlicerColorLogic); the
    quality colour scale's ends are its first and last rows (0: 68 1 84, 255: 253 231 36)."""
    from ctqa.colors import QUALITY_COLOR_ANCHORS
    from CTQualityAssessmentLib import mrml

    source = (process.MODULE_DIR / "CTQualityAssessmentLib" / "mrml.py").read_text(encoding="utf-8")
    assert "Base/Logic/Resources/ColorFiles/Viridis.txt" in source and "Libs/MRML/Core/Resources" not in source
    assert mrml.SLICER_VIRIDIS_ID == "vtkMRMLColorTableNodeFileViridis.txt"
    for anchor, row in ((QUALITY_COLOR_ANCHORS[0], (68, 1, 84)), (QUALITY_COLOR_ANCHORS[-1], (253, 231, 36))):
        assert all(abs(value - channel / 255) < 1 / 255 for value, channel in zip(anchor, row))


#
# Outside review of the non-blocking cancel (26e84f5)
#
# 1. PythonSlicer is a launcher (CTK's ctkAppLauncher) that runs python-real as its child: on SIGTERM the launcher goes
#    at once while python-real still unwinds and writes. The stand-in below is such a launcher: it starts the worker
#    in its own process group (as QProcess does), dies on SIGTERM and otherwise waits for the worker.

LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(worker.pid, flush=True)
sys.exit(worker.wait() if len(sys.argv) < 4 or sys.argv[3] != "leave" else 1)
"""
#: A worker that, on SIGTERM, still writes for about a second and then commits (as ctqa's staging does).
UNWINDS = """
import os, signal, sys, time
path = sys.argv[1]

def unwind(*_):
    for i in range(10):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as out:
            out.write(f"{i}\\n")
        time.sleep(0.1)
    with open(path, "a") as out:
        out.write("committed\\n")
    sys.exit(0)

signal.signal(signal.SIGTERM, unwind)
with open(path, "w") as out:
    out.write("ready\\n")
for _ in range(600):
    time.sleep(0.05)
"""
#: A worker that ignores SIGTERM and writes until it is killed (or for 30 s, should a failed test leave it behind).
IGNORES = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = sys.argv[1]
with open(path, "w") as out:
    out.write("ready\\n")
for _ in range(600):
    with open(path, "a") as out:
        out.write("still here\\n")
    time.sleep(0.05)
"""
posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups")


def _running(pid: int) -> bool:
    """Whether pid is a running process (a zombie, exited and not reaped yet, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return True  # no /proc (macOS): kill(pid, 0) found it


_LEFT_BEHIND = []  # (process group, worker pid) of the launched jobs, killed after each test whatever happened


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    yield
    while _LEFT_BEHIND:
        group, worker = _LEFT_BEHIND.pop()
        if process.group_alive(group):
            os.killpg(group, 9)
        if _running(worker):
            os.kill(worker, 9)


def _launched(worker: str, path, job_class=process.CtqaProcess, leave: bool = False, **fields):
    """A job running LAUNCHER with worker, once the worker has written "ready" to path; (job, worker pid)."""
    command = [sys.executable, "-c", LAUNCHER, worker, str(path), *(["leave"] if leave else [])]
    job = job_class(command, **fields)
    job._launch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job.poll()
        pids = [line.text for line in job.log[1:] if line.text.isdigit()]
        if pids and path.is_file() and path.read_text().startswith("ready"):
            _LEFT_BEHIND.append((job._process.pid, int(pids[0])))
            return job, int(pids[0])
        time.sleep(0.02)
    raise AssertionError(f"the worker did not start: {[line.text for line in job.log]}")


@posix_only
def test_a_cancelled_run_has_ended_only_once_the_launchers_child_has(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 20.0)  # the worker ends by itself, long before
    path = tmp_path / "run" / "outputs.txt"
    path.parent.mkdir()
    job, worker = _launched(UNWINDS, path)
    job.cancel()
    launcher_gone_early = False
    while not job.ended():
        if job._process.poll() is not None and _running(worker):
            launcher_gone_early = True  # the launcher died on SIGTERM; its child still writes
        time.sleep(0.02)
    assert launcher_gone_early and job.exit_status == -15
    assert path.read_text().endswith("committed\n")  # ended() waited for the worker's last write
    assert not _running(worker) and not process.group_alive(job._process.pid)


@posix_only
def test_the_kill_reaches_the_child_after_the_launcher_has_exited(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 0.5)
    path = tmp_path / "outputs.txt"
    job, worker = _launched(IGNORES, path)
    asked = time.monotonic()
    job.cancel()
    while job._process.poll() is None:
        time.sleep(0.01)
    assert not job.ended() and _running(worker)  # the launcher is gone, the tree is not
    job.wait_ended()
    assert 0.5 <= time.monotonic() - asked < process.TERMINATE_GRACE_S + process.KILL_WAIT_S
    assert not _running(worker)  # SIGKILL to the group, although its leader had exited
    size = path.stat().st_size
    time.sleep(0.2)
    assert path.stat().st_size == size  # nothing writes any more


@posix_only
def test_what_a_finished_run_leaves_in_its_group_is_waited_for_then_killed(tmp_path, monkeypatch):
    """The launcher exits by itself while a process it started still runs in its group: not ended until that process
    is gone, and it is killed TERMINATE_GRACE_S later."""
    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 0.3)
    path = tmp_path / "outputs.txt"
    job, worker = _launched(IGNORES, path, leave=True)
    while job._process.poll() is None:
        time.sleep(0.01)
    assert not job.ended() and _running(worker)
    job.wait_ended()
    assert not _running(worker) and job.exit_status == 1


@posix_only
def test_the_batch_path_waits_for_the_whole_tree_when_interrupted(tmp_path, monkeypatch):
    from CTQualityAssessmentLib.batch import BatchProcess

    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 20.0)
    path = tmp_path / "outputs.txt"
    job, worker = _launched(UNWINDS, path, BatchProcess, out=tmp_path / "audit")

    def interrupted():
        raise KeyboardInterrupt  # Ctrl-C in the console

    with pytest.raises(KeyboardInterrupt):
        job.wait(idle=interrupted)
    assert job.state == process.CANCELLED and not _running(worker)
    assert path.read_text().endswith("committed\n")


@posix_only
def test_process_run_removes_the_files_only_after_the_whole_tree_has_ended(tmp_path, monkeypatch):
    """process.run (the console path) waits for the tree before it removes the run's folder: a worker still writing
    after its launcher exited would otherwise leave files behind."""
    pytest.importorskip("slicer_core", reason="process.run imports the MRML glue, which needs slicer-core")
    from ctqa.errors import InputError

    monkeypatch.setattr(process, "TERMINATE_GRACE_S", 20.0)
    folder = tmp_path / "CTQualityAssessment-run"
    (folder / "out").mkdir(parents=True)
    inputs = process.InputFiles(folder, folder / "volume.nrrd")
    started = {}

    def start(inputs, *args, **kwargs):
        job, started["worker"] = _launched(UNWINDS, folder / "out" / "outputs.txt", process.AssessmentProcess,
                                           inputs=inputs, out=folder / "out")
        job._process.send_signal(15)  # the launcher dies at once (status -15: a failed run) ...
        os.kill(started["worker"], 15)  # ... while its worker writes on for a second
        return job

    monkeypatch.setattr(process, "write_inputs", lambda *nodes: inputs)
    monkeypatch.setattr(process.AssessmentProcess, "start", start)
    with pytest.raises(InputError, match="exit status -15"):
        process.run(object(), model="physics")
    assert not _running(started["worker"])
    assert not folder.exists()  # removed after the worker's last write, which would have made it again


def test_on_windows_the_tree_has_ended_once_its_pipes_are_closed(monkeypatch):
    """Windows: no process group to ask; the launcher's exit is not enough while a reader thread has not seen EOF
    (python-real still holds the pipes), nor while a child psutil saw at cancel still runs."""
    import threading

    monkeypatch.setattr(process, "ON_WINDOWS", True)
    release = threading.Event()
    reader = threading.Thread(target=release.wait, daemon=True)
    reader.start()
    child = types.SimpleNamespace(running=True)
    child.is_running = lambda: child.running
    job = process.CtqaProcess(["PythonSlicer"])
    job._process = types.SimpleNamespace(poll=lambda: 1, returncode=1, pid=4242)  # the launcher has exited
    job._readers, job._children = (reader,), [child]
    assert not job.ended()
    release.set()
    reader.join()
    assert not job.ended()  # the pipes are closed, the child psutil saw still runs
    child.running = False
    assert job.ended() and job.exit_status == 1


def test_on_windows_the_children_are_killed_even_after_the_launcher(windows):
    killed = []
    children = [types.SimpleNamespace(kill=lambda i=i: killed.append(i)) for i in range(2)]
    process.kill_process_tree(types.SimpleNamespace(pid=4242, poll=lambda: 1), children)
    assert killed == [0, 1] and windows == []  # no taskkill for a launcher that is gone (its pid may be reused)


def test_a_killed_tree_that_stays_is_given_up_on_so_that_waiting_ends(monkeypatch):
    monkeypatch.setattr(process, "KILL_WAIT_S", 0.2)
    monkeypatch.setattr(process, "kill_process_tree", lambda *args: None)  # a process stuck in the kernel
    job = process.CtqaProcess(["ctqa"])
    job._process = types.SimpleNamespace(poll=lambda: None, pid=4242)
    job.kill()
    started = time.monotonic()
    job.wait_ended()
    assert 0.2 <= time.monotonic() - started < 2 and "given up on" in job.log[-1].text


# 2. and 5. The widget retries a folder it cannot remove yet; its timer slot never raises; on exit it waits briefly.


class _Job:
    """An ended job (ended() after `polls` polls) whose folder goes at the `removable`-th try (None: never)."""

    def __init__(self, folder="/tmp/CTQualityAssessment-x", polls=0, removable=1, ended_error=None):
        self.folder, self.polls, self.removable, self.ended_error = folder, polls, removable, ended_error
        self.tries, self.killed, self.state, self.log = 0, False, process.CANCELLED, []

    def ended(self):
        if self.ended_error is not None:
            raise self.ended_error
        self.polls -= 1
        return self.polls < 0

    def kill(self):
        self.killed = True

    def cleanup(self):
        self.tries += 1
        return self.removable is not None and self.tries >= self.removable


def _ending_widget(jobs, **constants):
    widget = _widget_with_job(None, [], **constants)
    widget._endingJobs = list(jobs)
    return widget


def test_a_folder_still_in_use_is_tried_again_until_it_goes(caplog):
    job = _Job(removable=3)  # Windows: python-real holds a file for two more ticks
    widget = _ending_widget([job])
    widget._removeEndedJobs()
    assert widget._endingJobs == [job] and widget._endingTimer.active and job.tries == 1
    widget._removeEndedJobs()
    widget._removeEndedJobs()
    assert widget._endingJobs == [] and not widget._endingTimer.active and job.tries == 3
    assert widget._cleanupFailures == {}


def test_a_folder_that_never_goes_is_given_up_on_with_its_name(caplog):
    import logging

    job = _Job(folder="/tmp/CTQualityAssessment-held", removable=None)
    widget = _ending_widget([job], CLEANUP_RETRY_S=0.1)
    with caplog.at_level(logging.WARNING):
        widget._removeEndedJobs()
        assert widget._endingJobs == [job]
        time.sleep(0.15)
        widget._removeEndedJobs()
    assert widget._endingJobs == [] and not widget._endingTimer.active
    assert "gave up removing /tmp/CTQualityAssessment-held" in caplog.text


def test_the_timer_slot_never_raises_and_drops_a_failing_job_later(caplog):
    import logging

    failing = _Job(folder="/tmp/CTQualityAssessment-fails", ended_error=FileNotFoundError("taskkill.exe"))
    fine = _Job()
    widget = _ending_widget([failing, fine], CLEANUP_RETRY_S=0.1)
    with caplog.at_level(logging.WARNING):
        widget._removeEndedJobs()  # raised OSError at every tick before
        assert widget._endingJobs == [failing] and fine.tries == 1
        widget._removeEndedJobs()
        assert caplog.text.count("cannot remove /tmp/CTQualityAssessment-fails yet") == 1  # logged once
        time.sleep(0.15)
        widget._removeEndedJobs()
    assert widget._endingJobs == [] and "FileNotFoundError: taskkill.exe" in caplog.text


def test_on_exit_the_killed_jobs_are_waited_for_briefly_then_named_in_the_log(caplog):
    import logging

    slow = _Job(folder="/tmp/CTQualityAssessment-slow", polls=3)  # its tree ends a few polls after the kill
    held = _Job(folder="/tmp/CTQualityAssessment-held", removable=None)  # a file stays held open
    widget = _ending_widget([slow, held], EXIT_WAIT_S=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        widget.cleanup()
    assert 0.3 <= time.monotonic() - started < 1.0
    assert slow.killed and held.killed and slow.tries == 1
    assert "/tmp/CTQualityAssessment-held was not removed before Slicer exited" in caplog.text
    assert "CTQualityAssessment-slow" not in caplog.text and widget._endingJobs == []


def test_on_exit_nothing_is_waited_for_when_the_folders_go_at_once():
    job = _Job()
    widget = _ending_widget([job])
    started = time.monotonic()
    widget.cleanup()
    assert time.monotonic() - started < 0.2 and job.tries == 1


def test_the_module_stops_retrying_after_a_few_seconds_and_waits_at_most_a_second_on_exit():
    constants = module_constants("CLEANUP_RETRY_S", "EXIT_WAIT_S")
    assert constants["EXIT_WAIT_S"] <= 1.0 and constants["CLEANUP_RETRY_S"] >= 5.0


# 4. cleanup stops the hidden-outputs timer, and the observers go whatever fails before


def test_cleanup_stops_every_timer_and_always_removes_the_observers():
    calls = []
    widget = _widget_with_job(None, calls)
    widget._hideOutputsTimer.start()
    widget.cleanup()
    assert not widget._hideOutputsTimer.active and calls == ["observers removed"]

    calls.clear()
    job = _Job()
    widget = _widget_with_job(None, calls)
    widget._endingJobs = [job]

    def broken_cancel():
        raise RuntimeError("a widget is gone")

    widget._cancel = broken_cancel
    with pytest.raises(RuntimeError, match="a widget is gone"):
        widget.cleanup()
    assert calls == ["observers removed"] and job.killed and job.tries == 1
