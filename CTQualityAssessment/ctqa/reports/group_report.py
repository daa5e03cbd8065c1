"""report.html of a batch (`ctqa batch`): counts, distributions of GNL, score and quality by scanner, kernel and
protocol, outliers against the whole batch, failed series, and a sortable table of every series linking to its own
report. Built from the index rows only (batch_index.IndexRow); one self-contained file (reports/html.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ctqa import __version__
from ctqa.batch_index import ASSESSED, FAILED, REPORT_NAME, REUSED, IndexRow
from ctqa.outputs import write_text_atomically
from ctqa.pipeline import DEFINITIONS
from ctqa.reports.html import (
    NOT_AVAILABLE,
    Cell,
    Column,
    KeyFigure,
    definitions,
    escape,
    figure_data_uri,
    image,
    is_number,
    key_figures,
    number_cell,
    page,
    table,
)

UNKNOWN = "unknown"
#: Groups drawn per panel (the most frequent); the rest are pooled as "other".
MAX_GROUPS = 12
LABEL_CHARACTERS = 32
#: Tukey's fences: this many interquartile ranges beyond the quartiles, over at least MIN_FENCE_VALUES values.
FENCE_IQR = 1.5
MIN_FENCE_VALUES = 4
GROUPINGS = (("scanner", "scanner"), ("kernel", "kernel"), ("protocol", "protocol"))


@dataclass(frozen=True)
class Measure:
    """A figure of IndexRow compared across the batch: field, name in text, axis label, format, unit and the fixed
    axis range of its scale (None: from the data, starting at 0)."""

    field: str
    name: str
    axis: str
    spec: str
    unit: str
    scale: tuple[float, float] | None
    missing: str


MEASURES = (
    Measure("gnl_hu", "GNL", "GNL (HU; lower = less noise)", ".1f", " HU", None, "no series reports a GNL"),
    Measure(
        "score",
        "score",
        "score (0-4, 4 = best)",
        ".2f",
        "",
        (0.0, 4.0),
        "no series has a 0-4 score (no score model ran)",
    ),
    Measure(
        "quality_mean",
        "quality mean",
        "quality mean (0-1, 1 = best)",
        ".3f",
        "",
        (0.0, 1.0),
        "no series reports a global quality",
    ),
)


@dataclass(frozen=True)
class Fences:
    """Tukey's fences of a measure over the batch's series that were not failed (values: how many)."""

    measure: Measure
    values: int
    low: float
    high: float


@dataclass(frozen=True)
class Outlier:
    """A series whose measure lies outside the batch's fences, with the one-line reason."""

    row: IndexRow
    measure: Measure
    reason: str


def _value(row: IndexRow, measure: Measure) -> float | None:
    value = getattr(row, measure.field)
    return float(value) if is_number(value) else None


def _measured(rows: list[IndexRow], measure: Measure) -> list[tuple[IndexRow, float]]:
    """(row, value) of the series that were not failed and have the measure."""
    pairs = [(row, _value(row, measure)) for row in rows if row.status != FAILED]
    return [(row, value) for row, value in pairs if value is not None]


def batch_fences(rows: list[IndexRow], measure: Measure) -> Fences | None:
    """Q1 - 1.5 IQR and Q3 + 1.5 IQR of the measure over the batch; None with fewer than 4 values."""
    values = np.array([value for _, value in _measured(rows, measure)])
    if values.size < MIN_FENCE_VALUES:
        return None
    first, third = np.percentile(values, [25.0, 75.0])
    spread = FENCE_IQR * (third - first)
    return Fences(measure, int(values.size), float(first - spread), float(third + spread))


def find_outliers(rows: list[IndexRow], fences: list[Fences]) -> list[Outlier]:
    """Each (series, measure) outside the measure's fences; reason e.g. "GNL 48.1 HU above the batch's upper fence
    31.2 HU"."""
    found = []
    for fence in fences:
        measure = fence.measure
        for row, value in _measured(rows, measure):
            if fence.low <= value <= fence.high:
                continue
            side, limit = ("above", "upper") if value > fence.high else ("below", "lower")
            bound = fence.high if value > fence.high else fence.low
            reason = (
                f"{measure.name} {value:{measure.spec}}{measure.unit} {side} the batch's {limit} fence "
                f"{bound:{measure.spec}}{measure.unit}"
            )
            found.append(Outlier(row, measure, reason))
    return found


def short_label(text: str, width: int = LABEL_CHARACTERS) -> str:
    """A group name shortened to width characters, keeping its start and end ("SIEMENS Somatom…Force 3mm")."""
    if len(text) <= width:
        return text
    tail = width // 3
    return text[: width - tail - 1].rstrip() + "…" + text[-tail:].lstrip()


