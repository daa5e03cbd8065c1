"""MRML glue of the Slicer module: volume nodes in (for process.py to write), a run's output folder out as nodes.

Needs only MRML and `slicer.util` (the `slicer-core` wheel gives both outside Slicer), never Qt or `slicer.app`, so
pytest drives it against real nodes. `slicer` is imported inside the functions: the core imports without Slicer.

Geometry: MRML stores IJK -> RAS; CTVolume holds ITK's LPS origin/direction with spacing (x, y, z) mm. The two differ
by a flip of the first two physical axes. Output nodes copy the input's parent transform.

Output nodes carry the attribute ROLE_ATTRIBUTE (what they are) and a node reference INPUT_REFERENCE to the assessed
volume; a new run on the same volume updates those nodes in place and removes the ones it no longer produces.
Nodes without the attribute (the user's) are never modified or removed. They sit in a subject-hierarchy folder
under the input's parent (its study when it came from DICOM). A run with denoising adds the denoised CT as a new
volume node ("<input> denoised", the input's window/level; the input node is never changed), its quality map, and
"after" series (dashed) beside the "before" ones in the per-slice plot; a later run without denoising removes the
map and the series but keeps the denoised CT.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ctqa.colors import QUALITY_COLOR_ANCHORS
from ctqa.errors import InputError
from ctqa.outputs import SavedOutputs
from ctqa.results import ROI_COLUMNS, SLICE_COLUMNS
from ctqa.volume import CTVolume, Grid

ROLE_ATTRIBUTE = "CTQualityAssessment.Role"
SUMMARY_ATTRIBUTE = "CTQualityAssessment.Summary"  # JSON of Assessment.summary, on the quality map node
INPUT_REFERENCE = "CTQualityAssessment.InputVolume"

QUALITY_MAP, NOISE_MAP, REFERENCE_SSIM_MAP = "QualityMap", "NoiseMap", "ReferenceSsimMap"
DENOISED_CT, QUALITY_MAP_DENOISED = "DenoisedCT", "QualityMapDenoised"
SLICE_TABLE, SLICE_MEAN_SERIES, SLICE_P10_SERIES, SLICE_CHART = "SliceTable", "SliceMean", "SliceP10", "SliceChart"
SLICE_SCORE_SERIES = "SliceScore"
SLICE_MEAN_DENOISED_SERIES, SLICE_P10_DENOISED_SERIES = "SliceMeanDenoised", "SliceP10Denoised"
SLICE_SCORE_DENOISED_SERIES = "SliceScoreDenoised"
SEGMENT_TABLE = "SegmentTable"
QUALITY_COLORS = "QualityColors"  # one per scene, shared by all quality maps, where Slicer's Viridis is missing
#: Slicer's Viridis table: the file Base/Logic/Resources/ColorFiles/Viridis.txt, which the Colors module's logic
#: (vtkSlicerColorLogic::FindDefaultColorFiles) loads as a node with this ID.
SLICER_VIRIDIS_ID = "vtkMRMLColorTableNodeFileViridis.txt"
OUTPUT_FOLDER_ATTRIBUTE = "CTQualityAssessment.OutputFolder"

DEFAULT_OPACITY = 0.5

#: What the per-slice plot can show: quantity -> its series (role, slices.csv column, legend, colour), the chart's
#: title after the volume name, the y axis title and range.
PLOT_QUALITY, PLOT_SCORE = "quality", "score"
SLICE_PLOTS = {
    PLOT_QUALITY: (
        (
            (SLICE_MEAN_SERIES, "quality_mean", "slice quality mean", (0.12, 0.47, 0.71)),
            (SLICE_P10_SERIES, "quality_p10", "slice quality 10th percentile", (1.0, 0.5, 0.05)),
        ),
        "quality per slice",
        "quality (1 = best)",
        (0.0, 1.0),
    ),
    PLOT_SCORE: (
        ((SLICE_SCORE_SERIES, "score", "slice score (0-4)", (0.17, 0.63, 0.17)),),
        "0-4 quality score per slice",
        "score (0-4 LDCTIQAC2023, 4 = best)",
        (0.0, 4.0),
    ),
}

#: The "after" series of a run with denoising, drawn dashed beside the "before" ones of SLICE_PLOTS, in their
#: colours: quantity -> (role, slices.csv column, legend, colour).
DENOISED_SLICE_PLOTS = {
    PLOT_QUALITY: (
        (SLICE_MEAN_DENOISED_SERIES, "quality_mean_denoised", "slice quality mean, denoised", (0.12, 0.47, 0.71)),
        (
            SLICE_P10_DENOISED_SERIES,
            "quality_p10_denoised",
            "slice quality 10th percentile, denoised",
            (1.0, 0.5, 0.05),
        ),
    ),
    PLOT_SCORE: ((SLICE_SCORE_DENOISED_SERIES, "score_denoised", "slice score (0-4), denoised", (0.17, 0.63, 0.17)),),
}

COLOR_TABLE_SIZE = 256

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


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
    denoised_ct: object | None = None
    quality_map_denoised: object | None = None


# --- geometry -------------------------------------------------------------------------------------------------


def ijk_to_ras(volume: CTVolume) -> np.ndarray:
    """4x4 IJK -> RAS matrix (mm) of a CTVolume's grid."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(volume.direction).reshape(3, 3) * np.asarray(volume.spacing)
    lps[:3, 3] = volume.origin
    return _LPS_FROM_RAS @ lps


