"""3D Slicer module CTQualityAssessment: per-voxel CT quality map overlay, per-slice plot, per-segment table.

Assessments run out of process (CTQualityAssessmentLib.process: `ctqa assess` in PythonSlicer, progress as JSON
lines, cancel ends the process tree), so Slicer never freezes and a crash or GPU memory stays in the worker; the MRML
work lives in CTQualityAssessmentLib.mrml. Batches of series (Logic.batchAssess) run `ctqa batch` in a process the
same way (CTQualityAssessmentLib.batch). All are tested headless with slicer-core. This file holds the Slicer-only
parts: module description, sample data, the widget (polls the process from a timer) and the self-test.
Dependencies are installed (CTQualityAssessmentLib.dependencies) before anything imports the core.
"""

import importlib.util
import json
import logging
import os
import time
import types
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CTQualityAssessmentLib.dependencies import ensure_dependencies

CHECKPOINT_CHOICE = "user checkpoint file"
SAMPLE_NAME = "CTQualityAssessmentSample"
ROLE_ATTRIBUTE = "CTQualityAssessment.Role"  # = CTQualityAssessmentLib.mrml.ROLE_ATTRIBUTE (imports the core)
#: How an output node names its input, and the roles the Results panel looks for (= CTQualityAssessmentLib.mrml's
#: INPUT_REFERENCE, QUALITY_MAP, REFERENCE_SSIM_MAP and QUALITY_MAP_DENOISED).
INPUT_REFERENCE = "CTQualityAssessment.InputVolume"
QUALITY_MAP_ROLE, REFERENCE_SSIM_ROLE, QUALITY_MAP_DENOISED_ROLE = (
    "QualityMap", "ReferenceSsimMap", "QualityMapDenoised"
)
POLL_MS = 100
#: Seconds the widget keeps trying to remove an ended run's folder (on Windows a file the dying process tree still
#: holds open) before it gives up with a log line naming the folder.
CLEANUP_RETRY_S = 30.0
#: Seconds Slicer's exit waits at most, polling, for the killed processes to end so that their folders can go.
EXIT_WAIT_S = 1.0
#: Style of a Chest series row that needs attention (QWidget.styleSheet); orange reads on light and dark themes.
FLAGGED_STYLE = "color: #d35400; font-weight: bold;"
#: Score model choice that skips the 0-4 score (= ctqa.tasks.global_score.NO_SCORE_MODEL).
NO_SCORE_MODEL = "none"
#: Start of the summary note of a run whose score was skipped because no score model is installed
#: (= ctqa.tasks.global_score.NOT_INSTALLED_NOTE).
SCORE_NOT_INSTALLED = "no global-score model is installed"
#: What the per-slice plot can show (= CTQualityAssessmentLib.mrml.PLOT_QUALITY / PLOT_SCORE).
PLOT_QUALITY, PLOT_SCORE = "quality", "score"
#: Role of the denoised CT among the module's output nodes (= CTQualityAssessmentLib.mrml.DENOISED_CT): unlike the
#: maps, it may be chosen as an input.
DENOISED_ROLE = "DenoisedCT"


def _models() -> list[str]:
    """Model selector entries: the models the core has, then the checkpoint-file entry."""
    try:
        from ctqa.models.registry import available_models
    except ImportError:  # dependencies not installed yet: the selector still shows the built-in choices
        return ["default", "physics", "median_ssim", CHECKPOINT_CHOICE]
    return [*available_models("quality_map"), CHECKPOINT_CHOICE]


def _scoreModels() -> list[str]:
    """Score model selector entries: "default" (skipped with a note when none is installed), the bundled score
    models, and "none"."""
    try:
        from ctqa.models.registry import available_models
    except ImportError:  # dependencies not installed yet
        return ["default", NO_SCORE_MODEL]
    return [*available_models("global_score"), NO_SCORE_MODEL]


def _denoiseModels() -> list[str]:
    """Denoiser selector entries: "default" (the installed denoiser) and the bundled denoisers."""
    try:
        from ctqa.models.registry import available_models
    except ImportError:  # dependencies not installed yet
        return ["default"]
    return list(available_models("denoise"))


#: The parameter node's fields that take one of a list (each shown in a combo box), with the list.
CHOICES = {
    "model": _models(),
    "scoreModel": _scoreModels(),
    "denoiseModel": _denoiseModels(),
    "device": ["auto", "cpu", "cuda"],
}


#
# CTQualityAssessment
#


