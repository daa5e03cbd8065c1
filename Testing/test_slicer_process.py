"""The module's process runner (CTQualityAssessmentLib.process) against the real `ctqa` CLI and real MRML nodes:
progress from the JSON stream, cancel mid-run, failures, the subject-hierarchy folder, a learned model out of
process."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="slicer-core wheel not installed (pip install slicer-core)")

import slicer  # noqa: E402
from slicer_scene import make_headless_scene  # noqa: E402

from ctqa.errors import InputError  # noqa: E402
from ctqa.sample import make_sample  # noqa: E402
from ctqa.volume import CTVolume  # noqa: E402
from CTQualityAssessmentLib import mrml, process  # noqa: E402


@pytest.fixture
def scene(tmp_path):
    return make_headless_scene(str(tmp_path / "cache")).scene


def volume_node(scene, volume: CTVolume, name="CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml.update_volume_node(node, volume.hu, volume)
    node.CreateDefaultDisplayNodes()
    return node


def _group_gone(group: int, within_s: float = 2.0) -> bool:
    """Whether os.killpg(group, 0) finds no process (a zombie, dead but not reaped yet, is given within_s)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_progress_arrives_in_order_and_the_log_has_timings(scene):
    ct = volume_node(scene, make_sample().low_dose)
    reports = []
    inputs = process.write_inputs(ct)
    job = process.AssessmentProcess.start(inputs, model="physics")
    assert job.wait(progress=lambda fraction, stage: reports.append((fraction, stage))) == process.DONE
    fractions = [fraction for fraction, _ in reports]
    assert len(reports) >= 2 and fractions == sorted(fractions)
    assert {"noise map", "writing outputs"} & {stage for _, stage in reports}
    assert job.log[0].text.startswith("started:") and job.log[-1].text.startswith("finished in")
    assert all(b.seconds >= a.seconds for a, b in zip(job.log, job.log[1:]))
    saved = job.result()
    assert saved.maps["quality_map"].shape == ct.GetImageData().GetDimensions()[::-1]
    job.cleanup()
    assert not inputs.folder.exists()


def test_cancel_mid_run_leaves_no_process_no_files_no_nodes(scene):
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:200, :256, :256]
    body = np.where((y - 128) ** 2 + (x - 128) ** 2 < 100**2, 40.0, -1000.0) + 0 * z
    big = CTVolume(body + rng.normal(0, 10, body.shape), (1, 1, 1))
    ct = volume_node(scene, big)
    nodes_before = scene.GetNumberOfNodes()
    job = process.AssessmentProcess.start(process.write_inputs(ct), model="default")  # learned: takes a while
    deadline = time.monotonic() + 120
    while job.poll() == process.RUNNING and job.fraction == 0.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == process.RUNNING, f"finished before it could be cancelled: {job.state} {job.error}"
    asked = time.monotonic()
    job.cancel()
    assert time.monotonic() - asked < 0.5  # never waits for the process (the GUI calls it)
    assert job.state == process.CANCELLED and job.log[-1].text == "cancelled"
    job.wait_ended()
    assert job._process.poll() is not None  # the launcher has exited ...
    if os.name == "posix":  # ... and its whole process group is gone (os.killpg(group, 0) finds no process)
        assert _group_gone(job._process.pid)
    job.cleanup()
    assert not job.inputs.folder.exists()
    assert scene.GetNumberOfNodes() == nodes_before and mrml.own_output_nodes(ct) == {}
    with pytest.raises(InputError, match="cancelled"):
        job.result()


def test_cli_refusal_comes_back_as_one_line(scene):
    ct = volume_node(scene, make_sample().low_dose)
    far = CTVolume(make_sample().reference.hu[:3], (1.5, 1.5, 2.5), origin=(9000.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"^far: reference does not overlap"):
        process.run(ct, reference_volume_node=volume_node(scene, far, "far"), model="physics")
    assert mrml.own_output_nodes(ct) == {}


def test_outputs_sit_in_one_subject_hierarchy_folder_reused_by_reruns(scene):
    ct = volume_node(scene, make_sample().low_dose)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    first = process.run(ct, model="physics")
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(first.quality_map))
    assert hierarchy.GetItemName(folder) == "CT quality assessment"
    assert hierarchy.GetItemParent(folder) == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct))
    for node in (first.noise_map, first.slice_table, first.slice_chart):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == folder
    second = process.run(ct, model="physics")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(second.quality_map)) == folder


def test_opacity_changes_only_the_modules_overlay(scene):
    ct = volume_node(scene, make_sample().low_dose)
    outputs = process.run(ct, model="physics", opacity=0.5)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    other = composites.GetItemAsObject(2)
    user = volume_node(scene, make_sample().reference, "user overlay")
    other.SetForegroundVolumeID(user.GetID())
    other.SetForegroundOpacity(0.9)
    mrml.set_overlay_opacity(0.2, scene)
    assert composites.GetItemAsObject(0).GetForegroundOpacity() == pytest.approx(0.2)
    assert composites.GetItemAsObject(0).GetForegroundVolumeID() == outputs.quality_map.GetID()
    assert other.GetForegroundOpacity() == pytest.approx(0.9)  # the user's overlay is left alone


def test_learned_model_runs_out_of_process(scene):
    ct = volume_node(scene, make_sample().low_dose)
    outputs = process.run(ct, model="n2q_default", device="cpu", show=False)
    assert outputs.summary["settings"]["model"] == "n2q_default"
    assert outputs.summary["settings"]["model_kind"] == "learned"
    quality = slicer.util.arrayFromVolume(outputs.quality_map)
    assert 0.0 < np.nanmean(quality) < 1.0


def test_an_8_bit_rendering_in_a_node_is_still_refused(scene):
    rendering = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "screenshot")
    values = np.clip((make_sample().low_dose.hu + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    slicer.util.updateVolumeFromArray(rendering, values)
    with pytest.raises(InputError, match=r"^screenshot: 8-bit image"):
        process.run(rendering, model="physics")


def test_dicom_tags_reach_the_series_panel_of_a_node_loaded_from_dicom(scene, shared_data):
    """A node loaded through the DICOM module is written as NRRD (no tags); the runner passes one of its DICOM files
    (--acquisition-from) so the series panel still shows the kernel and CTDIvol."""
    dicom_file = shared_data / "chest_sbu" / "A046441_19010101-23.dcm"
    from ctqa.io import read_volume

    ct = volume_node(scene, read_volume(dicom_file))
    inputs = process.write_inputs(ct)
    assert inputs.acquisition_dicom is None  # no DICOM database here: what dicom_file_of finds in Slicer
    inputs.acquisition_dicom = str(dicom_file)
    assert process.command_line(inputs, inputs.folder / "out")[-2:] == ["--acquisition-from", str(dicom_file)]
    job = process.AssessmentProcess.start(inputs, model="physics")
    assert job.wait() == process.DONE, job.error
    series = job.result().summary["series"]
    assert series["acquisition"]["kernel"] == "FC17" and series["acquisition"]["ctdivol_mgy"] == pytest.approx(2.8)
    job.cleanup()