def _groups(pairs: list[tuple[IndexRow, float]], field: str) -> list[tuple[str, list[tuple[IndexRow, float]]]]:
    """Pairs grouped by a text field ("unknown" when empty), largest group first; beyond MAX_GROUPS pooled."""
    groups: dict[str, list[tuple[IndexRow, float]]] = {}
    for row, value in pairs:
        groups.setdefault(getattr(row, field).strip() or UNKNOWN, []).append((row, value))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0].lower()))
    if len(ordered) <= MAX_GROUPS:
        return ordered
    kept, rest = ordered[: MAX_GROUPS - 1], ordered[MAX_GROUPS - 1 :]
    pooled = [pair for _, members in rest for pair in members]
    return kept + [(f"other ({len(rest)} groups)", pooled)]


def _draw_box(axes, position: float, values: np.ndarray) -> None:
    """A horizontal box: quartiles, median, whiskers to the furthest values within 1.5 IQR of the quartiles."""
    first, median, third = np.percentile(values, [25.0, 50.0, 75.0])
    reach = FENCE_IQR * (third - first)
    inside = values[(values >= first - reach) & (values <= third + reach)]
    half = 0.3
    axes.add_patch(Rectangle((first, position - half), third - first, 2 * half, fc="0.92", ec="0.35", zorder=1))
    axes.plot([median, median], [position - half, position + half], color="0.1", lw=1.6, zorder=2)
    for end, start in ((inside.min(), first), (inside.max(), third)):
        axes.plot([end, start], [position, position], color="0.35", lw=1.0, zorder=1)
        axes.plot([end, end], [position - half / 2, position + half / 2], color="0.35", lw=1.0, zorder=1)


def distribution_figure(rows: list[IndexRow], measure: Measure, fences: Fences | None, flagged: set[str]) -> Figure:
    """One measure by scanner, kernel and protocol (three panels, one dot per series; boxes for groups of >= 4;
    outliers red; the batch's fences dotted). rows must hold at least one value of the measure."""
    pairs = _measured(rows, measure)
    panels = [(title, _groups(pairs, field)) for field, title in GROUPINGS]
    heights = [len(groups) + 1.2 for _, groups in panels]
    figure = Figure(figsize=(9.5, 1.4 + 0.3 * sum(heights)), dpi=100, layout="constrained")
    axes_list = figure.subplots(len(panels), 1, sharex=True, height_ratios=heights)
    jitter = np.random.default_rng(0)
    values = np.array([value for _, value in pairs])
    for axes, (title, groups) in zip(axes_list, panels):
        for position, (_, members) in enumerate(groups):
            group_values = np.array([value for _, value in members])
            if group_values.size >= MIN_FENCE_VALUES:
                _draw_box(axes, position, group_values)
            spread = jitter.uniform(-0.18, 0.18, group_values.size) if group_values.size > 1 else np.zeros(1)
            red = np.array([row.id in flagged for row, _ in members])
            axes.scatter(group_values[~red], position + spread[~red], s=22, color="tab:blue", alpha=0.75, zorder=3)
            axes.scatter(group_values[red], position + spread[red], s=34, color="tab:red", ec="black", zorder=4)
        axes.set_yticks(  # DICOM text as it is: no mathtext for "$" in a protocol name
            range(len(groups)),
            [f"{short_label(name)} (n={len(members)})" for name, members in groups],
            fontsize=8,
            parse_math=False,
        )
        axes.set_ylim(len(groups) - 0.4, -0.6)
        axes.set_title(f"by {title}", fontsize=9, loc="left")
        axes.grid(axis="x", color="0.9")
        if fences is not None:
            for bound in (fences.low, fences.high):
                axes.axvline(bound, color="0.4", ls=":", lw=1.0)
    if measure.scale is not None:
        axes_list[0].set_xlim(measure.scale[0] - 0.02 * measure.scale[1], measure.scale[1] * 1.02)
    else:
        axes_list[0].set_xlim(0.0, max(float(values.max()), fences.high if fences else 0.0) * 1.08 or 1.0)
    axes_list[-1].set_xlabel(measure.axis)
    return figure


def _distribution(rows: list[IndexRow], measure: Measure, fences: Fences | None, flagged: set[str]) -> str:
    count = len(_measured(rows, measure))
    if count == 0:
        return f"<h3>{escape(measure.axis)}</h3>\n<p>No values to plot: {escape(measure.missing)}.</p>"
    fence_text = (
        f"dotted lines: the batch's fences {fences.low:{measure.spec}} and {fences.high:{measure.spec}}{measure.unit}"
        if fences is not None
        else f"no fences (fewer than {MIN_FENCE_VALUES} values)"
    )
    caption = (
        f"{measure.axis} of the {count} series that report it (failed ones left out), grouped by scanner, "
        f'kernel and protocol (DICOM tags; "{UNKNOWN}" where a series has none; long names shortened in the '
        f"middle; n = series). One dot per series, red: outliers; boxes: quartiles and median of groups of "
        f"{MIN_FENCE_VALUES} or more; {fence_text}."
    )
    alt = f"Dot and box plots of {measure.axis} per series, in three panels: by scanner, by kernel, by protocol"
    return f"<h3>{escape(measure.axis)}</h3>\n" + image(
        figure_data_uri(distribution_figure(rows, measure, fences, flagged)), alt, caption
    )


