"""MRML glue of the Slicer module: volume/segmentation nodes in, quality map, tables and plot nodes out.

Needs only MRML and `slicer.util` (the `slicer-core` wheel gives both outside Slicer), never Qt or `slicer.app`, so
pytest drives it against real nodes. `slicer` is imported inside the functions: the core imports without Slicer.

Geometry: MRML stores IJK -> RAS; CTVolume holds ITK's LPS origin/direction with spacing (x, y, z) mm. The two differ
by a flip of the first two physical axes. Output nodes copy the input's parent transform.

Output nodes carry the attribute ROLE_ATTRIBUTE (what they are) and a node reference INPUT_REFERENCE to the assessed
volume; a new run on the same volume updates those nodes in place and removes the ones it no longer produces.
Nodes without the attribute (the user's) are never modified or removed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ctqa.colors import QUALITY_COLOR_ANCHORS
from ctqa.errors import InputError
from ctqa.pipeline import Assessment, assess, resolve_model
from ctqa.results import ROI_COLUMNS, SLICE_COLUMNS, table_row, to_json
from ctqa.rois import Roi, roi_from_mask
from ctqa.slabs import ProgressCallback
from ctqa.volume import CTVolume

ROLE_ATTRIBUTE = "CTQualityAssessment.Role"
SUMMARY_ATTRIBUTE = "CTQualityAssessment.Summary"  # JSON of Assessment.summary, on the quality map node
INPUT_REFERENCE = "CTQualityAssessment.InputVolume"

QUALITY_MAP, NOISE_MAP, REFERENCE_SSIM_MAP = "QualityMap", "NoiseMap", "ReferenceSsimMap"
SLICE_TABLE, SLICE_MEAN_SERIES, SLICE_P10_SERIES, SLICE_CHART = "SliceTable", "SliceMean", "SliceP10", "SliceChart"
SEGMENT_TABLE = "SegmentTable"
QUALITY_COLORS = "QualityColors"  # one per scene, shared by all quality maps

DEFAULT_OPACITY = 0.5
DEVICES = ("auto", "cpu", "cuda")

COLOR_TABLE_SIZE = 256

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


@dataclass
class AssessmentInputs:
    """What the core needs, read from nodes on the main thread: the CT, optional reference and ROIs."""

    volume: CTVolume
    reference: CTVolume | None = None
    rois: list[Roi] | None = None


@dataclass
class OutputNodes:
    """The module's output nodes of one run (None where not produced)."""

    quality_map: object
    noise_map: object
    reference_ssim_map: object | None
    color_table: object
    slice_table: object
    slice_chart: object
    segment_table: object | None
    summary: dict


# --- geometry -------------------------------------------------------------------------------------------------


def ijk_to_ras(volume: CTVolume) -> np.ndarray:
    """4x4 IJK -> RAS matrix (mm) of a CTVolume's grid."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(volume.direction).reshape(3, 3) * np.asarray(volume.spacing)
    lps[:3, 3] = volume.origin
    return _LPS_FROM_RAS @ lps


def volume_from_node(node) -> CTVolume:
    """A CTVolume (HU float32 (z, y, x), LPS geometry) from a scalar volume node; InputError for other volumes."""
    import slicer

    image = node.GetImageData() if node is not None else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"{node.GetName() if node else 'input volume'}: volume node has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{node.GetName()}: {image.GetNumberOfScalarComponents()}-component volume, not a CT")
    lps = _LPS_FROM_RAS @ slicer.util.arrayFromVTKMatrix(_vtk_matrix(node.GetIJKToRASMatrix))
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    hu = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32)
    if not np.isfinite(hu).all():
        raise InputError(f"{node.GetName()}: {int(hu.size - np.isfinite(hu).sum())} NaN/inf voxels")
    return CTVolume(hu, tuple(spacing), tuple(lps[:3, 3]), tuple(direction.ravel()), node.GetName())


def update_volume_node(node, array: np.ndarray, volume: CTVolume) -> None:
    """Set a volume node's voxels to a (z, y, x) array and its IJK -> RAS to the grid of volume."""
    import slicer

    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume)))