def _to_world(node) -> np.ndarray:
    """4x4 matrix from node's own RAS frame to world RAS (its parent transforms); InputError (one line) for a
    non-linear transform, which a grid cannot hold."""
    import slicer

    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"{node.GetName()}: under the non-linear transform {parent.GetName()}: harden it first (Data module, "
            "right-click the node > Harden transform)"
        )
    return slicer.util.arrayFromVTKMatrix(_vtk_matrix(parent.GetMatrixTransformToWorld))


def to_frame_of(node, frame_node) -> np.ndarray:
    """4x4 matrix from node's RAS frame to frame_node's (identity under the same parent transform, or for None)."""
    if frame_node is None or node.GetParentTransformNode() is frame_node.GetParentTransformNode():
        return np.eye(4)
    return np.linalg.inv(_to_world(frame_node)) @ _to_world(node)


def check_same_frame(node, frame_node, what: str) -> None:
    """InputError (one line) when node is not in frame_node's frame: a file written in its own frame (a
    segmentation) would not line up with the input."""
    if not np.allclose(to_frame_of(node, frame_node), np.eye(4), atol=1e-6):
        raise InputError(
            f"{node.GetName()}: the {what} is under another transform than {frame_node.GetName()}: harden its "
            "transform first (Data module, right-click the node > Harden transform), or its figures would be taken "
            "in the wrong place"
        )


def grid_from_node(node, frame_node=None) -> Grid:
    """The LPS grid of a scalar volume node (no voxel copy), in its own frame or, with frame_node, in frame_node's
    (the transforms between them hardened: what a file must hold to line up with frame_node's by physical
    position). InputError for empty or multi-component volumes and for a non-linear transform between them."""
    import slicer

    image = node.GetImageData() if node is not None else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"{node.GetName() if node else 'input volume'}: volume node has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{node.GetName()}: {image.GetNumberOfScalarComponents()}-component volume, not a CT")
    ras = slicer.util.arrayFromVTKMatrix(_vtk_matrix(node.GetIJKToRASMatrix))
    ras = to_frame_of(node, frame_node) @ ras
    lps = _LPS_FROM_RAS @ ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    shape = tuple(image.GetDimensions()[::-1])
    return Grid(shape, tuple(spacing), tuple(lps[:3, 3]), tuple(direction.ravel()))


