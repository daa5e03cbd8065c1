"""report.html of one `ctqa assess` output folder, built from the saved outputs only (summary.json, slices.csv,
rois.csv, preview.png; never the NRRD maps): key figures, overlays, per-slice plot, ROI table, series panel, DICOM
tags, the denoised CT's figures, notes and definitions. One self-contained file (reports/html.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ctqa.batch_index import REPORT_NAME
from ctqa.errors import InputError
from ctqa.outputs import OUTPUT_FILES, read_csv, write_text_atomically
from ctqa.reports.html import (
    NOT_AVAILABLE,
    Cell,
    Column,
    KeyFigure,
    bullet_list,
    definitions,
    escape,
    figure_data_uri,
    image,
    is_number,
    key_figures,
    number_cell,
    number_text,
    page,
    png_data_uri,
    table,
)
from ctqa.results import RoiRow, SliceRow, table_column_types

MARKER_MAX_SLICES = 30  # as preview.py: markers on short series, where a line of one point would be invisible


@dataclass(frozen=True)
class SavedSeries:
    """The saved outputs a series report is drawn from: summary.json (dict), slices.csv and rois.csv rows (cells
    typed, None when empty; rois None without --roi) and preview.png's bytes (None when absent)."""

    folder: Path
    summary: dict
    slices: list[dict]
    rois: list[dict] | None
    preview: bytes | None


def read_saved_series(folder: Path) -> SavedSeries:
    """The outputs of a completed assessment folder (InputError when summary.json is missing or unreadable)."""
    folder = Path(folder)
    summary_path = folder / OUTPUT_FILES["summary"]
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no complete assessment here (summary.json missing)") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{summary_path}: cannot read the summary ({error})") from None
    if not isinstance(summary, dict):
        raise InputError(f"{summary_path}: not a ctqa summary (a JSON object expected)")
    listed = set(summary.get("outputs", OUTPUT_FILES.values()))

    def present(role: str) -> Path | None:
        path = folder / OUTPUT_FILES[role]
        return path if OUTPUT_FILES[role] in listed and path.is_file() else None

    slices_path, rois_path, preview_path = present("slices"), present("rois"), present("preview")
    return SavedSeries(
        folder=folder,
        summary=summary,
        slices=read_csv(slices_path, table_column_types(SliceRow)) if slices_path else [],
        rois=read_csv(rois_path, table_column_types(RoiRow)) if rois_path else None,
        preview=preview_path.read_bytes() if preview_path else None,
    )


def write_series_report(folder: Path) -> Path:
    """Write folder/report.html from the assessment saved in folder (atomically); returns its path."""
    saved = read_saved_series(folder)
    return write_text_atomically(saved.folder / REPORT_NAME, series_page(saved))


def _score_figure(score: dict) -> str:
    """ "2.7 ± 0.3 / 4" of a global_score block (no ± for a model without uncertainty)."""
    spread = f" ± {score['sd']:.1f}" if is_number(score.get("sd")) else ""
    return f"{number_text(score.get('value'), '.1f')}{spread} / 4"


def score_text(score: dict) -> str:
    """ "score 2.7 ± 0.3 / 4 (surrogate)" of a summary's global_score block, worded as on the command line."""
    basis = " (surrogate)" if score.get("trained_to") == "surrogate" else ""
    domain = " [outside the model's domain: see notes]" if score.get("domain_notes") else ""
    return f"score {_score_figure(score)}{basis}{domain}"


def _headline(summary: dict) -> str:
    """The command line's result line: global quality, GNL and the score."""
    quality, gnl = summary.get("global_quality_score"), summary.get("gnl_hu")
    figures = [
        f"global quality {quality:.3f}" if is_number(quality) else "quality n/a (no flat tissue to measure noise in)",
        f"GNL {gnl:.1f} HU" if is_number(gnl) else "GNL n/a",
    ]
    if summary.get("global_score"):
        figures.append(score_text(summary["global_score"]))
    return ", ".join(figures)