def _vtk_matrix(getter):
    """A vtkMatrix4x4 filled by a MRML getter such as node.GetIJKToRASMatrix."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return matrix


# --- inputs ---------------------------------------------------------------------------------------------------


def rois_from_segmentation(segmentation_node, volume_node) -> list[Roi]:
    """One Roi per segment (value = segment index + 1, name = segment name) on the grid of volume_node."""
    import slicer

    scene = volume_node.GetScene()
    segmentation = segmentation_node.GetSegmentation()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__CTQualityAssessment_segment__")
    rois = []
    try:
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, [segment_id], labelmap, volume_node
            )
            if not exported:
                raise InputError(
                    f"{segmentation_node.GetName()}: cannot export segment {segment_id} to the volume grid"
                )
            mask = slicer.util.arrayFromVolume(labelmap) > 0
            rois.append(roi_from_mask(mask, index + 1, segmentation.GetNthSegment(index).GetName()))
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None:
            color = display.GetColorNode()
            if color is not None and not color.GetSingletonTag():
                scene.RemoveNode(color)  # a colour table the export made for the temporary labelmap
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
    return rois


def inputs_from_nodes(volume_node, segmentation_node=None, reference_volume_node=None) -> AssessmentInputs:
    """Read the CT, the optional reference CT and the segments of the optional segmentation from their nodes."""
    if volume_node is None:
        raise InputError("no input volume selected")
    volume = volume_from_node(volume_node)
    reference = volume_from_node(reference_volume_node) if reference_volume_node is not None else None
    rois = rois_from_segmentation(segmentation_node, volume_node) if segmentation_node is not None else None
    return AssessmentInputs(volume, reference, rois)


# --- outputs --------------------------------------------------------------------------------------------------


def own_output_nodes(volume_node) -> dict[str, object]:
    """The module's output nodes made for volume_node, by role."""
    scene = volume_node.GetScene()
    found = {}
    nodes = scene.GetNodes()
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        role = node.GetAttribute(ROLE_ATTRIBUTE)
        if role and node.GetNodeReferenceID(INPUT_REFERENCE) == volume_node.GetID():
            found[role] = node
    return found


def quality_color_table(scene):
    """The scene's quality colour table (viridis, 256 entries over quality 0..1), created on first use."""
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(ROLE_ATTRIBUTE) == QUALITY_COLORS:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "CTQualityAssessment quality (viridis)")
    node.SetAttribute(ROLE_ATTRIBUTE, QUALITY_COLORS)
    node.SetTypeToUser()
    node.SetNumberOfColors(COLOR_TABLE_SIZE)
    anchors = np.asarray(QUALITY_COLOR_ANCHORS)
    positions = np.linspace(0.0, 1.0, len(anchors))
    for index, t in enumerate(np.linspace(0.0, 1.0, COLOR_TABLE_SIZE)):
        red, green, blue = (np.interp(t, positions, anchors[:, channel]) for channel in range(3))
        node.SetColor(index, f"quality {t:.3f}", red, green, blue, 1.0)
    node.SetDescription("Quality 0 (poor, dark violet) to 1 (good, yellow); perceptually uniform, colour-blind safe")
    return node


def _own_node(scene, existing: dict, role: str, class_name: str, name: str, volume_node):
    """The module's node for role: reused from a previous run when there, else created and tagged."""
    node = existing.pop(role, None)
    if node is None or not node.IsA(class_name):
        if node is not None:
            scene.RemoveNode(node)
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetNodeReferenceID(INPUT_REFERENCE, volume_node.GetID())
    node.SetName(name)
    return node


def _map_node(scene, existing, role, name, array, assessment: Assessment, volume_node):
    """A scalar volume node holding a (z, y, x) map on the input grid, under the input's parent transform."""
    node = _own_node(scene, existing, role, "vtkMRMLScalarVolumeNode", name, volume_node)
    update_volume_node(node, array.astype(np.float32, copy=False), assessment.volume)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    return node


def _show_as_quality(node, color_table) -> None:
    """Display 0..1 through the colour table; voxels outside [0, 1] (NaN outside the body) are transparent."""
    import slicer

    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_table.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(0.0, 1.0)
    display.ApplyThresholdOn()
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
    legend.SetTitleText("Quality (1 = best)")
    legend.SetLabelFormat("%.2f")


def _show_as_noise(node) -> None:
    """Noise SD in HU on a fixed 0..50 HU grey window (NaN stays out of any automatic window)."""
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 50.0)


def fill_table(table_node, row_objects: list, columns: tuple[str, ...]) -> None:
    """Replace a table node's content by rows (results.SliceRow / RoiRow): str -> string, int -> int, else double."""
    import vtk

    rows = [table_row(row) for row in row_objects]
    table = vtk.vtkTable()
    for column in columns:
        values = [row[column] for row in rows]
        if values and all(isinstance(v, str) for v in values):
            array = vtk.vtkStringArray()
        elif values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(column)
        for value in values:
            array.InsertNextValue(math.nan if value is None else value)
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)