def _link(row: IndexRow) -> str:
    """The relative link to a series report ("" when none); quoted so that it stays a path inside the batch."""
    return quote(row.report, safe="/") if row.report else ""


def _id_cell(row: IndexRow) -> Cell:
    tooltip = row.input + (f"\nSeriesInstanceUID {row.series_uid}" if row.series_uid else "")
    return Cell(row.id, href=_link(row), tooltip=tooltip)


def _median_text(rows: list[IndexRow], measure: Measure) -> str:
    values = [value for _, value in _measured(rows, measure)]
    return f"{float(np.median(values)):{measure.spec}}{measure.unit}" if values else NOT_AVAILABLE


def _header(folder: Path, rows: list[IndexRow]) -> str:
    counts = {status: sum(row.status == status for row in rows) for status in (ASSESSED, REUSED, FAILED)}
    worker_time = sum(row.runtime_s for row in rows if is_number(row.runtime_s) and row.status == ASSESSED)
    gnl, score, quality = MEASURES
    boxes = [
        KeyFigure("Series", str(len(rows)), "rows of index.csv"),
        KeyFigure("Assessed", str(counts[ASSESSED]), f"by this run ({worker_time:.0f} s of worker time)"),
        KeyFigure("Reused", str(counts[REUSED]), "from an earlier run"),
        KeyFigure("Failed", str(counts[FAILED]), "see Failed series"),
        KeyFigure("Median GNL", _median_text(rows, gnl), "lower = less noise"),
        KeyFigure("Median score", _median_text(rows, score), "0-4, 4 = best"),
        KeyFigure("Median quality", _median_text(rows, quality), "mean over body, 1 = best"),
    ]
    return (
        f'<header class="top"><h1>CT image quality of a batch: {escape(folder.resolve().name)}</h1>\n'
        f'<p class="meta">{escape(folder.resolve())}; each series id links to its own report.</p>\n'
        f"{key_figures(boxes)}</header>"
    )


def _outliers(rows: list[IndexRow], fences: list[Fences], outliers: list[Outlier]) -> str:
    rule = (
        f"<p>A series is flagged when a figure lies outside Tukey's fences of the whole batch: below Q1 &minus; "
        f"{FENCE_IQR:g} IQR or above Q3 + {FENCE_IQR:g} IQR of the series that were not failed, per measure, when "
        f"{MIN_FENCE_VALUES} or more series report it.</p>"
    )
    limits = [
        f"{fence.measure.name}: {fence.low:{fence.measure.spec}} to {fence.high:{fence.measure.spec}}"
        f"{fence.measure.unit} ({fence.values} series)"
        for fence in fences
    ]
    skipped = [measure.name for measure in MEASURES if all(fence.measure is not measure for fence in fences)]
    lines = [f"Fences: {'; '.join(limits)}." if limits else ""]
    if skipped:
        lines.append(f"Too few values for fences: {', '.join(skipped)}.")
    summary = "".join(f"<p class='muted'>{escape(line)}</p>" for line in lines if line)
    if not outliers:
        return rule + summary + "<p>No outliers.</p>"
    columns = [Column("id"), Column("measure"), Column("value", True), Column("reason")]
    cells = [
        [
            _id_cell(outlier.row),
            Cell(outlier.measure.name),
            number_cell(getattr(outlier.row, outlier.measure.field), outlier.measure.spec, outlier.measure.unit),
            Cell(outlier.reason),
        ]
        for outlier in outliers
    ]
    return rule + summary + table(columns, cells, sortable=True, table_id="outliers")


def _failed(rows: list[IndexRow]) -> str:
    failed = [row for row in rows if row.status == FAILED]
    if not failed:
        return "<p>No series failed.</p>"
    columns = [Column("id"), Column("input"), Column("reason")]
    cells = [[_id_cell(row), Cell(row.input), Cell(row.reason or "(no reason recorded)")] for row in failed]
    return table(columns, cells, table_id="failed")