def _header(saved: SavedSeries) -> str:
    summary = saved.summary
    settings = summary.get("settings") or {}
    score = summary.get("global_score")
    name = series_name(saved)
    shape = "x".join(str(size) for size in summary.get("shape_zyx") or ()) or NOT_AVAILABLE
    spacing = "x".join(f"{size:.4g}" for size in summary.get("spacing_mm_xyz") or ()) or NOT_AVAILABLE
    if score:
        trained = score.get("trained_to", "")
        caption = f"4 = best; {trained}" if trained else "4 = best"
        if score.get("domain_notes"):
            caption += "; OUTSIDE the model's domain: " + "; ".join(score["domain_notes"])
        score_box = KeyFigure("Score (0-4)", _score_figure(score), caption)
    else:
        score_box = KeyFigure("Score (0-4)", NOT_AVAILABLE, "no score model ran")
    boxes = [
        score_box,
        KeyFigure(
            "Global quality", number_text(summary.get("global_quality_score"), ".3f"), "mean over body, 1 = best"
        ),
        KeyFigure("Quality p10", number_text(summary.get("quality_p10"), ".3f"), "10th percentile, 1 = best"),
        KeyFigure("GNL", number_text(summary.get("gnl_hu"), ".1f", " HU"), "noise level, lower = less noise"),
        KeyFigure("SNR", number_text(summary.get("snr"), ".1f"), "soft tissue"),
        KeyFigure("CNR", number_text(summary.get("cnr"), ".2f"), "soft tissue vs fat"),
    ]
    notes = summary.get("notes") or []
    notes_line = f'<p class="meta"><a href="#notes">{len(notes)} note(s) on this assessment</a></p>' if notes else ""
    return (
        f'<header class="top"><h1>CT image quality: {escape(name)}</h1>\n'
        f'<p class="meta">input {escape(summary.get("input", NOT_AVAILABLE))}</p>\n'
        f'<p class="meta">{escape(shape)} voxels (z, y, x), spacing {escape(spacing)} mm (x, y, z); '
        f"quality model {escape(settings.get('model', NOT_AVAILABLE))} on {escape(settings.get('device', '?'))}, "
        f"scaling {escape(settings.get('scaling', '?'))}; {escape(summary.get('tool', 'ctqa'))}</p>\n"
        f"{key_figures(boxes)}\n<p>{escape(_headline(summary))}</p>{notes_line}</header>"
    )


def _global_table(summary: dict) -> str:
    """Every global figure of the summary, with its unit."""
    lung = summary.get("lung") or {}
    score = summary.get("global_score") or {}
    noise_level = summary.get("learned_noise_level")
    rows = [
        ("global quality (mean over the body, 1 = best)", number_text(summary.get("global_quality_score"), ".3f")),
        ("quality median", number_text(summary.get("quality_median"), ".3f")),
        ("quality 10th percentile", number_text(summary.get("quality_p10"), ".3f")),
        ("lung quality (lung window)", number_text(lung.get("lung_quality_mean"), ".3f")),
        ("soft-tissue quality (rest of the body)", number_text(lung.get("soft_tissue_quality_mean"), ".3f")),
        ("GNL (global noise level)", number_text(summary.get("gnl_hu"), ".1f", " HU")),
        ("SNR", number_text(summary.get("snr"), ".1f")),
        ("CNR", number_text(summary.get("cnr"), ".2f")),
        ("soft-tissue mean", number_text(summary.get("soft_tissue_hu_mean"), ".1f", " HU")),
        ("fat mean", number_text(summary.get("fat_hu_mean"), ".1f", " HU")),
        ("body voxels", number_text(summary.get("body_voxels"), "d")),
    ]
    if score:
        rows += [
            ("score, worst 10 % of slices (0-4)", number_text(score.get("worst_decile"), ".1f")),
            ("score model", f"{score.get('model')} ({score.get('trained_to')}; {score.get('slices_scored')} slices)"),
        ]
    if noise_level:
        relative = number_text(noise_level.get("relative_noise"), ".1f", "x")
        rows.append(("learned noise level", f"{relative} the training full-dose images"))
    if summary.get("reference_ssim_mean_body") is not None:
        rows.append(("SSIM to the reference, body", number_text(summary.get("reference_ssim_mean_body"), ".3f")))
        rows.append(("SSIM to the reference, whole image", number_text(summary.get("reference_ssim_mean"), ".3f")))
    return _pairs(rows)


def _pairs(rows: list[tuple[str, str]]) -> str:
    """A two-column table: what, value."""
    return table([Column("measure"), Column("value")], [[Cell(name), Cell(value)] for name, value in rows])


