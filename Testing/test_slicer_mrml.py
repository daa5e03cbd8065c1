"""The module's MRML glue (CTQualityAssessmentLib.mrml) and its process runner against real MRML nodes from the
`slicer-core` wheel: every run here is a real `ctqa assess` process.

Skipped when slicer-core is not installed; the TotalSegmentator test also skips without ../shared/data.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")

import slicer  # noqa: E402
from slicer_scene import make_headless_scene  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from ctqa.errors import InputError  # noqa: E402
from ctqa.io import write_map  # noqa: E402
from ctqa.models.registry import default_model  # noqa: E402
from ctqa.pipeline import assess, resolve_model  # noqa: E402
from ctqa.results import ROI_COLUMNS, SLICE_COLUMNS  # noqa: E402
from ctqa.sample import make_sample  # noqa: E402
from ctqa.volume import CTVolume  # noqa: E402
from CTQualityAssessmentLib import mrml, process  # noqa: E402

TOTALSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg"


@pytest.fixture
def headless(tmp_path):
    return make_headless_scene(str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sample():
    return make_sample()


def _read_volume_file(scene, path, class_name="vtkMRMLScalarVolumeNode", name=None):
    """A volume node read from a file by Slicer's own volume storage node (as File > Add Data does)."""
    node = scene.AddNewNodeByClass(class_name, name or Path(path).name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetCenterImage(False)
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def _volume_node(scene, volume: CTVolume, name="CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml.update_volume_node(node, volume.hu, volume)
    node.CreateDefaultDisplayNodes()
    return node


def _ijk_to_ras(node) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(mrml._vtk_matrix(node.GetIJKToRASMatrix))


def _table_columns(table_node) -> dict[str, list]:
    table = table_node.GetTable()
    columns = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        columns[column.GetName()] = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
    return columns


def _role_count(scene, role) -> int:
    nodes = scene.GetNodes()
    return sum(
        nodes.GetItemAsObject(i).GetAttribute(mrml.ROLE_ATTRIBUTE) == role for i in range(nodes.GetNumberOfItems())
    )


def test_geometry_matches_slicer_reading_the_same_file(headless, tmp_path):
    """LPS (ITK) <-> RAS (MRML): an oblique grid written by the core and read by Slicer gives our matrix.

    (Right-handed: Slicer's reader reverses the slice order of left-handed grids, same voxels in space.)
    """
    angle = np.deg2rad(20.0)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    direction = np.diag([-1.0, -1.0, 1.0]) @ tilt  # a 180 degree turn about z, then a 20 degree gantry tilt
    volume = CTVolume(
        np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 60.0,
        spacing=(0.7, 0.8, 2.5),
        origin=(12.0, -30.0, 40.0),
        direction=tuple(direction.ravel()),
    )
    write_map(volume.hu, volume, tmp_path / "oblique.nrrd")
    node = _read_volume_file(headless.scene, tmp_path / "oblique.nrrd")
    np.testing.assert_allclose(_ijk_to_ras(node), mrml.ijk_to_ras(volume), atol=1e-5)

    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


def test_quality_map_node(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    outputs = process.run(ct, model="physics")

    quality = outputs.quality_map
    assert quality.IsA("vtkMRMLScalarVolumeNode") and quality.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.QUALITY_MAP
    np.testing.assert_allclose(_ijk_to_ras(quality), _ijk_to_ras(ct), atol=1e-9)
    expected = assess(sample.low_dose, model="physics").quality
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(quality), expected)  # NaN outside the body, too

    display = quality.GetDisplayNode()
    color = scene.GetNodeByID(display.GetColorNodeID())
    assert color is outputs.color_table and color.GetNumberOfColors() == mrml.COLOR_TABLE_SIZE
    luminance = [np.dot(color.GetLookupTable().GetTableValue(i)[:3], (0.2126, 0.7152, 0.0722)) for i in (0, 255)]
    assert luminance[0] < 0.2 < 0.8 < luminance[1]  # poor = dark, good = bright
    assert display.GetApplyThreshold() and (display.GetLowerThreshold(), display.GetUpperThreshold()) == (0.0, 1.0)
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(quality)
    assert legend is not None and legend.GetTitleText() == "Quality (1 = best)"
    assert outputs.summary["global_quality_score"] == pytest.approx(np.nanmean(expected), rel=1e-6)
    assert outputs.noise_map.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.NOISE_MAP
    assert outputs.reference_ssim_map is None and outputs.segment_table is None


def test_slice_views_show_the_overlay(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    outputs = process.run(ct, opacity=0.4, model="physics")
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    for index in range(3):
        composite = composites.GetItemAsObject(index)
        assert composite.GetForegroundVolumeID() == outputs.quality_map.GetID()
        assert composite.GetBackgroundVolumeID() == ct.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    mrml.set_overlay_opacity(0.8, scene)
    assert composites.GetItemAsObject(0).GetForegroundOpacity() == pytest.approx(0.8)


def _render_red_view(headless) -> np.ndarray:
    """RGBA (rows, columns, 4) of the Red slice view as Slicer's slice logic blends it."""
    logic = headless.slice_logics["Red"]
    logic.GetSliceNode().SetDimensions(160, 160, 1)
    logic.FitSliceToAll()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    columns, rows, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1).copy()


def test_nan_outside_body_is_transparent_in_the_rendered_slice(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    ct.GetDisplayNode().AutoWindowLevelOff()
    ct.GetDisplayNode().SetWindowLevelMinMax(-1200.0, 400.0)  # air is dark grey, not black
    outputs = process.run(ct, opacity=1.0, model="physics")
    with_overlay = _render_red_view(headless)
    mrml.set_overlay_opacity(0.0, scene)
    background_only = _render_red_view(headless)

    corner, centre = (slice(0, 8), slice(0, 8)), (slice(76, 84), slice(76, 84))
    assert background_only[corner][..., :3].mean() > 20  # air drawn grey: a transparent overlay would show it
    np.testing.assert_array_equal(with_overlay[corner], background_only[corner])
    assert np.abs(with_overlay[centre].astype(int) - background_only[centre]).mean() > 10
    assert outputs.quality_map.GetID() == scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode").GetForegroundVolumeID()


def test_slice_table_and_plot(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    outputs = process.run(ct, model="physics")
    table = outputs.slice_table
    assert table.GetNumberOfRows() == sample.low_dose.shape[0]
    columns = _table_columns(table)
    assert tuple(columns) == SLICE_COLUMNS
    assert columns["slice"] == list(range(sample.low_dose.shape[0]))
    np.testing.assert_allclose(columns["z_mm"], sample.low_dose.slice_positions_mm())
    assert columns["quality_mean"][0] > columns["quality_mean"][-1]  # dose falls from the first to the last slice

    chart = outputs.slice_chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    for index in range(2):
        series = chart.GetNthPlotSeriesNode(index)
        assert series.GetTableNodeID() == table.GetID() and series.GetXColumnName() == "slice"
    assert chart.GetNthPlotSeriesNode(0).GetYColumnName() == "quality_mean"


def test_reference_volume_gives_an_ssim_map(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    reference = _volume_node(scene, sample.reference, "reference")
    outputs = process.run(ct, reference_volume_node=reference, model="physics")
    assert outputs.reference_ssim_map.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.REFERENCE_SSIM_MAP
    np.testing.assert_allclose(_ijk_to_ras(outputs.reference_ssim_map), _ijk_to_ras(ct))
    assert 0.0 < outputs.summary["reference_ssim_mean_body"] < 1.0


@pytest.mark.skipif(not TOTALSEG.is_dir(), reason=f"{TOTALSEG} absent (shared test data is not in a user's clone)")
def test_segment_table_from_totalsegmentator_masks(headless):
    scene = headless.scene
    ct = _read_volume_file(scene, TOTALSEG / "example_ct_sm.nii.gz")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator fast")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    expected = {}
    for path in sorted((TOTALSEG / "example_seg_fast").glob("*.nii.gz")):
        name = path.name.removesuffix(".nii.gz")
        expected[name] = int((sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0).sum())
        if expected[name] == 0:  # importing an empty labelmap adds no segment: add the empty segment by hand
            segmentation.GetSegmentation().AddEmptySegment(name, name)
            continue
        labelmap = _read_volume_file(scene, path, "vtkMRMLLabelMapVolumeNode", name)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segments = segmentation.GetSegmentation()
        segments.GetNthSegment(segments.GetNumberOfSegments() - 1).SetName(name)  # not the colour table's label name
        scene.RemoveNode(labelmap.GetDisplayNode())
        scene.RemoveNode(labelmap)
    assert 0 in expected.values() and len(expected) == segmentation.GetSegmentation().GetNumberOfSegments()
    color_tables = scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")

    outputs = process.run(ct, segmentation, model="physics")

    columns = _table_columns(outputs.segment_table)
    assert tuple(columns) == ROI_COLUMNS
    assert dict(zip(columns["name"], columns["voxels"])) == expected
    assert columns["label"] == list(range(1, len(expected) + 1))
    statuses = dict(zip(columns["name"], columns["status"]))
    assert all(statuses[name] == ("empty" if count == 0 else "ok") for name, count in expected.items())
    liver = columns["name"].index("liver")
    assert 0.0 < columns["quality_mean"][liver] <= 1.0 and 20.0 < columns["hu_mean"][liver] < 80.0
    # the temporary labelmap and its colour table are gone; only the quality colour table was added
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == color_tables + 1


def test_scene_written_to_mrb_reads_back_the_same_map(headless, sample, tmp_path):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose, "sample CT")
    outputs = process.run(ct, model="physics")
    bundle = tmp_path / "assessment.mrb"
    assert scene.WriteToMRB(str(bundle))

    restored = make_headless_scene(str(tmp_path / "cache2")).scene
    assert restored.ReadFromMRB(str(bundle))
    quality = restored.GetFirstNodeByName("sample CT quality map")
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(quality), slicer.util.arrayFromVolume(outputs.quality_map)
    )
    np.testing.assert_allclose(_ijk_to_ras(quality), _ijk_to_ras(ct))
    assert quality.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.QUALITY_MAP
    restored_ct = restored.GetFirstNodeByName("sample CT")
    assert mrml.own_output_nodes(restored_ct)[mrml.QUALITY_MAP] is quality
    color = restored.GetNodeByID(quality.GetDisplayNode().GetColorNodeID())
    assert color.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.QUALITY_COLORS and color.GetNumberOfColors() == 256
    table = restored.GetFirstNodeByName("sample CT slice quality")
    assert table.GetNumberOfRows() == sample.low_dose.shape[0]


def test_rerun_replaces_own_nodes_and_leaves_user_nodes(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "CT slice quality")  # same name as an output
    user_volume = _volume_node(scene, sample.reference, "CT quality map")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation.GetSegmentation().AddEmptySegment("liver", "liver")

    first = process.run(ct, segmentation, model="physics")
    node_count = scene.GetNumberOfNodes()
    second = process.run(ct, segmentation, model="physics")
    assert scene.GetNumberOfNodes() == node_count
    assert second.quality_map is first.quality_map and second.slice_table is first.slice_table
    assert _role_count(scene, mrml.QUALITY_MAP) == 1 and _role_count(scene, mrml.QUALITY_COLORS) == 1

    third = process.run(ct, model="physics")  # no segmentation this time: the old segment table goes
    assert third.segment_table is None and _role_count(scene, mrml.SEGMENT_TABLE) == 0
    assert scene.GetNodeByID(first.segment_table.GetID()) is None

    other = _volume_node(scene, sample.reference, "other CT")
    process.run(other, model="physics")  # outputs of another volume are its own
    assert _role_count(scene, mrml.QUALITY_MAP) == 2
    assert mrml.own_output_nodes(ct)[mrml.QUALITY_MAP] is first.quality_map

    for user_node in (user_table, user_volume, segmentation, ct):
        assert scene.GetNodeByID(user_node.GetID()) is user_node and user_node.GetAttribute(mrml.ROLE_ATTRIBUTE) is None
    assert user_table.GetNumberOfRows() == 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(user_volume), sample.reference.hu)


def test_models_and_devices(headless, sample):
    ct = _volume_node(headless.scene, sample.low_dose)
    assert resolve_model("physics").name == "physics"
    assert resolve_model("default").name == default_model("quality_map")
    with pytest.raises(InputError, match="no such model card"):
        process.run(ct, model="/models/my_n2q.safetensors")
    with pytest.raises(InputError, match="unknown model"):
        process.run(ct, model="n2q-large")
    with pytest.raises(InputError, match="unknown device"):
        process.run(ct, device="tpu")
    assert mrml.own_output_nodes(ct) == {}  # nothing was made before the refusal


def test_unusable_input_nodes(headless, sample):
    scene = headless.scene
    with pytest.raises(InputError, match="no input volume"):
        process.run(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        process.run(empty)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(colour, np.zeros((2, 3, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="3-component"):
        process.run(colour)
    ct = _volume_node(scene, sample.low_dose)
    far = CTVolume(sample.reference.hu[:4], sample.reference.spacing, origin=(5000.0, 0.0, 0.0))
    elsewhere = _volume_node(scene, far, "reference 5 m away")
    with pytest.raises(InputError, match="reference does not overlap"):
        process.run(ct, reference_volume_node=elsewhere, model="physics")


def _orphan_display_nodes(scene) -> list[str]:
    """Display nodes that no displayable node in the scene references."""
    referenced = set()
    nodes = scene.GetNodes()
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.IsA("vtkMRMLDisplayableNode"):
            referenced |= {node.GetNthDisplayNodeID(k) for k in range(node.GetNumberOfDisplayNodes())}
    return [
        nodes.GetItemAsObject(i).GetID()
        for i in range(nodes.GetNumberOfItems())
        if nodes.GetItemAsObject(i).IsA("vtkMRMLDisplayNode") and nodes.GetItemAsObject(i).GetID() not in referenced
    ]


def test_removed_outputs_take_their_display_and_legend_nodes_along(headless, sample):
    """Issue 24: a rerun without --reference removes the SSIM map and its display and colour-legend nodes."""
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    reference = _volume_node(scene, sample.reference, "full dose")
    first = process.run(ct, model="physics", reference_volume_node=reference, score_model="none")
    assert first.reference_ssim_map is not None and _orphan_display_nodes(scene) == []
    display_ids = [first.reference_ssim_map.GetNthDisplayNodeID(k)
                   for k in range(first.reference_ssim_map.GetNumberOfDisplayNodes())]
    process.run(ct, model="physics", score_model="none")  # no reference: the SSIM map is stale
    assert scene.GetNodeByID(first.reference_ssim_map.GetID()) is None
    assert all(scene.GetNodeByID(node_id) is None for node_id in display_ids)
    assert _orphan_display_nodes(scene) == []


def _linear_transform(scene, shift_ras, name="registration"):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    matrix = np.eye(4)
    matrix[:3, 3] = shift_ras
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return transform


def test_a_reference_aligned_by_a_transform_is_compared_where_it_is_shown(headless, sample):
    """Issue 24: the reference's parent transform is hardened into its file (relative to the input's frame)."""
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    aligned = _volume_node(scene, sample.reference, "full dose")
    baseline = process.run(ct, model="physics", reference_volume_node=aligned, score_model="none", show=False)
    expected = slicer.util.arrayFromVolume(baseline.reference_ssim_map).copy()

    moved = _volume_node(scene, sample.reference, "full dose, registered")
    origin = list(moved.GetOrigin())
    moved.SetOrigin(origin[0] + 30.0, origin[1] - 12.0, origin[2])  # stored 30 mm off ...
    moved.SetAndObserveTransformNodeID(_linear_transform(scene, (-30.0, 12.0, 0.0)).GetID())  # ... moved back
    registered = process.run(ct, model="physics", reference_volume_node=moved, score_model="none", show=False)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(registered.reference_ssim_map), expected, atol=1e-5)

    ct.SetAndObserveTransformNodeID(moved.GetTransformNodeID())  # both under the same transform: one frame
    same = process.run(ct, model="physics", reference_volume_node=moved, score_model="none", show=False)
    assert np.nanmean(slicer.util.arrayFromVolume(same.reference_ssim_map)) < np.nanmean(expected) - 0.05


def test_a_segmentation_under_another_transform_is_refused_in_one_line(headless, sample):
    scene = headless.scene
    ct = _volume_node(scene, sample.low_dose)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation.GetSegmentation().AddEmptySegment("liver", "liver")
    segmentation.SetAndObserveTransformNodeID(_linear_transform(scene, (5.0, 0.0, 0.0)).GetID())
    with pytest.raises(InputError, match="organs: the segmentation is under another transform than CT"):
        process.run(ct, segmentation, model="physics", score_model="none", show=False)
    ct.SetAndObserveTransformNodeID(segmentation.GetTransformNodeID())  # the same transform: accepted
    assert process.run(ct, segmentation, model="physics", score_model="none", show=False).segment_table is not None