def volume_from_node(node) -> CTVolume:
    """A CTVolume (HU float32 (z, y, x), LPS geometry) from a scalar volume node; InputError for other volumes."""
    import slicer

    grid = grid_from_node(node)
    hu = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32)
    if not np.isfinite(hu).all():
        raise InputError(f"{node.GetName()}: {int(hu.size - np.isfinite(hu).sum())} NaN/inf voxels")
    return CTVolume(hu, grid.spacing, grid.origin, grid.direction, node.GetName())


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
    """Slicer's Viridis colour table; where the application has not loaded it (headless), an equal one of ours."""
    viridis = scene.GetNodeByID(SLICER_VIRIDIS_ID)
    if viridis is not None:
        return viridis
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


def remove_output_node(scene, node) -> None:
    """Remove one of the module's nodes with its display nodes (the colour legend is one) and storage node, which
    scene.RemoveNode leaves behind."""
    attached = []
    if node.IsA("vtkMRMLDisplayableNode"):
        attached += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        attached.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for extra in attached:
        if extra is not None and scene.IsNodePresent(extra):
            scene.RemoveNode(extra)


def _own_node(scene, existing: dict, role: str, class_name: str, name: str, volume_node):
    """The module's node for role: reused from a previous run when there, else created and tagged."""
    node = existing.pop(role, None)
    if node is None or not node.IsA(class_name):
        if node is not None:
            remove_output_node(scene, node)
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetNodeReferenceID(INPUT_REFERENCE, volume_node.GetID())
    node.SetName(name)
    return node


def _map_node(scene, existing, role, name, array, volume_node, dtype=np.float32):
    """A scalar volume node holding a (z, y, x) map (as dtype) on the input's grid, under the input's parent
    transform."""
    import slicer

    node = _own_node(scene, existing, role, "vtkMRMLScalarVolumeNode", name, volume_node)
    slicer.util.updateVolumeFromArray(node, array.astype(dtype, copy=False))
    node.SetIJKToRASMatrix(_vtk_matrix(volume_node.GetIJKToRASMatrix))
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


def _show_like_input(node, volume_node) -> None:
    """The input's window/level on the denoised CT, so that before and after are seen at one setting (automatic
    where the input has no display node)."""
    source = volume_node.GetDisplayNode()
    if source is None:
        return
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(source.GetWindow(), source.GetLevel())


