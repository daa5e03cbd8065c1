"""Render Resources/Screenshots/overlay.png headlessly: the quality overlay as Slicer's slice logic blends it.

Needs the slicer-core wheel (no Slicer application, no OpenGL): the generated sample CT is assessed through
CTQualityAssessmentLib.mrml, the Red (axial) and Green (coronal) slice logics blend CT + quality map exactly as the
slice views do, and matplotlib adds titles and the colour legend. Run from the repository root:

    python Scripts/render_overlay_screenshot.py [OUTPUT.png]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from vtk.util.numpy_support import vtk_to_numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))  # the headless scene helper the MRML tests use
sys.path.insert(0, str(ROOT / "CTQualityAssessment"))  # the Slicer glue, as Slicer puts it on sys.path

from slicer_scene import make_headless_scene  # noqa: E402

from ctqa.colors import QUALITY_COLOR_ANCHORS  # noqa: E402
from ctqa.sample import SPACING, make_sample  # noqa: E402
from CTQualityAssessmentLib import mrml, process  # noqa: E402

PIXEL_MM = 0.75  # size of one rendered pixel


def render_view(slice_logic, width_mm: float, height_mm: float) -> np.ndarray:
    """RGBA (rows, columns, 4) uint8 of a slice view fitted to the volume, top row first."""
    slice_logic.GetSliceNode().SetDimensions(int(width_mm / PIXEL_MM), int(height_mm / PIXEL_MM), 1)
    slice_logic.FitSliceToAll()
    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    columns, rows, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)[::-1]


def main(output: Path) -> None:
    sample = make_sample()
    with tempfile.TemporaryDirectory() as cache:
        headless = make_headless_scene(cache)
        ct = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sample CT")
        mrml.update_volume_node(ct, sample.low_dose.hu, sample.low_dose)
        ct.CreateDefaultDisplayNodes()
        ct.GetDisplayNode().AutoWindowLevelOff()
        ct.GetDisplayNode().SetWindowLevel(400.0, 40.0)  # soft-tissue window, HU
        outputs = process.run(ct, opacity=0.6)  # the module's path: a real `ctqa assess` process
        nz, ny, nx = sample.low_dose.shape
        width, depth, height = nx * SPACING[0], ny * SPACING[1], nz * SPACING[2]
        headless.slice_logics["Red"].GetSliceNode().SetSliceOffset(0.0)
        axial = render_view(headless.slice_logics["Red"], width, depth)
        coronal = render_view(headless.slice_logics["Green"], width, height)
        score = outputs.summary["global_quality_score"]

    figure = Figure(figsize=(7.0, 7.6), dpi=110, layout="constrained")
    grid = figure.add_gridspec(2, 1, height_ratios=(depth, 2.0 * height))
    for row, (image, title) in enumerate(
        (
            (axial, "axial (Red view), middle slice: dose 55 %"),
            (coronal, "coronal (Green view): dose 10 % at the top (superior) to 100 % at the bottom"),
        )
    ):
        axes = figure.add_subplot(grid[row])
        axes.imshow(image[..., :3])
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    colormap = LinearSegmentedColormap.from_list("quality", QUALITY_COLOR_ANCHORS)
    legend = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormap)
    colorbar = figure.colorbar(legend, ax=figure.axes, location="right", shrink=0.8)
    colorbar.set_label("quality (1 = best); transparent outside the body")
    colorbar.set_ticks([0.0, 0.5, 1.0], labels=["0 poor", "0.5", "1 good"])
    model = outputs.summary["settings"]["model"]
    figure.suptitle(
        f"Overlay as Slicer draws it (slicer-core, process runner), {model}: global quality {score:.2f}",
        fontsize=10,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(output))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "Resources" / "Screenshots" / "overlay.png")