def _slice_chart(scene, existing, table, volume_node, base: str):
    """Line plot of per-slice mean and 10th-percentile quality against the slice index."""
    chart = _own_node(scene, existing, SLICE_CHART, "vtkMRMLPlotChartNode", f"{base} slice quality plot", volume_node)
    chart.RemoveAllPlotSeriesNodeIDs()
    for role, column, label, rgb in (
        (SLICE_MEAN_SERIES, "quality_mean", "mean", (0.12, 0.47, 0.71)),
        (SLICE_P10_SERIES, "quality_p10", "10th percentile", (1.0, 0.5, 0.05)),
    ):
        series = _own_node(scene, existing, role, "vtkMRMLPlotSeriesNode", f"{base} slice quality {label}", volume_node)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("slice")
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleSolid)
        series.SetColor(*rgb)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{base}: quality per slice")
    chart.SetXAxisTitle("slice index")
    chart.SetYAxisTitle("quality (1 = best)")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    return chart


def outputs_to_scene(assessment: Assessment, volume_node, segmentation_node=None) -> OutputNodes:
    """Create or update the module's output nodes for volume_node from an assessment (main thread only)."""
    scene = volume_node.GetScene()
    existing = own_output_nodes(volume_node)
    base = volume_node.GetName()
    color_table = quality_color_table(scene)

    quality = _map_node(
        scene, existing, QUALITY_MAP, f"{base} quality map", assessment.quality, assessment, volume_node
    )
    _show_as_quality(quality, color_table)
    summary = to_json(assessment.summary)
    quality.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary))
    noise_sd = assessment.noise.noise_sd
    noise = _map_node(scene, existing, NOISE_MAP, f"{base} noise SD (HU)", noise_sd, assessment, volume_node)
    _show_as_noise(noise)
    reference = None
    if assessment.reference_ssim is not None:
        reference = _map_node(
            scene,
            existing,
            REFERENCE_SSIM_MAP,
            f"{base} reference SSIM",
            assessment.reference_ssim,
            assessment,
            volume_node,
        )
        _show_as_quality(reference, color_table)

    slice_table = _own_node(scene, existing, SLICE_TABLE, "vtkMRMLTableNode", f"{base} slice quality", volume_node)
    fill_table(slice_table, assessment.slices, SLICE_COLUMNS)
    chart = _slice_chart(scene, existing, slice_table, volume_node, base)

    segment_table = None
    if assessment.rois is not None:
        name = f"{base} quality per segment" + (f" ({segmentation_node.GetName()})" if segmentation_node else "")
        segment_table = _own_node(scene, existing, SEGMENT_TABLE, "vtkMRMLTableNode", name, volume_node)
        fill_table(segment_table, assessment.rois, ROI_COLUMNS)

    for stale in existing.values():  # outputs of an earlier run that this run did not produce
        scene.RemoveNode(stale)
    return OutputNodes(quality, noise, reference, color_table, slice_table, chart, segment_table, summary)


def show_overlay(quality_map_node, background_volume_node, opacity: float = DEFAULT_OPACITY) -> None:
    """Show the CT as background and the quality map as foreground, with opacity 0..1, in every slice view."""
    scene = quality_map_node.GetScene()
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background_volume_node.GetID())
        composite.SetForegroundVolumeID(quality_map_node.GetID())
        composite.SetForegroundOpacity(opacity)


def set_overlay_opacity(opacity: float, scene) -> None:
    """Foreground opacity 0..1 in every slice view."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composites.GetItemAsObject(index).SetForegroundOpacity(opacity)


def process(
    volume_node,
    segmentation_node=None,
    model: str = "default",
    reference_volume_node=None,
    window_mm: float | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    show: bool = True,
    opacity: float = DEFAULT_OPACITY,
) -> OutputNodes:
    """Assess a CT volume node and put the results in its scene; returns the output nodes.

    Runs on the calling thread (the module's widget runs the core in a worker and calls outputs_to_scene itself).
    device: where learned models run (DEVICES); the physics model always runs on the CPU.
    show: put the quality map as foreground overlay in all slice views. Raises InputError for unusable input.
    """
    model = resolve_model(model)
    if device not in DEVICES:
        raise InputError(f"{device}: unknown device; choose one of {', '.join(DEVICES)}")
    inputs = inputs_from_nodes(volume_node, segmentation_node, reference_volume_node)
    options = {} if window_mm is None else {"window_mm": window_mm}
    assessment = assess(
        inputs.volume, inputs.reference, inputs.rois, model=model, device=device, progress=progress, **options
    )
    outputs = outputs_to_scene(assessment, volume_node, segmentation_node)
    if show:
        show_overlay(outputs.quality_map, volume_node, opacity)
    return outputs