def fill_table(table_node, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Replace a table node's content by rows ({column: value}): str -> string (None: ""), int -> int, else double
    (None: NaN)."""
    import vtk

    table = vtk.vtkTable()
    for column in columns:
        values = [row[column] for row in rows]
        known = [v for v in values if v is not None]
        missing = math.nan
        if known and all(isinstance(v, str) for v in known):
            array, missing = vtk.vtkStringArray(), ""
        elif values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(column)
        for value in values:
            array.InsertNextValue(missing if value is None else value)
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)


def _plot_series(scene, existing, table, volume_node, base: str, rows, dashed: bool) -> None:
    """The plot series nodes of rows ((role, column, legend, colour), ...) over the slice table, line only."""
    for role, column, label, rgb in rows:
        series = _own_node(scene, existing, role, "vtkMRMLPlotSeriesNode", f"{base} {label}", volume_node)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("slice")
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleDash if dashed else series.LineStyleSolid)
        series.SetColor(*rgb)


def _slice_chart(scene, existing, table, volume_node, base: str, with_score: bool, denoised: set[str]):
    """Line plot against the slice index of per-slice mean and 10th-percentile quality; the series of the 0-4 score
    are made too when the run has one (with_score), for show_slice_plot to switch to; denoised: the quantities
    (PLOT_QUALITY, PLOT_SCORE) the run also has of a denoised CT, whose "after" series are made beside."""
    chart = _own_node(scene, existing, SLICE_CHART, "vtkMRMLPlotChartNode", f"{base} slice quality plot", volume_node)
    for quantity, (series_rows, _, _, _) in SLICE_PLOTS.items():
        if quantity == PLOT_SCORE and not with_score:
            continue
        _plot_series(scene, existing, table, volume_node, base, series_rows, dashed=False)
        if quantity in denoised:
            _plot_series(scene, existing, table, volume_node, base, DENOISED_SLICE_PLOTS[quantity], dashed=True)
    chart.SetXAxisTitle("slice index")
    chart.SetYAxisRangeAuto(False)
    return chart


def _plot_quantity(chart, series_by_role: dict, quantity: str, base: str) -> None:
    """Show one quantity of SLICE_PLOTS on the chart: its series (and their "after" series when the run denoised),
    title, y axis title and range."""
    series_rows, title, axis_title, (low, high) = SLICE_PLOTS[quantity]
    chart.RemoveAllPlotSeriesNodeIDs()
    after = [row[0] for row in DENOISED_SLICE_PLOTS[quantity] if row[0] in series_by_role]
    for role in [row[0] for row in series_rows] + after:
        chart.AddAndObservePlotSeriesNodeID(series_by_role[role].GetID())
    chart.SetTitle(f"{base}: {title}" + (" before / after denoising" if after else ""))
    chart.SetYAxisTitle(axis_title)
    chart.SetYAxisRange(low, high)


def show_slice_plot(volume_node, quantity: str = PLOT_QUALITY):
    """Switch the per-slice plot of volume_node's last run to quantity: PLOT_QUALITY (quality mean and 10th
    percentile, 0..1) or PLOT_SCORE (the 0-4 score); returns the chart node. InputError when the run has no such
    plot (no run yet, or no score model ran); ValueError for an unknown quantity."""
    if quantity not in SLICE_PLOTS:
        raise ValueError(f"unknown plot {quantity!r}; choose one of {', '.join(SLICE_PLOTS)}")
    nodes = own_output_nodes(volume_node)
    roles = [row[0] for row in SLICE_PLOTS[quantity][0]]
    if SLICE_CHART not in nodes or any(role not in nodes for role in roles):
        what = "0-4 score" if quantity == PLOT_SCORE else "per-slice plot"
        raise InputError(f"{volume_node.GetName()}: the last assessment has no {what}")
    _plot_quantity(nodes[SLICE_CHART], nodes, quantity, volume_node.GetName())
    return nodes[SLICE_CHART]


def _hierarchy_item(hierarchy, node) -> int:
    """The subject-hierarchy item of a data node; created under the scene where none exists (Slicer's plugins
    create items as nodes are added; a plain MRML scene, as in scripts and tests, has none)."""
    item = hierarchy.GetItemByDataNode(node)
    return item if item else hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


def _output_folder(scene, volume_node, base: str) -> int:
    """The subject-hierarchy folder of the module's outputs for volume_node, under the input's parent item."""
    import slicer
    import vtk

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(_hierarchy_item(hierarchy, volume_node))
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(parent, children)
    for index in range(children.GetNumberOfIds()):
        item = children.GetId(index)
        if hierarchy.GetItemAttribute(item, OUTPUT_FOLDER_ATTRIBUTE) == volume_node.GetID():
            return item
    folder = hierarchy.CreateFolderItem(parent, f"{base} quality assessment")
    hierarchy.SetItemAttribute(folder, OUTPUT_FOLDER_ATTRIBUTE, volume_node.GetID())
    return folder


def outputs_to_scene(saved: SavedOutputs, volume_node, segmentation_node=None) -> OutputNodes:
    """Create or update the module's output nodes for volume_node from a completed run (main thread only)."""
    import slicer

    scene = volume_node.GetScene()
    existing = own_output_nodes(volume_node)
    base = volume_node.GetName()
    color_table = quality_color_table(scene)

    quality = _map_node(scene, existing, QUALITY_MAP, f"{base} quality map", saved.maps["quality_map"], volume_node)
    _show_as_quality(quality, color_table)
    quality.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(saved.summary))
    noise = _map_node(scene, existing, NOISE_MAP, f"{base} noise SD (HU)", saved.maps["noise_map"], volume_node)
    _show_as_noise(noise)
    reference = None
    if "reference_ssim_map" in saved.maps:
        name = f"{base} reference SSIM"
        reference = _map_node(scene, existing, REFERENCE_SSIM_MAP, name, saved.maps["reference_ssim_map"], volume_node)
        _show_as_quality(reference, color_table)

    denoised_ct = quality_denoised = None
    if "denoised_ct" in saved.maps:
        ct = saved.maps["denoised_ct"]
        denoised_ct = _map_node(scene, existing, DENOISED_CT, f"{base} denoised", ct, volume_node, ct.dtype)
        _show_like_input(denoised_ct, volume_node)
        name = f"{base} denoised quality map"
        quality_denoised = _map_node(
            scene, existing, QUALITY_MAP_DENOISED, name, saved.maps["quality_map_denoised"], volume_node
        )
        _show_as_quality(quality_denoised, color_table)

    slice_table = _own_node(scene, existing, SLICE_TABLE, "vtkMRMLTableNode", f"{base} slice quality", volume_node)
    fill_table(slice_table, saved.slices, SLICE_COLUMNS)
    with_score = any(row.get("score") is not None for row in saved.slices)
    denoised = set()
    if any(row.get("quality_mean_denoised") is not None for row in saved.slices):
        denoised.add(PLOT_QUALITY)
    if any(row.get("score_denoised") is not None for row in saved.slices):
        denoised.add(PLOT_SCORE)
    chart = _slice_chart(scene, existing, slice_table, volume_node, base, with_score, denoised)

    segment_table = None
    if saved.rois is not None:
        name = f"{base} quality per segment" + (f" ({segmentation_node.GetName()})" if segmentation_node else "")
        segment_table = _own_node(scene, existing, SEGMENT_TABLE, "vtkMRMLTableNode", name, volume_node)
        fill_table(segment_table, saved.rois, ROI_COLUMNS)

    existing.pop(DENOISED_CT, None)  # a CT the user may work on: kept (and updated by the next denoising run)
    for stale in existing.values():  # outputs of an earlier run that this run did not produce
        remove_output_node(scene, stale)
    _plot_quantity(chart, own_output_nodes(volume_node), PLOT_QUALITY, base)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = _output_folder(scene, volume_node, base)
    for node in (quality, noise, reference, denoised_ct, quality_denoised, slice_table, chart, segment_table):
        if node is not None:
            hierarchy.SetItemParent(_hierarchy_item(hierarchy, node), folder)
    return OutputNodes(
        quality,
        noise,
        reference,
        color_table,
        slice_table,
        chart,
        segment_table,
        saved.summary,
        denoised_ct,
        quality_denoised,
    )