def _overlays(saved: SavedSeries) -> str:
    if saved.preview is None:
        return "<p>No preview.png in this folder (the run was made with --no-preview): no overlays to show.</p>"
    return image(
        png_data_uri(saved.preview),
        "Representative axial slices with the quality map as a colour overlay, and the per-slice quality plot",
        "preview.png: axial slices from the worst to the best mean quality, the quality map overlaid (colour bar: "
        "0 poor to 1 good; inside the white outline quality is read in the lung window), and below, the per-slice "
        "mean quality and its 10th percentile (dotted lines: the slices shown). After --denoise, a second row shows "
        "the same slices denoised, with no overlay, and the dashed line their apparent quality, which overstates.",
    )


def _column(rows: list[dict], name: str) -> np.ndarray:
    """A slices.csv column as floats (NaN for empty cells and absent columns)."""
    return np.array([np.nan if row.get(name) is None else float(row[name]) for row in rows], dtype=float)


def slice_figure(slices: list[dict]) -> Figure | None:
    """Quality mean and p10 per slice (0-1, left axis), the 0-4 score (right axis) and noise SD (HU, lower panel);
    the denoised CT's columns dashed. None when no slice was assessed."""
    quality = _column(slices, "quality_mean")
    if not np.isfinite(quality).any():
        return None
    index = np.array([row["slice"] for row in slices])
    marker = "o" if len(index) <= MARKER_MAX_SLICES else None
    figure = Figure(figsize=(10.0, 5.6), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3.0, 2.0))
    series = [
        ("quality_mean", "quality mean", "tab:blue"),
        ("quality_p10", "quality 10th percentile", "tab:orange"),
    ]
    for name, label, color in series:
        top.plot(index, _column(slices, name), color=color, marker=marker, ms=4, label=label)
        denoised = _column(slices, f"{name}_denoised")
        if np.isfinite(denoised).any():
            top.plot(index, denoised, color=color, ls="--", marker=marker, ms=3, label=f"{label}, denoised")
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("quality (0-1, 1 = best)")
    handles, labels = top.get_legend_handles_labels()
    score, score_denoised = _column(slices, "score"), _column(slices, "score_denoised")
    if np.isfinite(score).any() or np.isfinite(score_denoised).any():
        right = top.twinx()
        for values, label, style in ((score, "score 0-4", "-"), (score_denoised, "score 0-4, denoised", "--")):
            if np.isfinite(values).any():
                (line,) = right.plot(index, values, color="tab:green", ls=style, marker=marker, ms=3)
                handles.append(line)
                labels.append(label)
        right.set_ylim(0.0, 4.0)
        right.set_ylabel("score (0-4, 4 = best)")
    top.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncols=3, frameon=False)
    bottom.plot(index, _column(slices, "noise_sd_hu"), color="tab:red", marker=marker, ms=4, label="noise SD")
    noise_denoised = _column(slices, "noise_sd_hu_denoised")
    if np.isfinite(noise_denoised).any():
        bottom.plot(index, noise_denoised, color="tab:red", ls="--", marker=marker, ms=3, label="noise SD, denoised")
    bottom.set_ylim(bottom=0.0)
    bottom.set_ylabel("median noise SD (HU)")
    bottom.set_xlabel("slice index")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    bottom.set_xlim(-0.5, max(len(index) - 0.5, 0.5))
    return figure


def _slice_plot(saved: SavedSeries) -> str:
    figure = slice_figure(saved.slices) if saved.slices else None
    if figure is None:
        return "<p>No slice has assessed body voxels: nothing to plot per slice.</p>"
    dashed = (
        " Dashed: the denoised CT." if any(row.get("quality_mean_denoised") is not None for row in saved.slices) else ""
    )
    return image(
        figure_data_uri(figure),
        "Per-slice plot of quality mean and 10th percentile, 0-4 score and median noise SD against slice index",
        "From slices.csv. Top: mean and 10th percentile of the quality map over each slice's body (left axis, 0-1, "
        "1 = best) and the slice's 0-4 score when a score model ran (right axis, 4 = best). Bottom: median local "
        f"noise SD over the slice's body (HU). Gaps: slices without body.{dashed}",
    )