SERIES_COLUMNS = [
    Column("id", tooltip="the series' folder; links to its report"),
    Column("status"),
    Column("scanner", clip=True),
    Column("kernel", clip=True),
    Column("protocol", clip=True),
    Column("window", tooltip="window class of the series panel"),
    Column("dose", tooltip="dose class of the series panel"),
    Column("GNL (HU)", True, "global noise level, lower = less noise"),
    Column("quality mean", True, "0-1, 1 = best"),
    Column("quality p10", True, "10th percentile, 1 = best"),
    Column("score", True, "0-4, 4 = best"),
    Column("score SD", True),
    Column("runtime (s)", True),
    Column("shape (z x y x x)"),
    Column("spacing (mm)"),
    Column("checks", clip=True),
    Column("reason", clip=True),
]


def _series_row(row: IndexRow, flagged: set[tuple[str, str]]) -> list[Cell]:
    def figure(field: str, spec: str) -> Cell:
        return number_cell(getattr(row, field), spec, flag=(row.id, field) in flagged)

    return [
        _id_cell(row),
        Cell(row.status),
        Cell(row.scanner),
        Cell(row.kernel),
        Cell(row.protocol),
        Cell(row.window_class),
        Cell(row.dose_class),
        figure("gnl_hu", ".1f"),
        figure("quality_mean", ".3f"),
        figure("quality_p10", ".3f"),
        figure("score", ".2f"),
        figure("score_sd", ".2f"),
        figure("runtime_s", ".1f"),
        Cell(row.shape_zyx),
        Cell(row.spacing_mm_xyz),
        Cell(row.checks),
        Cell(row.reason),
    ]


def _definitions() -> str:
    return definitions(
        {
            "status": "assessed: by this run; reused: complete outputs of an earlier run with the same input and "
            "options; failed: not assessed (reason: why)",
            "GNL (HU)": DEFINITIONS["gnl_hu"],
            "quality mean, quality p10": f"{DEFINITIONS['global_quality_score']}; its 10th percentile. What the "
            "quality map measures depends on the model: see each series report",
            "score, score SD": "0-4 image quality score (LDCTIQAC2023 scale: 0 bad, 1 poor, 2 fair, 3 good, "
            "4 excellent), mean over the slices with body; SD: mean spread of the slices' predicted score "
            "distributions (a slice's uncertainty). Each series report says what the model was fitted to (the "
            "bundled model: a surrogate of SSIM, not radiologists' ratings)",
            "window, dose": "the series panel's calls: window class (lung = sharp lung-kernel reconstruction, "
            "soft_tissue = smooth kernel) and dose class (low = noise well above what a routine exposure gives for "
            "the size and thickness)",
            "scanner, kernel, protocol": "DICOM Manufacturer and ManufacturerModelName, ConvolutionKernel, "
            f'ProtocolName (else SeriesDescription); "{UNKNOWN}" in the plots when missing (e.g. volume files)',
            "checks": "the series' notes on its input (missing tags, scaling, resampling)",
            "outlier": f"outside Tukey's fences (Q1 - {FENCE_IQR:g} IQR, Q3 + {FENCE_IQR:g} IQR) of the batch's "
            "series that were not failed, per measure",
        }
    )


def group_page(folder: Path, rows: list[IndexRow]) -> str:
    """The whole group report page of a batch folder."""
    fences = [fence for fence in (batch_fences(rows, measure) for measure in MEASURES) if fence is not None]
    outliers = find_outliers(rows, fences)
    flagged_cells = {(outlier.row.id, outlier.measure.field) for outlier in outliers}
    distributions = "\n".join(
        _distribution(
            rows,
            measure,
            next((fence for fence in fences if fence.measure is measure), None),
            {outlier.row.id for outlier in outliers if outlier.measure is measure},
        )
        for measure in MEASURES
    )
    body = [
        _header(folder, rows),
        f"<h2>Outliers</h2>\n{_outliers(rows, fences, outliers)}",
        f"<h2>Distributions by scanner, kernel and protocol</h2>\n{distributions}",
        f"<h2>Failed series</h2>\n{_failed(rows)}",
        "<h2>All series</h2>\n<p class='muted'>Click a header to sort (again to reverse; empty cells last). "
        "Highlighted: outliers. Hover an id for its input.</p>\n"
        + table(SERIES_COLUMNS, [_series_row(row, flagged_cells) for row in rows], sortable=True, table_id="series"),
        f"<h2>Definitions</h2>\n{_definitions()}",
        f"<footer>Written by ctqa {escape(__version__)} from {len(rows)} rows of index.csv; a self-contained page "
        "(no external resources).</footer>",
    ]
    return page(f"CT quality batch: {folder.resolve().name}", "\n".join(body))


def write_group_report(folder: Path, rows: list[IndexRow]) -> Path:
    """Write folder/report.html for the batch's rows (atomically); returns its path."""
    folder = Path(folder)
    return write_text_atomically(folder / REPORT_NAME, group_page(folder, rows))
