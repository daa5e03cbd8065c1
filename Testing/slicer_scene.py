"""A headless MRML scene built by hand from the `slicer-core` wheel, as DESIGN.md describes.

Real Slicer creates these in its application start-up; here: a vtkMRMLScene, a vtkSlicerApplicationLogic with its
colour logic (default colour nodes), the Volumes and Segmentations module logics registered with SetModuleLogic,
one vtkMRMLSliceLogic per slice view (Red axial, Yellow sagittal, Green coronal; the orientation presets are
added to the scene's default slice node first), which creates the slice and slice composite nodes, and a data
I/O manager with a cache folder (reading a .mrb needs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}  # Slicer's default layout


@dataclass
class HeadlessScene:
    """A scene with the logics that Slicer's application would own (kept referenced here)."""

    scene: object
    app_logic: object
    slice_logics: dict = field(default_factory=dict)


def make_headless_scene(cache_dir: str) -> HeadlessScene:
    """A scene ready for the module's MRML code; cache_dir: a folder for the scene's file cache."""
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_dir)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkSlicerColorLogic()
    color_logic.SetMRMLApplicationLogic(app_logic)
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    app_logic.SetColorLogic(color_logic)
    for name, logic_class in (
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = logic_class()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    collection = vtk.vtkCollection()
    slice_logics = {}
    for name, orientation in SLICE_VIEWS.items():
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLApplicationLogic(app_logic)
        slice_logic.SetMRMLScene(scene)
        slice_node = slice_logic.AddSliceNode(name)
        slice_node.SetDefaultOrientation(orientation)
        slice_node.SetOrientation(orientation)
        collection.AddItem(slice_logic)
        slice_logics[name] = slice_logic
    app_logic.SetSliceLogics(collection)
    return HeadlessScene(scene, app_logic, slice_logics)