def _rois(saved: SavedSeries) -> str:
    if saved.rois is None:
        return "<p>No ROIs were given (ctqa assess --roi LABELS adds this table).</p>"
    columns = [
        Column("label", True),
        Column("name"),
        Column("voxels", True),
        Column("status"),
        Column("window", tooltip="HU window the ROI's quality is read in"),
        Column("quality mean", True, "1 = best"),
        Column("quality median", True),
        Column("quality p10", True),
        Column("noise SD (HU)", True, "median local noise SD"),
        Column("HU mean", True),
    ]
    rows = [
        [
            number_cell(row.get("label"), "d"),
            Cell(row.get("name") or ""),
            number_cell(row.get("voxels"), "d"),
            Cell(row.get("status") or ""),
            Cell(row.get("window") or ""),
            number_cell(row.get("quality_mean"), ".3f"),
            number_cell(row.get("quality_median"), ".3f"),
            number_cell(row.get("quality_p10"), ".3f"),
            number_cell(row.get("noise_sd_hu"), ".1f"),
            number_cell(row.get("hu_mean"), ".1f"),
        ]
        for row in saved.rois
    ]
    return (
        table(columns, rows, sortable=True, table_id="rois")
        + "<p class='muted'>From rois.csv; click a header to sort.</p>"
    )


def _call_text(call: dict | None, physics: dict | None, learned: bool) -> str:
    """A class call with its probability and the physics call beside a learned one (as `ctqa classify`)."""
    if not call:
        return NOT_AVAILABLE
    if not learned:
        return f"{call['label']} (p {call['probability']:.2f}, physics)"
    beside = f"; physics {physics['label']} {physics['probability']:.2f}" if physics else ""
    return f"{call['label']} (p {call['probability']:.2f}{beside})"


def _series_panel(summary: dict) -> str:
    panel = summary.get("series")
    if not panel:
        return "<p>The series panel was not computed for this assessment.</p>"
    if not panel.get("applies"):
        return f"<p>The series panel does not apply: {escape(panel.get('note') or '')}</p>"
    physics = panel.get("physics") or {}
    learned = panel.get("classifier") is not None
    patches, calls_from = panel.get("kernel_index_patches"), panel.get("calls_from")
    rows = [
        ("window class", _call_text(panel.get("window"), physics.get("window"), learned)),
        ("dose class", _call_text(panel.get("dose"), physics.get("dose"), learned)),
        ("calls from", f"{calls_from} ({panel.get('classifier') or 'physics'})" if calls_from else NOT_AVAILABLE),
        ("fitted score (0-4, 4 = best)", number_text(panel.get("fitted_score"), ".2f")),
        ("SNR", number_text(panel.get("snr"), ".1f")),
        ("BRISQUE (lower = more natural)", number_text(panel.get("brisque"), ".1f")),
        ("water-equivalent diameter", number_text(panel.get("water_equivalent_diameter_mm"), ".0f", " mm")),
        ("kernel index", number_text(panel.get("kernel_index"), ".3f", " /mm") + f" ({patches} patches)"),
        ("GNL normalised to 300 mm, 3 mm slices", number_text(panel.get("noise_normalised_hu"), ".1f", " HU")),
        ("slice thickness", number_text(panel.get("slice_thickness_mm"), "g", " mm")),
        ("series model", panel.get("series_model") or NOT_AVAILABLE),
    ]
    note = f"<p>{escape(panel['note'])}</p>" if panel.get("note") else ""
    disagreements = panel.get("tag_disagreements") or []
    warning = (
        '<div class="caveat"><strong>DICOM tags disagree with the calls:</strong>'
        + bullet_list(disagreements)
        + "</div>"
        if disagreements
        else ""
    )
    return _pairs(rows) + note + warning


TAGS = (
    ("manufacturer", "Manufacturer", "", ""),
    ("model_name", "Manufacturer model name", "", ""),
    ("kernel", "Convolution kernel", "", ""),
    ("protocol", "Protocol (or series description)", "", ""),
    ("slice_thickness_mm", "Slice thickness", "g", " mm"),
    ("ctdivol_mgy", "CTDIvol", "g", " mGy"),
    ("exposure_mas", "Exposure", "g", " mAs"),
    ("tube_current_ma", "Tube current", "g", " mA"),
    ("kvp", "kVp", "g", " kV"),
)