def show_overlay(quality_map_node, background_volume_node, opacity: float = DEFAULT_OPACITY) -> None:
    """Show the CT as background and the quality map as foreground, with opacity 0..1, in every slice view."""
    scene = quality_map_node.GetScene()
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background_volume_node.GetID())
        composite.SetForegroundVolumeID(quality_map_node.GetID())
        composite.SetForegroundOpacity(opacity)


def show_output_overlay(volume_node, role: str, opacity: float = DEFAULT_OPACITY):
    """Show the output map of role (QUALITY_MAP, NOISE_MAP, ...) of volume_node's last run in every slice view: the
    denoised CT's quality map over the denoised CT, the others over volume_node. Returns the map node, None when the
    run has no such map."""
    nodes = own_output_nodes(volume_node)
    node = nodes.get(role)
    if node is None:
        return None
    background = nodes.get(DENOISED_CT) if role == QUALITY_MAP_DENOISED else None
    show_overlay(node, background or volume_node, opacity)
    return node


def set_overlay_opacity(opacity: float, scene) -> None:
    """Foreground opacity 0..1 in the slice views whose foreground is one of the module's maps (no other view)."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        foreground = scene.GetNodeByID(composite.GetForegroundVolumeID() or "")
        if foreground is not None and foreground.GetAttribute(ROLE_ATTRIBUTE):
            composite.SetForegroundOpacity(opacity)


def dicom_file_of(volume_node) -> str | None:
    """A DICOM file (the first instance) of the series a volume node was loaded from, through Slicer's DICOM
    database; None for volumes not loaded from DICOM or when the file is gone."""
    import slicer

    uids = volume_node.GetAttribute("DICOM.instanceUIDs") if volume_node is not None else None
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None or not database.isOpen:
        return None
    path = database.fileForInstance(uids.split()[0])
    return path if path and os.path.isfile(path) else None
