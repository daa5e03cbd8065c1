"""HTML reports (ctqa.reports): the series report of an assessment folder, the group report of a batch, and both
rendered offline in headless Chromium (Playwright driving Debian's chromium): images load, the table sorts, the
page is not blank."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ctqa.batch_index import FAILED, REUSED, IndexRow, row_from_summary
from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.pipeline import assess, write_outputs
from ctqa.reports.group_report import MEASURES, batch_fences, find_outliers, short_label, write_group_report
from ctqa.reports.series_report import write_series_report
from ctqa.rois import rois_from_labels

FAST = dict(model="physics", series_model="physics", score_model="none")
SECTIONS = (
    "Global figures",
    "Quality overlays at representative slices",
    "Per-slice figures",
    "Regions of interest",
    "Series panel",
    "DICOM acquisition tags",
    "Denoised CT",
    "Notes",
    "Definitions",
)
DICOM_SERIES = 6


def images(text: str) -> list[str]:
    """The <img> tags of a page."""
    return re.findall(r"<img [^>]*>", text)


def assert_offline(text: str) -> None:
    assert not re.search(r"https?://", text), "a page must not refer to the network"
    assert all('src="data:image/png;base64,' in tag and 'alt="' in tag for tag in images(text))


def png_pixels(path: Path) -> np.ndarray:
    """A PNG's pixels (rows, columns, channels) in [0, 1]."""
    return imread(str(path))


def assessed_row(series_id: str, source: Path, folder: Path, seconds: float) -> IndexRow:
    summary = json.loads((folder / "summary.json").read_text())
    return row_from_summary(
        series_id, str(source), "", summary, status="assessed", runtime_s=seconds, report=f"{series_id}/report.html"
    )


@pytest.fixture(scope="module")
def rich_folder(shared_data, tmp_path_factory, torch_single_thread) -> Path:
    """An assessment with every block: the 0-4 score (bundled score model), two ROIs and the denoised CT."""
    volume = read_volume(str(shared_data / "totalseg" / "example_ct_sm.nii.gz"))
    labels = np.zeros(volume.shape, np.int16)
    labels[:, 30:60, 30:60], labels[:, 60:80, 60:90] = 1, 2
    rois = rois_from_labels(labels, {1: "left block", 2: "right block"})
    assessment = assess(volume, None, rois, model="physics", series_model="physics", denoise_model="default")
    folder = tmp_path_factory.mktemp("batch") / "example_ct_sm"
    write_outputs(assessment, folder)
    return folder


@pytest.fixture(scope="module")
def batch(shared_data, rich_folder) -> tuple[Path, list[IndexRow]]:
    """A batch folder: single-slice DICOM series (physics only) beside the rich assessment, each with its series
    report; rows: theirs, an injected extreme row (no report) and a failed one."""
    root = rich_folder.parent
    rows = [assessed_row(rich_folder.name, shared_data / "totalseg" / "example_ct_sm.nii.gz", rich_folder, 9.0)]
    for source in sorted((shared_data / "chest_sbu").glob("*.dcm"))[:DICOM_SERIES]:
        start = time.perf_counter()
        write_outputs(assess(read_volume(str(source)), **FAST), root / source.stem)
        rows.append(assessed_row(source.stem, source, root / source.stem, time.perf_counter() - start))
    for row in rows:
        write_series_report(root / row.id)
    rows[1] = dataclasses.replace(rows[1], status=REUSED)
    rows.append(dataclasses.replace(rows[-1], id="extreme noise", gnl_hu=480.0, report=""))
    rows.append(IndexRow(id="broken", input="/data/broken", status=FAILED, reason="not a CT: the modality is MR"))
    write_group_report(root, rows)
    return root, rows


def test_series_report_has_every_section_and_inline_images(rich_folder):
    before = sorted(path.name for path in rich_folder.iterdir())
    path = write_series_report(rich_folder)
    assert path == rich_folder / "report.html"
    assert sorted(p.name for p in rich_folder.iterdir()) == sorted(before + ["report.html"])  # no temporary file
    text = path.read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f"{heading}</h2>" in text
    summary = json.loads((rich_folder / "summary.json").read_text())
    score = summary["global_score"]
    spread = f" ± {score['sd']:.1f}" if score["sd"] is not None else ""  # the physics-feature default has no SD
    outside = " [outside the model's domain: see notes]" if score["domain_notes"] else ""  # 3 mm pixels: it is
    assert html.escape(f"score {score['value']:.1f}{spread} / 4 (surrogate){outside}") in text  # the CLI's wording
    assert all(html.escape(note) in text for note in score["domain_notes"])
    assert "(overstated on denoised images)" in text and summary["denoised"]["quality_caveat"] in text
    assert "left block" in text and "right block" in text
    tags = images(text)
    assert len(tags) == 2  # preview.png and the per-slice plot
    preview = base64.b64encode((rich_folder / "preview.png").read_bytes()).decode()
    assert any(preview in tag for tag in tags)
    assert text.count("<figcaption>") == len(tags)
    assert_offline(text)


def test_dicom_series_report_shows_its_tags(batch):
    root, rows = batch
    text = (root / rows[2].id / "report.html").read_text(encoding="utf-8")
    assert "Convolution kernel" in text and rows[2].kernel in text
    assert "Regions of interest</h2>" in text and "No ROIs were given" in text
    assert "Denoised CT</h2>" not in text  # no --denoise
    assert_offline(text)


