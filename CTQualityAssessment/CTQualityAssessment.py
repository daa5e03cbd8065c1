"""3D Slicer module CTQualityAssessment: per-voxel CT quality map overlay, per-slice plot, per-segment table.

The MRML work lives in CTQualityAssessmentLib.mrml (tested headless with slicer-core); this file holds the Slicer-only
parts: module description, sample data, dependency install, the widget (runs the core in a worker thread so the UI
stays responsive, with progress and cancel) and the self-test.
"""

import json
import logging
import os
import threading
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
POLL_MS = 100


def _models() -> list[str]:
    """Model selector entries: the models the core has, then the checkpoint-file entry."""
    try:
        from ctqa.models.registry import available_models
    except ImportError:  # dependencies not installed yet: the selector still shows the built-in choices
        return ["default", "physics", CHECKPOINT_CHOICE]
    return [*available_models("quality_map"), CHECKPOINT_CHOICE]


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
            "segment (table), global quality score and global noise level (GNL, HU). "
            "The physics model estimates local noise SD in HU from the image itself; no reference is needed. "
            "With a reference (full-dose) CT on the same grid an SSIM map is added."
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
    """Write the synthetic low-dose CT (dose falls from 100 % to 10 % along z) into the cache folder and load it."""
    ensure_dependencies()  # before importing the core, which needs OpenCV
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
    model: core model name or CHECKPOINT_CHOICE; checkpointPath: a user checkpoint file (.safetensors).
    device: where learned models run. opacity: overlay opacity 0..1. qualityMap: the last output map.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: Annotated[str, Choice(_models())] = "physics"
    checkpointPath: Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    qualityMap: vtkMRMLScalarVolumeNode


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
        self._job = None  # the running assessment: (thread, state dict)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTQualityAssessment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTQualityAssessmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancel()
        self.removeObservers()

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

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        """Enable Apply when there is an input, show the checkpoint path only for that choice, show the summary."""
        parameters = self._parameterNode
        running = self._job is not None
        self.ui.checkpointPathLineEdit.setVisible(parameters.model == CHECKPOINT_CHOICE)
        self.ui.applyButton.enabled = running or bool(parameters.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running assessment") if running else _("Assess the input volume")
        summary = {}
        if parameters.qualityMap:  # a map exists, so the core's dependencies are installed
            from CTQualityAssessmentLib.mrml import SUMMARY_ATTRIBUTE

            summary = json.loads(parameters.qualityMap.GetAttribute(SUMMARY_ATTRIBUTE) or "{}")
        self._showSummary(summary)

    def _showSummary(self, summary: dict) -> None:
        def text(key, fmt):
            value = summary.get(key)
            return fmt.format(value) if value is not None else "-"

        self.ui.scoreValueLabel.text = text("global_quality_score", "{:.3f}")
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
        fallback = summary.get("settings", {}).get("device_fallback")
        if fallback:
            slicer.util.showStatusMessage(fallback, 5000)

    def onOpacityChanged(self, value: float) -> None:
        from CTQualityAssessmentLib.mrml import set_overlay_opacity

        set_overlay_opacity(value, slicer.mrmlScene)

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to assess the CT."), waitCursor=True):
            ensure_dependencies()
            self._start()

    def _selectedModel(self) -> str:
        parameters = self._parameterNode
        return str(parameters.checkpointPath) if parameters.model == CHECKPOINT_CHOICE else parameters.model

    def _start(self) -> None:
        """Read the nodes (main thread), then run the core in a worker thread polled by a timer."""
        from ctqa.pipeline import resolve_model
        from CTQualityAssessmentLib.mrml import inputs_from_nodes

        parameters = self._parameterNode
        model = resolve_model(self._selectedModel())
        if model.is_learned:
            ensure_dependencies(learned=True)
        inputs = inputs_from_nodes(parameters.inputVolume, parameters.segmentation, parameters.referenceVolume)
        state = {
            "fraction": 0.0,
            "message": _("starting"),
            "cancel": False,
            "result": None,
            "error": None,
            "inputVolume": parameters.inputVolume,
            "segmentation": parameters.segmentation,
        }
        thread = threading.Thread(
            target=self.logic.runCore, args=(inputs, model, parameters.device, state), daemon=True
        )
        self._job = (thread, state)
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        thread.start()
        self._timer.start()
        self._updateGui()

    def _poll(self) -> None:
        thread, state = self._job
        self.ui.progressBar.value = int(100 * state["fraction"])
        self.ui.progressBar.format = f"{state['message']} %p%"
        if thread.is_alive():
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.hide()
        with slicer.util.tryWithErrorDisplay(_("Failed to assess the CT."), waitCursor=True):
            if state["error"] is not None and not isinstance(state["error"], CancelledError):
                raise state["error"]
            if state["result"] is not None:
                outputs = self.logic.showResults(
                    state["result"], state["inputVolume"], state["segmentation"], self._parameterNode.opacity
                )
                self._parameterNode.qualityMap = outputs.quality_map
        self._updateGui()

    def _cancel(self) -> None:
        """Ask the worker to stop at its next progress report and wait for it."""
        if self._job is None:
            return
        thread, state = self._job
        state["cancel"] = True
        self.ui.progressBar.format = _("cancelling…")
        slicer.app.processEvents()
        thread.join()
        self._poll()


#
# Logic
#


class CancelledError(Exception):
    """Raised from the core's progress callback when the user pressed Cancel."""


class CTQualityAssessmentLogic(ScriptedLoadableModuleLogic):
    """Usable from the Python console and batch scripts:

    outputs = CTQualityAssessmentLogic().process(getNode("CT"), segmentationNode=getNode("Segmentation"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CTQualityAssessmentParameterNode(super().getParameterNode())

    def process(
        self,
        inputVolumeNode,
        segmentationNode=None,
        model="default",
        referenceVolumeNode=None,
        device="auto",
        showResult=True,
        opacity=0.5,
    ):
        """Assess inputVolumeNode on the calling thread; returns the output nodes (CTQualityAssessmentLib.mrml)."""
        ensure_dependencies()  # before importing the core, which needs OpenCV
        from ctqa.pipeline import resolve_model
        from CTQualityAssessmentLib import mrml

        if resolve_model(model).is_learned:
            ensure_dependencies(learned=True)

        def progress(fraction, message):
            logging.info(f"CTQualityAssessment: {message} {100 * fraction:.0f}%")

        return mrml.process(
            inputVolumeNode,
            segmentationNode,
            model,
            referenceVolumeNode,
            device=device,
            progress=progress,
            show=showResult,
            opacity=opacity,
        )

    @staticmethod
    def runCore(inputs, model: str, device: str, state: dict) -> None:
        """Worker-thread body: the core assessment only (no MRML access); results and errors go into state."""
        from ctqa.pipeline import assess

        def progress(fraction, message):
            state["fraction"], state["message"] = fraction, message
            if state["cancel"]:
                raise CancelledError()

        try:
            state["result"] = assess(
                inputs.volume, inputs.reference, inputs.rois, model=model, device=device, progress=progress
            )
        except Exception as error:  # handed to the main thread, which shows it
            state["error"] = error

    @staticmethod
    def showResults(assessment, inputVolumeNode, segmentationNode, opacity: float):
        """Main thread: output nodes, overlay in the slice views and the per-slice plot in the layout."""
        from CTQualityAssessmentLib.mrml import outputs_to_scene, show_overlay

        outputs = outputs_to_scene(assessment, inputVolumeNode, segmentationNode)
        show_overlay(outputs.quality_map, inputVolumeNode, opacity)
        slicer.modules.plots.logic().ShowChartInLayout(outputs.slice_chart)
        if outputs.segment_table is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(outputs.segment_table.GetID())
        return outputs


#
# Test
#


class CTQualityAssessmentTest(ScriptedLoadableModuleTest):
    """Runs the Logic on the generated sample inside Slicer, the path the widget and batch scripts use."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_process_sample()
        self.test_checkpoint_file_is_refused()

    def test_process_sample(self):
        import numpy as np

        from ctqa.sample import write_sample

        self.delayDisplay("Generating the sample")
        paths = write_sample(Path(slicer.app.temporaryPath) / SAMPLE_NAME)
        ct = slicer.util.loadVolume(str(paths["ct"]))
        labels = slicer.util.loadLabelVolume(str(paths["labels"]))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, segmentation)

        self.delayDisplay("Assessing")
        outputs = CTQualityAssessmentLogic().process(ct, segmentationNode=segmentation)
        quality = slicer.util.arrayFromVolume(outputs.quality_map)
        self.assertEqual(quality.shape, slicer.util.arrayFromVolume(ct).shape)
        self.assertTrue(0.0 < np.nanmean(quality) < 1.0)
        self.assertEqual(outputs.slice_table.GetNumberOfRows(), quality.shape[0])
        self.assertEqual(outputs.segment_table.GetNumberOfRows(), 6)
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), outputs.quality_map.GetID())

        again = CTQualityAssessmentLogic().process(ct, segmentationNode=segmentation)
        self.assertIs(again.quality_map, outputs.quality_map)
        self.delayDisplay("Test passed")

    def test_checkpoint_file_is_refused(self):
        from ctqa.errors import InputError

        ct = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "sample_ct")
        with self.assertRaises(InputError):
            CTQualityAssessmentLogic().process(ct, model="/nowhere/model.safetensors")