def _tags(summary: dict) -> str:
    tags = (summary.get("series") or {}).get("acquisition")
    if not tags:
        return (
            "<p>No DICOM acquisition tags: the input carries none (a volume file; ctqa assess --acquisition-from "
            "DICOM_FILE reads them from a file of the original series).</p>"
        )
    rows = [
        (title, number_text(tags.get(key), spec, unit) if spec else (tags.get(key) or NOT_AVAILABLE))
        for key, title, spec, unit in TAGS
    ]
    return _pairs(rows)


def _denoised(summary: dict) -> str:
    after = summary.get("denoised")
    if not after:
        return ""
    score_before, score_after = summary.get("global_score"), after.get("score")
    quality = after.get("global_quality_score")
    change = after.get("gnl_reduction_percent")
    figures = [
        f"apparent quality {quality:.3f} (overstated on denoised images)" if is_number(quality) else NOT_AVAILABLE,
        f"GNL {number_text(summary.get('gnl_hu'), '.1f')} -> {number_text(after.get('gnl_hu'), '.1f')} HU"
        + (f" ({-change:+.0f} %)" if is_number(change) else ""),
    ]
    if score_after:
        figures.append(score_text(score_after))
    line = f"denoised ({after.get('model')}, {after.get('method')}, on {after.get('device')}): " + ", ".join(figures)
    columns = [Column("measure"), Column("input", True), Column("denoised", True)]
    pairs = [
        ("GNL (HU)", "gnl_hu", ".1f"),
        ("SNR", "snr", ".1f"),
        ("CNR", "cnr", ".2f"),
        ("quality mean (apparent after denoising)", "global_quality_score", ".3f"),
        ("quality median", "quality_median", ".3f"),
        ("quality 10th percentile", "quality_p10", ".3f"),
        ("SSIM to the reference, body", "reference_ssim_mean_body", ".3f"),
    ]
    rows = [
        [Cell(title), number_cell(summary.get(key), spec), number_cell(after.get(key), spec)]
        for title, key, spec in pairs
    ]
    rows.append(
        [
            Cell("score (0-4)"),
            Cell(score_text(score_before) if score_before else NOT_AVAILABLE),
            Cell(score_text(score_after) if score_after else NOT_AVAILABLE),
        ]
    )
    caveat = after.get("quality_caveat") or ""
    return (
        f"<h2>Denoised CT</h2>\n<p>{escape(line)}</p>\n"
        f'<div class="caveat"><strong>Read with care:</strong> {escape(caveat)}</div>\n' + table(columns, rows)
    )


def _notes(summary: dict) -> str:
    notes = list(summary.get("notes") or [])
    fallback = (summary.get("settings") or {}).get("device_fallback")
    if fallback:
        notes.append(fallback)
    return bullet_list(notes) if notes else "<p>None.</p>"


def series_name(saved: SavedSeries) -> str:
    """The series' name on its page: its folder (the series id) in a batch, else the input's file or folder name."""
    if "batch" in saved.summary:
        return saved.folder.name
    return Path(str(saved.summary.get("input", saved.folder.name))).name


def series_page(saved: SavedSeries) -> str:
    """The whole series report page."""
    summary = saved.summary
    body = [
        _header(saved),
        f"<h2>Global figures</h2>\n{_global_table(summary)}",
        f"<h2>Quality overlays at representative slices</h2>\n{_overlays(saved)}",
        f"<h2>Per-slice figures</h2>\n{_slice_plot(saved)}",
        f"<h2>Regions of interest</h2>\n{_rois(saved)}",
        f"<h2>Series panel</h2>\n{_series_panel(summary)}",
        f"<h2>DICOM acquisition tags</h2>\n{_tags(summary)}",
        _denoised(summary),
        f'<h2 id="notes">Notes</h2>\n{_notes(summary)}',
        f"<h2>Definitions</h2>\n{definitions(summary.get('definitions') or {})}",
        f"<footer>Written by {escape(summary.get('tool', 'ctqa'))} from the outputs in "
        f"{escape(saved.folder.name)}/ ({escape(', '.join(summary.get('outputs', ())))}); "
        "a self-contained page (no external resources).</footer>",
    ]
    name = series_name(saved)
    return page(f"CT quality: {name}", "\n".join(part for part in body if part))