def test_missing_figures_read_n_a_never_0(rich_folder, tmp_path):
    for name in ("slices.csv", "summary.json"):
        shutil.copy(rich_folder / name, tmp_path / name)
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary.update(gnl_hu=None, snr=None, global_score=None, denoised=None, outputs=["slices.csv", "summary.json"])
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = write_series_report(tmp_path).read_text(encoding="utf-8")
    assert re.search(r'<div class="label">GNL</div><div class="value">n/a</div>', text)
    assert re.search(r'<div class="label">SNR</div><div class="value">n/a</div>', text)
    assert re.search(r'<div class="label">Score \(0-4\)</div><div class="value">n/a</div>', text)
    assert "GNL n/a" in text and "0.0 HU" not in text
    assert "No preview.png in this folder" in text and "No ROIs were given" in text
    assert len(images(text)) == 1  # the per-slice plot only


def test_incomplete_folder_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "slices.csv").write_text("slice\n")
    with pytest.raises(InputError, match="summary.json missing"):
        write_series_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices.csv"]


def test_dicom_text_is_text_not_markup(tmp_path):
    """Protocol and scanner names come from DICOM tags: "$" is not mathtext, "<" is not HTML."""
    names = ["CHEST $^^$ W/O", "<script>alert(1)</script>", "$5 to $10", "ABD\\PEL"]
    rows = [
        IndexRow(id=f"s{k}", input=f"/in/s{k}", protocol=name, scanner=name, kernel=name, gnl_hu=10.0 + k)
        for k, name in enumerate(names)
    ]
    text = write_group_report(tmp_path, rows).read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "CHEST $^^$ W/O" in text


def test_fences_and_outlier_reasons():
    gnl = MEASURES[0]
    rows = [IndexRow(id=f"s{n}", input="", gnl_hu=value) for n, value in enumerate([10.0, 11.0, 12.0, 13.0, 100.0])]
    rows.append(IndexRow(id="failed", input="", status=FAILED, gnl_hu=500.0))  # failed rows do not count
    fences = batch_fences(rows, gnl)
    assert (fences.values, fences.low, fences.high) == (5, 8.0, 16.0)  # Q1 11, Q3 13, IQR 2
    (outlier,) = find_outliers(rows, [fences])
    assert outlier.row.id == "s4" and outlier.reason == "GNL 100.0 HU above the batch's upper fence 16.0 HU"
    assert batch_fences(rows[:3], gnl) is None  # fewer than 4 values
    assert batch_fences([IndexRow(id="x", input="", gnl_hu=math.nan)] * 5, gnl) is None
    assert short_label("x" * 80) == "x" * 21 + "…" + "x" * 10 and short_label("GE LightSpeed") == "GE LightSpeed"


def test_group_report_flags_outliers_lists_failures_and_links_rows(batch):
    root, rows = batch
    text = (root / "report.html").read_text(encoding="utf-8")
    assert re.search(r"GNL 480\.0 HU above the batch&#x27;s upper fence \d+\.\d HU", text)
    failed = text[text.index('id="failed"') : text.index("</table>", text.index('id="failed"'))]
    assert "broken" in failed and "not a CT: the modality is MR" in failed
    series = text[text.index('id="series"') : text.index("</table>", text.index('id="series"'))]
    assert series.count("<tr>") == len(rows) + 1  # the header row, then one per series
    links = re.findall(r'<a href="([^"]+)">', series)
    assert links == [row.report for row in rows if row.report]
    assert all((root / link).is_file() for link in links)
    assert "No values to plot" not in text  # GNL and quality of every series, the score of one
    assert len(images(text)) == 3 and text.count("<figcaption>") == 3
    assert_offline(text)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Playwright (its own browser download does not work offline)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium on PATH (Debian package chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def loaded_images(page) -> list[dict]:
    return page.eval_on_selector_all(
        "img",
        "images => images.map(image => ({natural: image.naturalWidth, complete: image.complete,"
        " width: image.getBoundingClientRect().width, height: image.getBoundingClientRect().height}))",
    )


def column_keys(page, column: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#series tbody tr td:nth-child({column + 1})", "cells => cells.map(cell => cell.dataset.sort)"
    )


def test_group_report_in_chromium(batch, browser, tmp_path):
    root, rows = batch
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((root / "report.html").as_uri())
    assert page.locator("#series").is_visible()
    assert page.locator("#series tbody tr").count() == len(rows)
    figures = loaded_images(page)
    assert len(figures) == 3
    for image in figures:
        assert image["complete"] and image["natural"] > 0 and image["width"] > 300 and image["height"] > 150
    for index in range(page.locator("img").count()):
        assert page.locator("img").nth(index).is_visible()

    headers = page.locator("#series thead th")
    column = [headers.nth(i).inner_text().strip(" ↕↑↓") for i in range(headers.count())].index("GNL (HU)")
    headers.nth(column).click()
    keys = column_keys(page, column)
    values = [float(key) for key in keys if key]
    assert values == sorted(values) and len(values) == len(rows) - 1
    assert keys[-1] == ""  # the failed row has no GNL: last
    assert page.locator("#series tbody tr").first.locator("td").nth(column).inner_text() == f"{min(values):.1f}"
    headers.nth(column).click()  # again: descending, empty still last
    keys = column_keys(page, column)
    assert [float(key) for key in keys if key] == sorted(values, reverse=True) and keys[-1] == ""
    assert page.locator("#series tbody tr").first.locator("td").first.inner_text() == "extreme noise"

    shot = tmp_path / "group_report.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = png_pixels(shot)
    assert pixels.shape[0] > 2000 and pixels.shape[1] == 1280
    assert pixels.std() > 0.05  # not a blank page
    page.close()


def test_series_report_in_chromium(rich_folder, browser):
    path = write_series_report(rich_folder)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(path.as_uri())
    figures = loaded_images(page)
    assert len(figures) == 2
    assert all(image["complete"] and image["natural"] > 0 and image["width"] > 300 for image in figures)
    assert page.locator("#rois tbody tr").count() == 2
    assert page.get_by_role("heading", name="Denoised CT").is_visible()
    page.close()