class CTQualityAssessment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CT Quality Assessment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["CTQualityAssessment developers"]
        self.parent.helpText = _(
            "Per-voxel CT image quality map (1 = best) shown as a colour overlay, quality per slice (plot) and per "
            "segment (table), global quality, the 0-4 quality score (LDCTIQAC2023 scale, when a score model is "
            "installed) and global noise level (GNL, HU). "
            "The default map (median_ssim) is the SSIM of the CT against its own median filter, calibrated on real "
            "dose pairs to read as the SSIM against a full dose; no reference is needed. "
            "With a reference (full-dose) CT of the same anatomy an SSIM map is added. "
            "Denoise and compare denoises the CT with a learned denoiser into a new volume (the input is never "
            "changed) and assesses it the same way: its quality map, and before / after lines in the per-slice plot."
        )
        self.parent.acknowledgementText = _("Quality definition and SSIM settings follow the N2Q approach.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the project's synthetic sample CT in Sample Data; its files are generated, never downloaded.

    uris and fileNames must be lists (empty here): SampleDataSource takes len(uris) and zips fileNames, so leaving
    them out (None) raises TypeError. With no files, nodeNames and loadFileType(s) are not needed (the button shows
    sampleName). The button calls customDownloader(source) and ignores what it returns.
    """
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CTQualityAssessment",
        sampleName=SAMPLE_NAME,
        uris=[],
        fileNames=[],
        thumbnailFileName=os.path.join(iconsPath, "CTQualityAssessment.png"),
        customDownloader=onSampleDataButton,
    )


def onSampleDataButton(source=None):
    """Sample Data button: the click runs as a Qt slot, so errors are shown in a dialog (and logged)."""
    with slicer.util.tryWithErrorDisplay(_("Failed to load the CTQualityAssessment sample."), waitCursor=True):
        loadSample()


def loadSample(*_args):
    """Write the synthetic low-dose CT (dose falls from 100 % to 10 % along z) into the cache folder and load it.
    Nothing is installed for it: the sample needs only packages Slicer bundles (numpy, scipy, SimpleITK)."""
    from ctqa.sample import write_sample

    folder = Path(slicer.app.cachePath) / SAMPLE_NAME
    paths = write_sample(folder)
    return slicer.util.loadVolume(str(paths["ct"]), {"name": SAMPLE_NAME})


#
# Parameter node
#


@parameterNodeWrapper
class CTQualityAssessmentParameterNode:
    """Module state, saved with the scene.

    inputVolume: CT in HU. referenceVolume: optional full-dose CT on the same grid. segmentation: optional segments.
    model: core model name or CHECKPOINT_CHOICE; checkpointPath: a user checkpoint file (.safetensors), "" for none
    (bound to its ctkPathLineEdit by hand: a Path field shows "." for none).
    scoreModel: the 0-4 score's model ("default", a bundled name, or "none").
    denoiseModel: the denoiser of Denoise and compare ("default" or a bundled name).
    device: where learned models run. opacity: overlay opacity 0..1. qualityMap: the last output map.
    showResults: after each run, the map over the CT in the slice views and the plot and table in their views.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: Annotated[str, Choice(CHOICES["model"])] = "median_ssim"
    checkpointPath: str = ""
    scoreModel: Annotated[str, Choice(CHOICES["scoreModel"])] = "default"
    denoiseModel: Annotated[str, Choice(CHOICES["denoiseModel"])] = "default"
    device: Annotated[str, Choice(CHOICES["device"])] = "auto"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    qualityMap: vtkMRMLScalarVolumeNode
    showResults: bool = True


#
# Widget
#


class CTQualityAssessmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running assessment (CTQualityAssessmentLib.process.AssessmentProcess)
        self._logLines = 0  # log lines of the job already shown
        self._jobNodes = None  # (input volume, segmentation) the running job assesses, whatever is selected now
        self._acquisitionText = "-"  # DICOM acquisition of the last assessed input, read once per run
        self._layoutChosen = False  # the plot-and-table layout is switched to once; a layout chosen later stays
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._endingJobs = []  # finished or cancelled jobs whose files go once their process has ended
        self._cleanupFailures = {}  # id(job) -> when removing its files first failed (they are tried again)
        self._endingTimer = qt.QTimer()
        self._endingTimer.setInterval(POLL_MS)
        self._endingTimer.timeout.connect(self._removeEndedJobs)
        self._hideOutputsTimer = qt.QTimer()  # one refresh of the selectors' hidden outputs for many added nodes
        self._hideOutputsTimer.setSingleShot(True)
        self._hideOutputsTimer.timeout.connect(self._hideOutputsFromInputSelectors)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTQualityAssessment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTQualityAssessmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.denoiseButton.connect("clicked(bool)", self.onDenoiseButton)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.ui.plotComboBox.connect("currentIndexChanged(int)", self.onPlotChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointPathChanged)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer exits or reloads the module: no timer runs again, so the timers are stopped, the running and ending
        processes killed and their files removed (_removeJobsOnExit); the observers go whatever fails before."""
        try:
            self._hideOutputsTimer.stop()
            self._cancel()
        finally:
            try:
                self._endingTimer.stop()
                self._removeJobsOnExit()
            finally:
                self.removeObservers()

    def _removeJobsOnExit(self) -> None:
        """Kill the ending jobs' process trees and remove their folders once they have ended, polling for EXIT_WAIT_S
        at most (on Windows taskkill runs on its own and a file stays held open until its process is gone); a folder
        that is still there then is named in the log."""
        jobs, self._endingJobs = self._endingJobs, []
        for job in jobs:
            try:
                job.kill()
            except Exception as error:
                logging.warning(f"CTQualityAssessment: could not kill the process of {job.folder}: {error}")
        deadline = time.monotonic() + EXIT_WAIT_S
        while True:
            jobs = [job for job in jobs if not self._tryRemove(job)[0]]
            if not jobs or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for job in jobs:
            removed, problem = self._tryRemove(job, evenIfRunning=True)
            if not removed:
                logging.warning(
                    f"CTQualityAssessment: {job.folder} was not removed before Slicer exited "
                    f"({problem or 'its process was still running'}); remove it by hand"
                )

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event) -> None:
        """A node was added (a scene loaded, a run from the Python console): the selectors' hidden outputs are
        refreshed once control is back in the event loop, when the node has its role attribute (set after it is
        added), and once for all the nodes of a scene."""
        self._hideOutputsTimer.start()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # The first volume the input selector offers (of that very class: its showChildNodeTypes is false, so no
            # labelmap, a subclass) that is none of the module's outputs.
            candidates = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            inputs = [
                node
                for node in candidates
                if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetAttribute(ROLE_ATTRIBUTE)
            ]
            if inputs:
                self._parameterNode.inputVolume = inputs[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._fallBackToAvailableChoices(self._parameterNode)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.checkpointPathLineEdit.currentPath = self._checkpointFile()  # bound by hand, see the field
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._hideOutputsFromInputSelectors()
            self._updateGui()

    @staticmethod
    def _fallBackToAvailableChoices(parameters) -> None:
        """A scene saved with a choice that is not available here (a model removed since) would make connectGui
        raise (its combo box has no such entry): such a field falls back to its default, with a log line."""
        for name, choices in CHOICES.items():
            value = getattr(parameters, name)  # reading does not validate (writing does)
            if value not in choices:
                default = parameters.default(name).value
                logging.warning(f"CTQualityAssessment: the scene's {name} {value!r} is not available; now {default!r}")
                setattr(parameters, name, default)

    def onCheckpointPathChanged(self, path: str) -> None:
        """The checkpoint path line edit into the parameter node (the other way: setParameterNode)."""
        if self._parameterNode:
            self._parameterNode.checkpointPath = path

    def _checkpointFile(self) -> str:
        """The user checkpoint file chosen, "" for none (a scene of an earlier version, with a Path, holds ".")."""
        path = self._parameterNode.checkpointPath.strip()
        return "" if path == "." else path

    def _updateGui(self, caller=None, event=None) -> None:
        """Enable Apply when there is an input, show the checkpoint path only for that choice, show the summary."""
        parameters = self._parameterNode
        running = self._job is not None
        self.ui.checkpointPathLineEdit.setVisible(parameters.model == CHECKPOINT_CHOICE)
        self.ui.applyButton.enabled = running or bool(parameters.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running assessment") if running else _("Assess the input volume")
        self.ui.denoiseButton.enabled = not running and bool(parameters.inputVolume)
        if not running:  # the Results panel shows the selected input's own assessment, or nothing
            own = self._ownOutputs(parameters.inputVolume)
            if own.get(QUALITY_MAP_ROLE) is not parameters.qualityMap:
                parameters.qualityMap = own.get(QUALITY_MAP_ROLE)  # ModifiedEvent: _updateGui runs again
                self._fillChoicesFor(own)
                return
        summary = {}  # cleared while a run is under way
        if parameters.qualityMap and not running:  # a map exists, so the core's dependencies are installed
            from CTQualityAssessmentLib.mrml import SUMMARY_ATTRIBUTE

            summary = json.loads(parameters.qualityMap.GetAttribute(SUMMARY_ATTRIBUTE) or "{}")
        self._showSummary(summary)

    def _showSummary(self, summary: dict) -> None:
        def text(key, fmt):
            value = summary.get(key)
            return fmt.format(value) if value is not None else "-"

        self.ui.scoreValueLabel.text = text("global_quality_score", "{:.3f}")
        self.ui.globalScoreValueLabel.text = self.logic.globalScoreText(summary)
        self.ui.gnlValueLabel.text = text("gnl_hu", "{:.1f} HU")
        self.ui.snrValueLabel.text = text("snr", "{:.1f}")
        self.ui.cnrValueLabel.text = text("cnr", "{:.1f}")
        noiseLevel = summary.get("learned_noise_level")
        if noiseLevel:  # a learned model's dose head, read as a relative noise level (never as a dose)
            self.ui.doseValueLabel.text = _("{ratio:.1f}x the noise of the training full-dose images").format(
                ratio=noiseLevel["relative_noise"]
            )
        else:
            self.ui.doseValueLabel.text = _("n/a (needs a learned model)") if summary else "-"
        self.ui.modelInfoValueLabel.text = self.logic.modelDescription(summary.get("settings", {}))
        self.ui.denoisedValueLabel.text = self.logic.denoisedText(summary)
        self.ui.acquisitionValueLabel.text = self._acquisitionText if summary else "-"
        for name, text, flagged in self.logic.seriesPanelRows(summary):
            label = getattr(self.ui, name)
            label.text = text
            label.styleSheet = FLAGGED_STYLE if flagged else ""

    def onOpacityChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.qualityMap:  # outputs exist: the core's packages too
            from CTQualityAssessmentLib.mrml import set_overlay_opacity

            set_overlay_opacity(value, slicer.mrmlScene)

    def onOverlayChanged(self, index: int) -> None:
        """Show the chosen map of the last run (quality, noise SD or reference SSIM) over the input CT."""
        parameters = self._parameterNode
        if not parameters or not parameters.qualityMap or not parameters.inputVolume:
            return
        from CTQualityAssessmentLib import mrml

        role = self.ui.overlayComboBox.itemData(index)
        if role:  # the denoised CT's quality map is shown over the denoised CT
            mrml.show_output_overlay(parameters.inputVolume, role, parameters.opacity)

    def onPlotChanged(self, index: int) -> None:
        """Show the chosen quantity in the per-slice plot of the last run (quality map mean or the 0-4 score)."""
        parameters = self._parameterNode
        if not parameters or not parameters.qualityMap or not parameters.inputVolume:
            return
        from CTQualityAssessmentLib import mrml

        quantity = self.ui.plotComboBox.itemData(index)
        if quantity:
            with slicer.util.tryWithErrorDisplay(_("Failed to switch the per-slice plot."), waitCursor=True):
                mrml.show_slice_plot(parameters.inputVolume, quantity)

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to assess the CT."), waitCursor=True):
            self._start()

    def onDenoiseButton(self) -> None:
        """Denoise and compare: the assessment of Apply, plus the denoised CT (a new volume node) and its own."""
        if self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to denoise the CT."), waitCursor=True):
            self._start(denoise=True)

    def _selectedModel(self) -> str:
        """The run's model: a name, or the user checkpoint file (ValueError when none is chosen)."""
        if self._parameterNode.model != CHECKPOINT_CHOICE:
            return self._parameterNode.model
        if not self._checkpointFile():
            raise ValueError(_("Choose the checkpoint file (.safetensors) of the user checkpoint model."))
        return self._checkpointFile()

    def _start(self, denoise: bool = False) -> None:
        """Write the inputs (main thread, no segment export), start `ctqa assess` in its own process (with
        --denoise for Denoise and compare), poll it."""
        parameters = self._parameterNode
        self.ui.logTextEdit.clear()
        self._logLines = 0
        self._jobNodes = (parameters.inputVolume, parameters.segmentation)
        self._acquisitionText = "-"
        self._job = self.logic.startAssessment(
            parameters.inputVolume,
            parameters.segmentation,
            self._selectedModel(),
            parameters.referenceVolume,
            parameters.device,
            parameters.scoreModel,
            parameters.denoiseModel if denoise else None,
        )
        self.ui.statusLabel.text = _("Denoising and assessing") if denoise else _("Running")
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._timer.start()
        self._updateGui()

    def _poll(self) -> None:
        """Timer tick: progress and log lines from the process; results into the scene when it has finished."""
        from CTQualityAssessmentLib import process

        job = self._job
        state = job.poll()
        self.ui.progressBar.value = int(100 * job.fraction)
        self.ui.progressBar.format = f"{job.stage} %p%"
        for line in job.log[self._logLines :]:
            self.ui.logTextEdit.appendPlainText(f"{line.seconds:7.1f} s  {line.text}")
        self._logLines = len(job.log)
        if state == process.RUNNING:
            return
        self._finish(job)

    def _finish(self, job) -> None:
        from CTQualityAssessmentLib import process

        self._timer.stop()
        self._job = None
        self.ui.progressBar.hide()
        parameters = self._parameterNode
        try:
            if job.state == process.CANCELLED:
                self.ui.statusLabel.text = _("Cancelled")
            elif job.state == process.FAILED:
                self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
                slicer.util.errorDisplay(_("Failed to assess the CT: {error}").format(error=job.error))
            else:
                # tryWithErrorDisplay shows the error and re-raises it: the finally below still cleans up
                self.ui.statusLabel.text = _("Failed to load the results")
                inputVolume, segmentation = self._jobNodes
                with slicer.util.tryWithErrorDisplay(_("Failed to load the results."), waitCursor=True):
                    show = parameters.showResults
                    outputs = self.logic.showResults(
                        job, inputVolume, segmentation, parameters.opacity, show, show and not self._layoutChosen
                    )
                    self._layoutChosen = self._layoutChosen or show
                    self._acquisitionText = self.logic.acquisitionDescription(inputVolume)
                    if outputs.summary.get("series"):  # a chest series block: open its panel
                        self.ui.seriesCollapsibleButton.collapsed = False
                    parameters.qualityMap = outputs.quality_map
                    self._fillOverlayChoices(outputs)
                    self._fillPlotChoices(outputs)
                    self._hideOutputsFromInputSelectors()
                    self.ui.statusLabel.text = _("Done in {seconds:.1f} s").format(seconds=job.log[-1].seconds)
        finally:  # the files go (once the process has ended) and Apply comes back, whatever loading the results did
            self._endingJobs.append(job)
            self._removeEndedJobs()
            self._updateGui()

    def _removeEndedJobs(self) -> None:
        """Delete the files of the finished and cancelled jobs whose process tree has ended; the timer checks the
        others again (a cancelled one is killed once it outlives its grace period). A folder that cannot be removed
        yet, or a job whose check raised, is tried again for CLEANUP_RETRY_S, then dropped with a log line naming its
        folder. Never waits for a process, never raises (a timer slot that raised would raise at every tick)."""
        stillEnding = []
        for job in self._endingJobs:
            removed, problem = self._tryRemove(job)
            if removed or (problem is not None and self._givenUp(job, problem)):
                self._cleanupFailures.pop(id(job), None)
            else:
                stillEnding.append(job)
        self._endingJobs = stillEnding
        if stillEnding:
            self._endingTimer.start()
        else:
            self._endingTimer.stop()

    @staticmethod
    def _tryRemove(job, evenIfRunning: bool = False) -> tuple:
        """(removed, problem): whether the job's process tree has ended (evenIfRunning: not asked) and its folder is
        gone; problem: why not, None while the tree is still ending. Never raises."""
        try:
            if not evenIfRunning and not job.ended():
                return False, None
            if job.cleanup():
                return True, None
            return False, "a file in it is still in use"
        except Exception as error:  # e.g. OSError from starting taskkill
            return False, f"{type(error).__name__}: {error}"

    def _givenUp(self, job, problem: str) -> bool:
        """Whether to stop trying to remove a job's folder: True CLEANUP_RETRY_S after its first failure. The first
        failure and the giving up are logged, with the folder."""
        now = time.monotonic()
        first = self._cleanupFailures.get(id(job))
        if first is None:
            first = self._cleanupFailures[id(job)] = now
            logging.warning(f"CTQualityAssessment: cannot remove {job.folder} yet ({problem}); trying again")
        if now - first < CLEANUP_RETRY_S:
            return False
        logging.error(f"CTQualityAssessment: gave up removing {job.folder} ({problem}); remove it by hand")
        return True

    @staticmethod
    def _ownOutputs(inputVolume) -> dict:
        """{role: node} of the module's output volumes made for inputVolume (none for None)."""
        if not inputVolume:
            return {}
        return {
            node.GetAttribute(ROLE_ATTRIBUTE): node
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if node.GetAttribute(ROLE_ATTRIBUTE) and node.GetNodeReferenceID(INPUT_REFERENCE) == inputVolume.GetID()
        }

    def _fillChoicesFor(self, own: dict) -> None:
        """Overlay and plot choices of the selected input's own outputs (empty and disabled without any)."""
        quality = own.get(QUALITY_MAP_ROLE)
        if quality is None:
            for combo in (self.ui.overlayComboBox, self.ui.plotComboBox):
                combo.blockSignals(True)
                combo.clear()
                combo.blockSignals(False)
                combo.enabled = False
            return
        from CTQualityAssessmentLib.mrml import SUMMARY_ATTRIBUTE

        self.ui.overlayComboBox.enabled = True
        summaryText = quality.GetAttribute(SUMMARY_ATTRIBUTE) or "{}"
        outputs = types.SimpleNamespace(
            reference_ssim_map=own.get(REFERENCE_SSIM_ROLE),
            quality_map_denoised=own.get(QUALITY_MAP_DENOISED_ROLE),
            summary=json.loads(summaryText),
        )
        self._fillOverlayChoices(outputs)
        self._fillPlotChoices(outputs)

    def _fillOverlayChoices(self, outputs) -> None:
        from CTQualityAssessmentLib import mrml

        combo = self.ui.overlayComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("quality (1 = best)"), mrml.QUALITY_MAP)
        combo.addItem(_("noise SD (HU)"), mrml.NOISE_MAP)
        if outputs.reference_ssim_map is not None:
            combo.addItem(_("reference SSIM"), mrml.REFERENCE_SSIM_MAP)
        if outputs.quality_map_denoised is not None:
            combo.addItem(_("quality after denoising (over the denoised CT)"), mrml.QUALITY_MAP_DENOISED)
        combo.blockSignals(False)

    def _fillPlotChoices(self, outputs) -> None:
        """The per-slice plot choices of a finished run: the quality map's mean always, the 0-4 score when the run
        has one; the plot starts on the quality (as mrml.outputs_to_scene leaves it)."""
        scored = bool(outputs.summary.get("global_score"))
        combo = self.ui.plotComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("quality map mean and 10th percentile"), PLOT_QUALITY)
        if scored:
            combo.addItem(_("0-4 quality score"), PLOT_SCORE)
        combo.blockSignals(False)
        combo.enabled = scored

    def _hideOutputsFromInputSelectors(self) -> None:
        """The module's own maps never appear as input choices (qMRMLSortFilterProxyModel.hiddenNodeIDs); refreshed
        after each run and whenever nodes are added (a loaded scene). The denoised CT does: it is a CT."""
        ownIDs = [
            node.GetID()
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if node.GetAttribute(ROLE_ATTRIBUTE) not in (None, "", DENOISED_ROLE)
        ]
        for selector in (self.ui.inputVolumeSelector, self.ui.referenceVolumeSelector):
            selector.sortFilterProxyModel().hiddenNodeIDs = ownIDs

    def _cancel(self) -> None:
        """Stop the running assessment (its process tree is asked to end, never waited for); the scene is left as it
        was."""
        if self._job is None:
            return
        self._job.cancel()
        self._finish(self._job)


