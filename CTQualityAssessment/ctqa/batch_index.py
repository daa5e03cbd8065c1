"""index.csv of a batch run: one typed row per series (IndexRow), built from a series' summary.json, written and
read back atomically. Kept apart from batch.py (Ray) so that reports and the Slicer module read it without Ray."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from ctqa.outputs import write_text_atomically
from ctqa.results import table_column_types, table_columns, table_row

INDEX_NAME = "index.csv"
REPORT_NAME = "report.html"
#: IndexRow.status values.
ASSESSED, REUSED, FAILED = "assessed", "reused", "failed"


@dataclass
class IndexRow:
    """One series of a batch (a row of index.csv); text fields are "" and figures NaN when not known.

    id: the series' folder name under the batch's output folder; input: the file or DICOM folder read;
    status: "assessed" (by this run), "reused" (complete outputs of an earlier run with the same input and options),
    "failed" (reason: one line); checks: the summary's notes on the input (missing tags, scaling, resampling), joined
    by " | "; shape_zyx: "z x y x x" voxels; spacing_mm_xyz: mm; scanner: Manufacturer and ManufacturerModelName;
    protocol: ProtocolName, else SeriesDescription; window_class, dose_class: the series panel's calls;
    gnl_hu: global noise level (HU); quality_mean, quality_p10: of the quality map over the body (1 = best);
    score, score_sd: the 0-4 global score (LDCTIQAC2023 scale); runtime_s: wall time of the series in this run
    (s: reading, assessing, writing the outputs and the report), for "reused" the earlier run's reading and
    assessing; report: the series report relative to the batch folder ("" when none).
    """

    id: str
    input: str
    series_uid: str = ""
    status: str = ASSESSED
    reason: str = ""
    modality: str = ""
    checks: str = ""
    shape_zyx: str = ""
    spacing_mm_xyz: str = ""
    scanner: str = ""
    kernel: str = ""
    protocol: str = ""
    window_class: str = ""
    dose_class: str = ""
    gnl_hu: float = math.nan
    quality_mean: float = math.nan
    quality_p10: float = math.nan
    score: float = math.nan
    score_sd: float = math.nan
    runtime_s: float = math.nan
    report: str = ""


INDEX_COLUMNS = table_columns(IndexRow)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _number(value, digits: int) -> float:
    """A summary figure rounded for the table (far below its uncertainty), NaN when missing."""
    return round(float(value), digits) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def _dims(values, fmt: str) -> str:
    return "x".join(format(float(v), fmt) if fmt else str(v) for v in values) if values else ""


def row_from_summary(series_id: str, input_path: str, series_uid: str, summary: dict, **row) -> IndexRow:
    """The index row of a completed series from its summary.json (a dict); row: status, runtime_s, report..."""
    panel = summary.get("series") or {}
    tags = panel.get("acquisition") or {}
    score = summary.get("global_score") or {}
    scanner = " ".join(_text(tags.get(key)) for key in ("manufacturer", "model_name") if _text(tags.get(key)))
    return IndexRow(
        id=series_id,
        input=input_path,
        series_uid=series_uid,
        checks=" | ".join(summary.get("notes") or ()),
        shape_zyx=_dims(summary.get("shape_zyx"), ""),
        spacing_mm_xyz=_dims(summary.get("spacing_mm_xyz"), ".4g"),
        scanner=scanner,
        kernel=_text(tags.get("kernel")),
        protocol=_text(tags.get("protocol")),
        window_class=_text((panel.get("window") or {}).get("label")),
        dose_class=_text((panel.get("dose") or {}).get("label")),
        gnl_hu=_number(summary.get("gnl_hu"), 2),
        quality_mean=_number(summary.get("global_quality_score"), 4),
        quality_p10=_number(summary.get("quality_p10"), 4),
        score=_number(score.get("value"), 3),
        score_sd=_number(score.get("sd"), 3),
        **row,
    )


def write_index(rows: list[IndexRow], path: str | os.PathLike) -> None:
    """index.csv, whole or not at all (outputs.write_text_atomically)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=INDEX_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in table_row(row).items()})
    write_text_atomically(path, table.getvalue())


def read_index(path: str | os.PathLike) -> list[IndexRow]:
    """The rows of an index.csv (empty figures NaN, empty text ""); unknown columns are ignored."""
    types = table_column_types(IndexRow)
    names = {item.name for item in fields(IndexRow)}
    with Path(path).open(newline="", encoding="utf-8") as stream:
        rows = []
        for cells in csv.DictReader(stream):
            values = {
                key: (types[key](value) if value != "" else (math.nan if types[key] is float else ""))
                for key, value in cells.items()
                if key in names and value is not None
            }
            rows.append(IndexRow(**values))
        return rows
