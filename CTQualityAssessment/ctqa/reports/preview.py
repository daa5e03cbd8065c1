"""preview.png: representative axial slices with the quality map as a colour overlay, a colour bar, and the
per-slice plot (quality mean and 10th percentile; the 0-4 score on a second axis when a score model ran). Drawn
with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ctqa.colors import QUALITY_COLOR_ANCHORS

if TYPE_CHECKING:
    from ctqa.pipeline import Assessment

QUALITY_COLORMAP = LinearSegmentedColormap.from_list("quality", QUALITY_COLOR_ANCHORS)
DISPLAY_WINDOW_HU = (-160.0, 240.0)
OVERLAY_ALPHA = 0.55
MAX_PANELS = 4
MARKER_MAX_SLICES = 30


def representative_slices(slice_quality: np.ndarray, count: int = MAX_PANELS) -> list[int]:
    """Slice indices worth showing: evenly spaced ranks of mean quality from the worst to the best; sorted."""
    assessed = np.flatnonzero(np.isfinite(slice_quality))
    if assessed.size == 0:
        return [len(slice_quality) // 2]
    ranked = assessed[np.argsort(slice_quality[assessed], kind="stable")]
    ranks = np.round(np.linspace(0, len(ranked) - 1, min(count, len(ranked)))).astype(int)
    return sorted(int(ranked[rank]) for rank in ranks)


def _display_view(image: np.ndarray, direction: tuple[float, ...]) -> np.ndarray:
    """A (y, x) slice flipped so that rows run anterior to posterior and columns right to left (radiological)."""
    matrix = np.asarray(direction).reshape(3, 3)
    if matrix[1, 1] < 0:
        image = image[::-1, :]
    if matrix[0, 0] < 0:
        image = image[:, ::-1]
    return image


def _slice_view(volume, values: np.ndarray, index: int) -> np.ndarray:
    return _display_view(values[index], volume.direction)


def _show_ct(axes, volume, hu: np.ndarray, index: int) -> None:
    """Slice index of hu (z, y, x) on axes in grey, soft-tissue window, radiological view, true aspect."""
    aspect = volume.spacing[1] / volume.spacing[0]
    image = _slice_view(volume, hu, index)
    axes.imshow(image, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1], aspect=aspect)


def _noise_text(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "n/a"


def save_preview(assessment: Assessment, path: str | Path) -> None:
    """Write the preview PNG of an assessment: with a denoised CT (``assess --denoise``), a second row shows the same
    slices denoised (no overlay: the quality map overstates denoised images) and the plot its apparent quality."""
    volume, denoised = assessment.volume, assessment.denoised
    slice_quality = np.array([row.stats.quality_mean for row in assessment.slices], dtype=float)
    slice_p10 = np.array([row.stats.quality_p10 for row in assessment.slices], dtype=float)
    shown = representative_slices(slice_quality)
    positions = volume.slice_positions_mm()
    norm = Normalize(0.0, 1.0)
    aspect = volume.spacing[1] / volume.spacing[0]
    image_rows = 1 if denoised is None else 2

    figure = Figure(figsize=(3.2 * len(shown) + 1.2, 3.2 + 3.2 * image_rows), dpi=110, layout="constrained")
    grid = figure.add_gridspec(image_rows + 1, len(shown), height_ratios=(3.0,) * image_rows + (1.3,))
    image, overlay_axes = None, []
    for column, index in enumerate(shown):
        axes = figure.add_subplot(grid[0, column])
        overlay_axes.append(axes)
        _show_ct(axes, volume, volume.hu, index)
        quality = np.ma.masked_invalid(_slice_view(volume, assessment.quality, index))
        image = axes.imshow(quality, cmap=QUALITY_COLORMAP, norm=norm, alpha=OVERLAY_ALPHA, aspect=aspect)
        lung = _slice_view(volume, assessment.quality_map.lung, index)
        if lung.any():  # the lung mask's outline: inside it quality is read in the lung window
            axes.contour(lung, levels=[0.5], colors="white", linewidths=0.6)
        mean = slice_quality[index]
        score = "n/a" if not math.isfinite(mean) else f"{mean:.2f}"
        if math.isfinite(assessment.slices[index].score):
            score += f", score {assessment.slices[index].score:.1f}"
        axes.set_title(f"slice {index}  z = {positions[index]:.1f} mm\nmean quality {score}", fontsize=9)
        axes.set_axis_off()
        if denoised is not None:
            row = assessment.slices[index]
            after = figure.add_subplot(grid[1, column])
            _show_ct(after, volume, denoised.volume.hu, index)
            noise = f"{_noise_text(row.stats.noise_sd_hu)} → {_noise_text(row.noise_sd_hu_denoised)} HU"
            after.set_title(f"slice {index} denoised\nnoise SD {noise}", fontsize=9)
            after.set_axis_off()
    colorbar = figure.colorbar(image, ax=overlay_axes, location="right", shrink=0.9)
    colorbar.set_label("quality (1 = best; lung window inside the white outline)")
    colorbar.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0], labels=["0 poor", "0.25", "0.5", "0.75", "1 good"])

    plot = figure.add_subplot(grid[image_rows, :])
    indices = np.arange(len(slice_quality))
    marker = "o" if len(indices) <= MARKER_MAX_SLICES else None  # a line of one point is invisible
    plot.plot(indices, slice_quality, color="tab:blue", marker=marker, label="mean")
    plot.plot(indices, slice_p10, color="tab:orange", lw=1, marker=marker, ms=4, label="10th percentile")
    if denoised is not None:
        after_quality = [row.quality_mean_denoised for row in assessment.slices]
        plot.plot(indices, after_quality, color="tab:blue", ls="--", lw=1, label="mean denoised (overstated)")
    for index in shown:
        plot.axvline(index, color="0.6", lw=0.8, ls=":")
    plot.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    plot.set_xlim(-0.5, max(len(slice_quality) - 0.5, 0.5))
    plot.set_ylim(0.0, 1.0)
    plot.set_xlabel("slice index")
    plot.set_ylabel("quality")
    handles, labels = plot.get_legend_handles_labels()
    slice_score = np.array([row.score for row in assessment.slices], dtype=float)
    if np.isfinite(slice_score).any():  # a score model ran: its 0-4 scale on the right
        score_axis = plot.twinx()
        (line,) = score_axis.plot(indices, slice_score, color="tab:green", ls="--", marker=marker, ms=4)
        score_axis.set_ylim(0.0, 4.0)
        score_axis.set_ylabel("score (0-4)")
        handles.append(line)
        labels.append("score 0-4")
    plot.legend(handles, labels, loc="lower left", fontsize=8, ncols=len(labels))
    figure.suptitle(_title(assessment), fontsize=10, parse_math=False)  # a file name is text, not mathtext
    FigureCanvasAgg(figure).print_png(str(path))


def _title(assessment: Assessment) -> str:
    """The figure's title: file name, global figures (and the denoised GNL), model."""
    summary = assessment.summary
    figures = [
        f"global quality {summary.global_quality_score:.2f}"
        if math.isfinite(summary.global_quality_score)
        else "no body found"
    ]
    if summary.global_score is not None:
        spread = f" ± {summary.global_score.sd:.1f}" if math.isfinite(summary.global_score.sd) else ""
        outside = " (outside the model's domain: see summary notes)" if summary.global_score.domain_notes else ""
        figures.append(f"score {summary.global_score.value:.1f}{spread} / 4{outside}")
    if math.isfinite(summary.gnl_hu):
        gnl = f"GNL {summary.gnl_hu:.1f} HU"
        if summary.denoised is not None and math.isfinite(summary.denoised.gnl_hu):
            gnl += f" ({summary.denoised.gnl_hu:.1f} denoised by {summary.denoised.model})"
        figures.append(gnl)
    return f"{Path(assessment.volume.source).name}: {', '.join(figures)}  ({assessment.model})"
