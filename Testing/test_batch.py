"""`ctqa batch` on Ray over a small tree of real CT series: discovery, failure isolation, index.csv, resuming after
an interruption, and the refusals. Physics models and no score keep each series to a few seconds on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctqa.batch import (
    RAY_MISSING,
    AssessOptions,
    SeriesInput,
    default_workers,
    find_series,
    fingerprint,
    peak_bytes,
    rebuild_reports,
    run_batch,
)
from ctqa.batch_index import ASSESSED, FAILED, INDEX_NAME, REUSED, read_index
from ctqa.cli import main
from ctqa.errors import InputError
from ctqa.io import detached_data_files

pytest.importorskip("ray", reason="ctqa batch needs Ray: pip install 'ctqa[batch]'")

FAST = AssessOptions(model="physics", series_model="physics", score_model="none", preview=False)
FAST_FLAGS = ["--model", "physics", "--series-model", "physics", "--score-model", "none", "--no-preview", "--quiet"]
REPO = Path(__file__).resolve().parents[1]


def _modality_copy(source: Path, target: Path, **changes) -> None:
    header = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(header, keyword, value)
    header.SeriesInstanceUID = pydicom.uid.generate_uid()
    target.parent.mkdir(parents=True, exist_ok=True)
    header.save_as(target)


@pytest.fixture()
def tree(shared_data: Path, tmp_path: Path) -> Path:
    """A small archive: a 20-file DICOM series, two one-slice DICOM series in one folder, a NIfTI volume, a truncated
    DICOM file, a labelmap (not HU), an MR image and a localizer (left out), a segmentation and a text file (ignored).
    """
    root = tmp_path / "archive"
    shutil.copytree(shared_data / "totalseg" / "example_ct_dicom", root / "patient1" / "abdomen")
    chest = sorted((shared_data / "chest_sbu").glob("*.dcm"))
    (root / "patient2").mkdir()
    for source in chest[:2]:
        shutil.copy(source, root / "patient2" / source.name)
    (root / "patient2" / "broken.dcm").write_bytes(chest[2].read_bytes()[:30000])
    _modality_copy(chest[3], root / "patient3" / "mr.dcm", Modality="MR")
    _modality_copy(chest[3], root / "patient3" / "scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    (root / "volumes").mkdir()
    shutil.copy(shared_data / "totalseg" / "example_ct_sm.nii.gz", root / "volumes" / "small.nii.gz")
    shutil.copy(shared_data / "totalseg" / "example_seg.nii.gz", root / "volumes" / "labels.nii.gz")
    (root / "volumes" / "mask.seg.nrrd").write_bytes(b"not read")
    (root / "volumes" / "notes.txt").write_text("not a CT\n")
    return root


def test_discovery_groups_dicom_by_series_and_leaves_out_what_is_not_ct(tree: Path):
    found = find_series(tree)
    by_id = {series.id: series for series in found.series}
    chest = sorted(f"patient2_{path.stem}" for path in (tree / "patient2").glob("A*.dcm"))
    assert sorted(by_id) == ["patient1_abdomen__CT_Body_3.0", *chest, "volumes_labels", "volumes_small"]
    assert len(by_id["patient1_abdomen__CT_Body_3.0"].files) == 20
    assert by_id["patient1_abdomen__CT_Body_3.0"].voxels == 20 * 512 * 512
    assert by_id["volumes_small"].voxels == 122 * 101 * 30
    assert [row.id for row in found.unreadable] == ["patient2_broken.dcm"]
    assert "truncated DICOM file" in found.unreadable[0].reason
    assert sorted(phrase.split()[0] for phrase in found.left_out) == ["MR", "localizer"]


def test_discovery_skips_the_output_folder_and_makes_ids_unique(tree: Path):
    out = tree / "results"
    (out / "old").mkdir(parents=True)
    shutil.copy(tree / "volumes" / "small.nii.gz", out / "old" / "quality_map.nii.gz")
    (tree / "volumes_small.nii.gz").write_bytes((tree / "volumes" / "small.nii.gz").read_bytes())  # same id twice
    found = find_series(tree, exclude=out)
    ids = [series.id for series in found.series]
    assert not any("quality_map" in name for name in ids)
    assert len(ids) == len(set(ids)) == 6
    assert sum(name.startswith("volumes_small") for name in ids) == 2


def test_batch_isolates_failures_and_resumes(tree: Path, tmp_path: Path):
    out = tmp_path / "audit"
    seen = []
    result = run_batch(tree, out, FAST, workers=2, progress=lambda done, total, row: seen.append((done, total)))
    rows = {row.id: row for row in result.rows}
    assert [done for done, _ in seen] == list(range(1, 7)) and {total for _, total in seen} == {6}
    assert rows["patient2_broken.dcm"].status == FAILED
    assert "truncated DICOM file" in rows["patient2_broken.dcm"].reason
    assert rows["volumes_labels"].status == FAILED and "\n" not in rows["volumes_labels"].reason
    done = [row for row in result.rows if row.status == ASSESSED]
    assert len(done) == 4
    abdomen = rows["patient1_abdomen__CT_Body_3.0"]
    assert abdomen.shape_zyx == "20x512x512" and abdomen.kernel.startswith("Br38f")
    assert abdomen.scanner.startswith("SIEMENS") and abdomen.protocol
    assert 5.0 < abdomen.gnl_hu < 60.0 and 0.0 < abdomen.quality_p10 <= abdomen.quality_mean <= 1.0
    for row in done:
        summary = json.loads((out / row.id / "summary.json").read_text())
        assert summary["batch"]["fingerprint"] and row.runtime_s > 0
        assert all((out / row.id / name).is_file() for name in summary["outputs"])
    assert [row.id for row in read_index(out / INDEX_NAME)] == [row.id for row in result.rows]

    stamps = {row.id: (out / row.id / "summary.json").stat().st_mtime_ns for row in done}
    os.utime(tree / "volumes" / "small.nii.gz")  # a changed input is assessed again; the rest is reused
    again = {row.id: row for row in run_batch(tree, out, FAST, workers=1).rows}
    assert again["volumes_small"].status == ASSESSED
    reused = [key for key, row in again.items() if row.status == REUSED]
    assert sorted(reused) == sorted(key for key in stamps if key != "volumes_small")
    assert all((out / key / "summary.json").stat().st_mtime_ns == stamps[key] for key in reused)
    assert again["patient2_broken.dcm"].status == FAILED  # failures are tried again, and fail again


def test_fingerprint_follows_files_options_and_models(tree: Path):
    series = next(s for s in find_series(tree).series if s.id == "volumes_small")
    first = fingerprint(series, FAST)
    assert fingerprint(series, FAST) == first
    assert fingerprint(series, AssessOptions(model="physics", score_model="none")) != first
    assert fingerprint(series, FAST, models="a retrained checkpoint") != first
    os.utime(series.path, ns=(1, 1))
    assert fingerprint(series, FAST) != first


def test_default_workers_follow_memory():
    small = SeriesInput("a", "a.nrrd", "", ("a.nrrd",), 10)
    huge = SeriesInput("b", "b.nrrd", "", ("b.nrrd",), 10**13)
    assert default_workers([small], FAST) == os.cpu_count()  # this machine has memory for one per core
    assert default_workers([small, huge], FAST) == 1
    assert peak_bytes(small, AssessOptions(denoise_model="default")) > peak_bytes(small, FAST)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ctqa.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_is_finished_by_the_next(shared_data: Path, tree: Path, tmp_path: Path, stop: int, status: int):
    out = tmp_path / "audit"
    (tree / "volumes" / "labels.nii.gz").unlink()
    (tree / "patient2" / "broken.dcm").unlink()
    for source in sorted((shared_data / "chest_sbu").glob("*.dcm"))[4:10]:  # enough series to stop it midway
        shutil.copy(source, tree / "patient2" / source.name)
    # a shell's background job (`make test &`) ignores SIGINT, and so would the child: give it a terminal's default
    run = _cli("batch", str(tree), "--out", str(out), "--workers", "1", *FAST_FLAGS, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        index = out / INDEX_NAME
        if index.is_file() and any(row.status == ASSESSED for row in read_index(index)):
            break
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()
    run.send_signal(stop)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == status, f"exit status {run.returncode}: {stderr}"
    assert stderr.strip().splitlines()[-1] in ("ctqa: interrupted", "ctqa: terminated")
    finished = [row for row in read_index(out / INDEX_NAME) if row.status == ASSESSED]
    assert 1 <= len(finished) < 10
    if stop == signal.SIGTERM:
        return  # the rest as for Ctrl-C

    rerun = _cli("batch", str(tree), "--out", str(out), "--workers", "2", *FAST_FLAGS)
    stdout, stderr = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, stderr
    rows = read_index(out / INDEX_NAME)
    assert len(rows) == 10 and all(row.status in (ASSESSED, REUSED) for row in rows)
    reused = {row.id for row in rows if row.status == REUSED}
    assert reused >= {row.id for row in finished}  # a series may also have committed as the run was stopped
    assert f"{len(rows) - len(reused)} assessed, {len(reused)} reused from an earlier run, 0 failed" in stdout
    assert not list(out.glob("*/.ctqa-staging-*")) and not list(out.glob("*/.ctqa.lock"))


def test_cli_exit_status_counts_failures(tree: Path, tmp_path: Path, capsys):
    for name in ("patient1", "patient3"):
        shutil.rmtree(tree / name)
    status = main(["batch", str(tree), "--out", str(tmp_path / "audit"), "--workers", "2", *FAST_FLAGS])
    captured = capsys.readouterr()
    assert status == 1
    assert "5 series: 3 assessed, 0 reused from an earlier run, 2 failed" in captured.out
    assert "ctqa: failed: patient2_broken.dcm: " in captured.err
    assert "left out" not in captured.err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--workers", "0"], "--workers 0: must be at least 1"),
        (["--workers", "2", "--address", "auto"], "with --address the cluster's CPUs and memory decide"),
        (["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray cluster answers there"),
    ],
)
def test_bad_arguments_are_one_line(tree: Path, tmp_path: Path, capsys, arguments, message):
    assert main(["batch", str(tree), "--out", str(tmp_path / "out"), *arguments, *FAST_FLAGS]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_file_as_root_is_refused_with_nothing_before_the_line(tmp_path: Path, capsys):
    """No progress bar reaches stderr before a refusal (issue 24, item 9)."""
    volume = tmp_path / "ct.nrrd"
    volume.write_bytes(b"NRRD0004\n")
    assert main(["batch", str(volume), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ctqa: error: ") and "not a folder" in error
    assert error.count("\n") == 1 and "\r" not in error


def test_roots_without_series_are_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT series found"):
        run_batch(tmp_path / "empty", tmp_path / "out", FAST)
    with pytest.raises(InputError, match="no such folder"):
        run_batch(tmp_path / "missing", tmp_path / "out", FAST)


def test_without_ray_the_command_says_how_to_install_it(tree: Path, tmp_path: Path):
    hide_ray = "import sys; sys.modules['ray'] = None; from ctqa.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-c", hide_ray, "batch", str(tree), "--out", str(tmp_path / "out"), *FAST_FLAGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"ctqa: error: {RAY_MISSING}"


def test_discovery_of_awkward_archives(tree: Path, shared_data: Path):
    chest = sorted((tree / "patient2").glob("A*.dcm"))
    (tree / "backup").mkdir()
    shutil.copy(chest[0], tree / "backup" / "copy.dcm")  # the same image twice: one series, a note
    for name in ("t 1.dcm", "t_1.dcm"):  # two unreadable files whose ids would collide
        (tree / name).write_bytes(chest[1].read_bytes()[:30000])
    (tree / "study").mkdir()
    (tree / "study" / "summary.json").write_text('{"patients": 1}')  # a dataset's own summary.json hides nothing
    shutil.copy(shared_data / "totalseg" / "example_ct_sm.nii.gz", tree / "study" / "ct.nii.gz")
    found = find_series(tree)
    ids = [series.id for series in found.series]
    assert "study_ct" in ids
    assert ("backup_copy" in ids) != (f"patient2_{chest[0].stem}" in ids)  # the first copy found is the series
    assert "1 second copy of DICOM images (same SOPInstanceUID)" in found.left_out
    unreadable = [row.id for row in found.unreadable]
    assert len(unreadable) == len(set(unreadable)) == 3


def test_a_memory_request_no_node_can_meet_does_not_wait_forever(tree: Path, tmp_path: Path):
    """Ray leaves a task that asks for more memory than any node has waiting forever: the request is capped."""
    script = (
        "import sys, ctqa.batch as b; b.peak_bytes = lambda series, options: 1 << 50; "
        "r = b.run_batch(sys.argv[1], sys.argv[2], b.AssessOptions(model='physics', series_model='physics', "
        "score_model='none', preview=False), workers=1); print(sorted(row.status for row in r.rows))"
    )
    shutil.rmtree(tree / "patient1")
    shutil.rmtree(tree / "volumes")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tree / "patient2"), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['assessed', 'assessed', 'failed']"


def test_report_rebuild_leaves_failed_rows_unlinked(tree: Path, tmp_path: Path):
    out = tmp_path / "audit"
    shutil.rmtree(tree / "patient1")
    shutil.copy(tree / "volumes" / "small.nii.gz", tree / "volumes" / "later.nii.gz")
    run_batch(tree, out, FAST, workers=2)
    (tree / "volumes" / "later.nii.gz").write_bytes((tree / "volumes" / "labels.nii.gz").read_bytes())  # now fails
    rows = {row.id: row for row in run_batch(tree, out, FAST, workers=1).rows}
    assert rows["volumes_later"].status == FAILED and rows["volumes_later"].report == ""
    assert (out / "volumes_later" / "summary.json").is_file()  # the earlier run's outputs are not deleted ...
    written = rebuild_reports(out)
    rebuilt = {row.id: row for row in read_index(out / INDEX_NAME)}
    assert rebuilt["volumes_later"].report == "" and out / "volumes_later" / "report.html" not in written
    assert 'href="volumes_later/report.html"' not in (out / "report.html").read_text()  # ... nor linked


def test_detached_data_files_are_part_of_the_series(tmp_path: Path):
    """A .mhd or .nhdr header names its data file: discovery keeps it with the header (not as a series of its own)
    and the fingerprint follows it, so a rewritten data file is assessed again."""
    root = tmp_path / "archive"
    root.mkdir()
    image = sitk.GetImageFromArray(np.full((2, 16, 16), 40, np.int16))
    sitk.WriteImage(image, str(root / "a.mhd"))
    sitk.WriteImage(image, str(root / "b.nhdr"))
    found = {series.id: series for series in find_series(root).series}
    assert sorted(found) == ["a", "b"]
    for series in found.values():
        header, data = series.files
        assert header == series.path == series.input and Path(data).parent == root and Path(data).is_file()
        before = fingerprint(series, FAST)
        os.utime(data, ns=(1, 1))
        assert fingerprint(series, FAST) != before
    header = root / "a.mhd"
    header.write_text(header.read_text().replace("ElementDataFile = a.raw", "ElementDataFile = LIST"))
    assert detached_data_files(header) == ()