#
# Logic
#


class CTQualityAssessmentLogic(ScriptedLoadableModuleLogic):
    """Runs assessments out of process (CTQualityAssessmentLib.process). From the Python console or a script:

    outputs = CTQualityAssessmentLogic().process(getNode("CT"), segmentationNode=getNode("Segmentation"))
    rows = CTQualityAssessmentLogic().batchAssess("/data/archive", "/data/audit")  # every CT series in a folder
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CTQualityAssessmentParameterNode(super().getParameterNode())

    @staticmethod
    def _prepare(model: str, scoreModel: str = "default", denoiseModel=None, batch: bool = False) -> None:
        """Install what the run needs (before any core import), and refuse an unknown model before any work.

        The learned packages are installed for a learned quality model, for a denoiser (Denoise and compare), for a
        score network chosen by name, and for a default score network once PyTorch is there (then only timm & co.
        come from pip); a physics-feature score (the bundled default) needs none of them. Without PyTorch a default
        score network is left out with a note in the run's summary: PyTorch is never installed just for it.
        A denoiser that is not installed is refused here, before the learned packages are installed. The choices are
        read from the model registry (process.needs_learned_packages): ctqa.pipeline is never imported in Slicer.
        batch: also the packages of `ctqa batch` (Ray, matplotlib for the reports, nibabel, tqdm).
        """
        ensure_dependencies()
        from CTQualityAssessmentLib.process import needs_learned_packages

        learned = needs_learned_packages(model, scoreModel, denoiseModel)
        if learned or batch:
            ensure_dependencies(learned=learned, batch=batch)

    def startAssessment(
        self,
        inputVolumeNode,
        segmentationNode=None,
        model="default",
        referenceVolumeNode=None,
        device="auto",
        scoreModel="default",
        denoiseModel=None,
    ):
        """Start an assessment process and return it (poll() it; the widget does so from a timer). denoiseModel:
        None, or the denoiser of Denoise and compare."""
        self._prepare(model, scoreModel, denoiseModel)
        from CTQualityAssessmentLib import process

        if inputVolumeNode is None:
            raise ValueError(_("Select an input volume."))
        inputs = process.write_inputs(inputVolumeNode, referenceVolumeNode, segmentationNode)
        return process.AssessmentProcess.start(
            inputs, model, device, score_model=scoreModel, denoise_model=denoiseModel
        )

    def process(
        self,
        inputVolumeNode,
        segmentationNode=None,
        model="default",
        referenceVolumeNode=None,
        device="auto",
        showResult=True,
        opacity=0.5,
        scoreModel="default",
        denoiseModel=None,
    ):
        """Assess inputVolumeNode, blocking until the process ends; returns the output nodes (mrml.OutputNodes).

        scoreModel: the 0-4 score's model ("default", a name, a checkpoint file, or "none" to skip it);
        denoiseModel: None, or a denoiser ("default", a name, a checkpoint file) to denoise and compare: the
        denoised CT comes back as a new volume node (outputs.denoised_ct), inputVolumeNode is not changed.
        """
        self._prepare(model, scoreModel, denoiseModel)
        from CTQualityAssessmentLib import process

        def progress(fraction, stage):
            logging.info(f"CTQualityAssessment: {stage} {100 * fraction:.0f}%")

        return process.run(
            inputVolumeNode,
            segmentationNode,
            model,
            referenceVolumeNode,
            device=device,
            progress=progress,
            show=showResult,
            opacity=opacity,
            score_model=scoreModel,
            denoise_model=denoiseModel,
        )

    def batchAssess(
        self,
        root,
        outDir,
        workers=None,
        address=None,
        model="default",
        scoreModel="default",
        seriesModel="default",
        denoiseModel=None,
        device="auto",
        preview=True,
        wait=True,
    ):
        """Assess every CT series under the folder root into outDir with `ctqa batch` (on Ray): one output folder and
        report.html per series, index.csv and the group report.html. The same command as in a shell, run in its own
        process (CTQualityAssessmentLib.batch), so Slicer stays responsive and neither the work nor Ray runs in it.

        workers: series at once (default: as many as cores and memory allow); address: an existing Ray cluster;
        denoiseModel: None, or a denoiser to also denoise and assess each series. wait=True: returns the rows of
        index.csv (ctqa.batch_index.IndexRow; a failed series has status "failed" and its reason), with the progress
        in the log; InputError with the one-line reason for unusable arguments. wait=False: returns the running
        batch.BatchProcess (poll(), cancel(), rows()).
        """
        self._prepare(model, scoreModel, denoiseModel, batch=True)
        from CTQualityAssessmentLib import batch

        job = batch.BatchProcess.start(
            root,
            outDir,
            workers=workers,
            address=address,
            model=model,
            score_model=scoreModel,
            series_model=seriesModel,
            denoise_model=denoiseModel,
            device=device,
            preview=preview,
        )
        if not wait:
            return job
        return job.wait(
            log=lambda text: logging.info(f"CTQualityAssessment batch: {text}"),
            idle=slicer.app.processEvents if hasattr(slicer, "app") else None,
        )

    @staticmethod
    def showResults(job, inputVolumeNode, segmentationNode, opacity: float, show=True, chooseLayout=True):
        """Main thread: output nodes from the finished job. show: the quality map over the CT in every slice view,
        the per-slice plot and the table (per segment, else per slice) in the plot and table views; chooseLayout:
        first switch to the layout with both views (the widget does so once, so that a layout chosen later stays).
        """
        from CTQualityAssessmentLib.mrml import outputs_to_scene, show_overlay

        outputs = outputs_to_scene(job.result(), inputVolumeNode, segmentationNode)
        if not show:
            return outputs
        show_overlay(outputs.quality_map, inputVolumeNode, opacity)
        if chooseLayout:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        table = outputs.segment_table or outputs.slice_table
        applicationLogic = slicer.app.applicationLogic()
        selection = applicationLogic.GetSelectionNode()
        selection.SetActivePlotChartID(outputs.slice_chart.GetID())
        selection.SetActiveTableID(table.GetID())
        applicationLogic.PropagatePlotChartSelection()  # into the layout's plot views (no layout switch)
        applicationLogic.PropagateTableSelection()
        return outputs

    @staticmethod
    def modelDescription(settings: dict) -> str:
        """Name and training of the model a run used, from the card it recorded (no core import: works before the
        core's packages are installed, and shows a user's checkpoint as what it is)."""
        if not settings:
            return "-"
        if settings.get("model_kind") != "learned":
            return _("{name} (built-in: local noise, no training)").format(name=settings.get("model"))
        try:
            card = json.loads(Path(settings["model_card"]).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return _("{name} (model card not found)").format(name=settings.get("model"))
        training = card.get("training", {})
        return _("{name}: {variant}, {steps} training steps on {sources} sources; reproduce: {reproduce}").format(
            name=card.get("name", settings.get("model")),
            variant=training.get("variant", "?"),
            steps=training.get("step", "?"),
            sources=len(training.get("dataset_sources", [])),
            reproduce=card.get("reproduce", "see the model card"),
        )

    @staticmethod
    def globalScoreText(summary: dict) -> str:
        """The 0-4 quality score of a run's summary as the panel shows it: "2.7 ± 0.3 (0-4 LDCTIQAC2023, model
        NAME)", a second line with the worst 10 % of slices when more than one slice was scored; why it is missing
        otherwise; "-" without a summary or for summaries older than the score. Pure (no Qt, no core import)."""
        if not summary or "global_score" not in summary:
            return "-"
        score = summary.get("global_score")
        if not score:
            notes = summary.get("notes") or []
            if any(note.startswith(SCORE_NOT_INSTALLED) for note in notes):
                return _("n/a: no score model is installed")
            return _("n/a (not computed in this run)")
        value, spread = score.get("value"), score.get("sd")
        if value is None:
            return "-"
        text = f"{value:.1f}" + (f" ± {spread:.1f}" if spread is not None else "")
        details = [score.get("scale") or "0-4", _("model {name}").format(name=score.get("model") or "?")]
        if score.get("trained_to") == "surrogate":
            details.append(_("surrogate-trained, not radiologist-rated"))
        elif score.get("calibrated"):
            details.append(_("calibrated"))
        text += f" ({', '.join(details)})"
        for note in score.get("domain_notes") or ():
            text += "\n" + _("outside the model's domain: {note}").format(note=note)
        worst = score.get("worst_decile")
        if worst is not None and (score.get("slices_scored") or 0) > 1:
            text += "\n" + _("worst 10 % of slices: {worst:.1f}").format(worst=worst)
        return text

    @staticmethod
    def denoisedText(summary: dict) -> str:
        """Before → after figures of a run with Denoise and compare: "GNL 14.2 → 6.1 HU (-57 %), apparent quality
        0.62 → 0.85, score 2.1 → 3.0 (model NAME, supervised)", then the caveat on reading quality figures of a
        denoised image; "-" without a denoised block. Pure (no Qt, no core import)."""
        after = (summary or {}).get("denoised")
        if not after:
            return "-"

        def figure(value, fmt):
            return fmt.format(value) if value is not None else "-"

        def change(key, fmt, before=summary, now=after):
            return f"{figure(before.get(key), fmt)} → {figure(now.get(key), fmt)}"

        gnl = _("GNL {change} HU").format(change=change("gnl_hu", "{:.1f}"))
        if after.get("gnl_reduction_percent") is not None:
            gnl += f" ({-after['gnl_reduction_percent']:+.0f} %)"
        parts = [gnl, _("apparent quality {change}").format(change=change("global_quality_score", "{:.2f}"))]
        scores = (summary.get("global_score") or {}, after.get("score") or {})
        if scores[1].get("value") is not None:
            parts.append(_("score {change}").format(change=change("value", "{:.1f}", *scores)))
        model = _("model {name}, {method}").format(name=after.get("model", "?"), method=after.get("method", "?"))
        text = f"{', '.join(parts)} ({model})"
        caveat = after.get("quality_caveat")
        return f"{text}\n{caveat}" if caveat else text

    @staticmethod
    def seriesPanelRows(summary: dict) -> list[tuple[str, str, bool]]:
        """The Chest series panel of a run's summary: (value label name in the .ui, text, flagged) for every row,
        "-" where a figure is missing (no series block, an older summary, a null figure). flagged: the DICOM tags
        contradict a call. Pure (no Qt, no core import)."""
        series = summary.get("series") or {}

        def number(key, fmt):
            value = series.get(key)
            return fmt.format(value) if value is not None else "-"

        def call(result):
            label = result["label"].replace("_", " ")
            probability = result.get("probability")
            return f"{label} (p {probability:.2f})" if probability is not None else label

        def calls(key):
            """The learned call with the physics call beside it (without a learned model, the call is the physics
            one, shown once)."""
            learned, physics = series.get(key), (series.get("physics") or {}).get(key)
            parts = [call(learned)] if learned and (series.get("classifier") or not physics) else []
            if physics:
                parts.append(_("physics: {call}").format(call=call(physics)))
            return "; ".join(parts) or "-"

        applies, note = series.get("applies"), series.get("note")
        if applies is None:
            appliesText = "-"
        elif applies:  # a note says what is missing (no series model installed)
            appliesText = _("yes; {note}").format(note=note) if note else _("yes")
        else:
            appliesText = _("does not apply: {note}").format(note=note) if note else _("does not apply")

        classifier = series.get("classifier") or "-"
        if series.get("calls_from") == "physics":
            classifier = _("physics classifier of {model}").format(model=series.get("series_model") or "-")
        score = series.get("fitted_score")
        scoreText = "-"
        if score is not None:
            scoreText = _("{score:.1f} of 4 (a fitted estimate, not a radiologist's score)").format(score=score)

        kernelText = number("kernel_index", "{:.2f} cycles/mm")  # older summaries' kernel_index_per_mm: "-"
        if kernelText != "-" and series.get("kernel_index_patches"):
            kernelText += _(" ({patches} patches)").format(patches=series["kernel_index_patches"])

        acquisition = series.get("acquisition") or {}
        tagFormats = {
            "kernel": _("kernel {value}"),
            "ctdivol_mgy": _("CTDIvol {value:.1f} mGy"),
            "exposure_mas": "{value:g} mAs",
        }
        tags = [
            fmt.format(value=acquisition[key]) for key, fmt in tagFormats.items() if acquisition.get(key) is not None
        ]
        disagreements = series.get("tag_disagreements") or []
        if disagreements:
            disagreementText = "\n".join(disagreements)
        else:
            disagreementText = _("none") if acquisition else "-"

        return [
            ("seriesAppliesValueLabel", appliesText, False),
            ("seriesWindowValueLabel", calls("window"), False),
            ("seriesDoseValueLabel", calls("dose"), False),
            ("seriesClassifierValueLabel", classifier, False),
            ("seriesFittedScoreValueLabel", scoreText, False),
            ("seriesSnrValueLabel", number("snr", "{:.1f}"), False),
            ("seriesBrisqueValueLabel", number("brisque", "{:.1f}"), False),
            ("seriesDiameterValueLabel", number("water_equivalent_diameter_mm", "{:.0f} mm"), False),
            ("seriesKernelIndexValueLabel", kernelText, False),
            ("seriesSliceThicknessValueLabel", number("slice_thickness_mm", "{:.1f} mm"), False),
            ("seriesTagsValueLabel", ", ".join(tags) or "-", False),
            ("seriesDisagreementValueLabel", disagreementText, bool(disagreements)),
        ]

    @staticmethod
    def acquisitionDescription(volumeNode) -> str:
        """Kernel, CTDIvol and exposure of a volume loaded from DICOM (first instance), else "-"."""
        from CTQualityAssessmentLib.mrml import dicom_file_of

        path = dicom_file_of(volumeNode)
        if path is None:
            return "-"
        tags = {_("kernel"): "0018,1210", _("CTDIvol (mGy)"): "0018,9345", _("mAs"): "0018,1152"}
        values = {name: slicer.dicomDatabase.fileValue(path, tag) for name, tag in tags.items()}
        return ", ".join(f"{name} {value}" for name, value in values.items() if value) or "-"


#
# Test
#


class CTQualityAssessmentTest(ScriptedLoadableModuleTest):
    """Runs the Logic on the generated sample inside Slicer, through the same process runner the widget uses."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """What needs no installed package runs everywhere; the assessments need OpenCV only (zlib-ng is optional),
        and the testing mode installs nothing (dependencies.py): the Slicer running the test stays as it is."""
        self.setUp()
        self.test_widget_parameter_node_and_sample()
        if importlib.util.find_spec("cv2") is None:
            self.delayDisplay("OpenCV (cv2) is not installed: the assessment tests are skipped")
            return
        self.setUp()
        self.test_process_sample()
        self.test_checkpoint_file_is_refused()
        self.test_learned_model()
        self.test_denoise_and_compare()

    def test_widget_parameter_node_and_sample(self):
        """With Slicer's bundled packages alone: the module's widget is set up, its parameter node holds valid choices
        (the model's default is the median-SSIM map, which needs no PyTorch), and the sample loads and becomes the
        input."""
        self.delayDisplay("Widget, parameter node and sample (nothing installed)")
        widget = slicer.modules.ctqualityassessment.widgetRepresentation().self()
        parameters = CTQualityAssessmentLogic().getParameterNode()  # a singleton: a user's choices may be kept
        self.assertEqual(parameters.default("model").value, "median_ssim")
        for name, choices in CHOICES.items():
            self.assertIn(getattr(parameters, name), choices)
        ct = loadSample()
        self.assertEqual(ct.GetName(), SAMPLE_NAME)
        self.assertGreater(slicer.util.arrayFromVolume(ct).shape[0], 1)
        widget.initializeParameterNode()  # what entering the module does
        self.assertIs(widget._parameterNode.inputVolume, ct)
        self.assertTrue(widget.ui.applyButton.enabled)
        self.delayDisplay("Test passed")

    def _sample(self):
        ensure_dependencies()
        from ctqa.sample import write_sample

        paths = write_sample(Path(slicer.app.temporaryPath) / SAMPLE_NAME)
        ct = slicer.util.loadVolume(str(paths["ct"]))
        labels = slicer.util.loadLabelVolume(str(paths["labels"]))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, segmentation)
        return ct, segmentation

    def test_process_sample(self):
        import numpy as np

        self.delayDisplay("Assessing the sample with the physics model")
        ct, segmentation = self._sample()
        outputs = CTQualityAssessmentLogic().process(ct, segmentationNode=segmentation, model="physics")
        self.assertIn("global_score", outputs.summary)  # a block, or null with a note when no score model exists
        quality = slicer.util.arrayFromVolume(outputs.quality_map)
        self.assertEqual(quality.shape, slicer.util.arrayFromVolume(ct).shape)
        self.assertTrue(0.0 < np.nanmean(quality) < 1.0)
        self.assertEqual(outputs.slice_table.GetNumberOfRows(), quality.shape[0])
        self.assertEqual(outputs.segment_table.GetNumberOfRows(), 6)
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), outputs.quality_map.GetID())

        again = CTQualityAssessmentLogic().process(ct, segmentationNode=segmentation, model="physics")
        self.assertIs(again.quality_map, outputs.quality_map)
        self.delayDisplay("Test passed")

    def test_checkpoint_file_is_refused(self):
        from ctqa.errors import InputError

        ct = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "sample_ct")
        with self.assertRaises(InputError):
            CTQualityAssessmentLogic().process(ct, model="/nowhere/model.safetensors")

    def test_learned_model(self):
        """The bundled learned model, only where PyTorch is installed (the testing mode installs nothing)."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: learned-model check skipped")
            return
        ct = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "sample_ct")
        outputs = CTQualityAssessmentLogic().process(ct, model="default", device="cpu")
        self.assertEqual(outputs.summary["settings"]["model_kind"], "learned")

    def test_denoise_and_compare(self):
        """Denoise and compare with the installed denoiser, only where one is installed with PyTorch."""
        import importlib.util

        import numpy as np

        from ctqa.models.registry import default_model

        if importlib.util.find_spec("torch") is None or default_model("denoise") is None:
            self.delayDisplay("No denoiser or no PyTorch installed: Denoise and compare check skipped")
            return
        ct = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "sample_ct")
        before = slicer.util.arrayFromVolume(ct).copy()
        outputs = CTQualityAssessmentLogic().process(ct, model="physics", device="cpu", denoiseModel="default")
        self.assertIsNot(outputs.denoised_ct, ct)
        self.assertEqual(outputs.denoised_ct.GetName(), "sample_ct denoised")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(ct), before))  # the input is never changed
        self.assertIn("denoised", outputs.summary)
        self.delayDisplay("Test passed")
