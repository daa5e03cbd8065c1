"""The output folder contract (ctqa.outputs): complete and unmixed after every run, all-or-nothing on interruption,
one run at a time; and the streamed NRRD writer against SimpleITK's reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from ctqa import pipeline
from ctqa.cli import main
from ctqa.io import read_volume, write_map
from ctqa.outputs import LOCK_NAME, STAGING_PREFIX, OutputFolder
from ctqa.sample import write_sample
from ctqa.volume import CTVolume


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    return write_sample(tmp_path_factory.mktemp("sample"))


def assess(sample, out: Path, *extra: str) -> int:
    return main(["assess", str(sample["ct"]), "--model", "physics", "--quiet", "--out", str(out), *extra])


def listing(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_rerun_removes_what_the_earlier_run_wrote_and_this_one_did_not(sample, tmp_path):
    out = tmp_path / "out"
    extra = ["--reference", str(sample["reference"]), "--roi", str(sample["labels"])]
    assert assess(sample, out, *extra) == 0
    assert {"rois.csv", "reference_ssim_map.nrrd"} <= set(listing(out))
    assert assess(sample, out) == 0
    names = set(listing(out))
    assert names == {"quality_map.nrrd", "noise_map.nrrd", "slices.csv", "summary.json", "preview.png"}
    assert json.loads((out / "summary.json").read_text())["outputs"] == sorted(names)
    assert not (out / LOCK_NAME).exists()


def test_interrupted_write_leaves_the_previous_run_untouched(sample, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert assess(sample, out, "--roi", str(sample["labels"])) == 0
    before = listing(out)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("ctqa.reports.preview.save_preview", interrupted)  # after the maps and tables are staged
    assert assess(sample, out, "--window-mm", "8") == 130
    assert capsys.readouterr().err.strip().endswith("ctqa: interrupted")
    assert listing(out) == before  # no staging folder, no lock file, no half-new set


def test_sigterm_during_a_run_never_leaves_a_mix(sample, tmp_path):
    """A real SIGTERM while a run stages its files: afterwards the folder holds the old complete run only."""
    out = tmp_path / "out"
    assert assess(sample, out, "--roi", str(sample["labels"])) == 0
    before = listing(out)
    command = [sys.executable, "-m", "ctqa.cli", "assess", str(sample["ct"]), "--model", "physics", "--quiet"]
    process = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.glob(STAGING_PREFIX + "*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    if process.returncode == 0:  # it finished before the signal: then the new run is complete and unmixed
        after = listing(out)
        assert "rois.csv" not in after and json.loads(after["summary.json"])["outputs"] == sorted(after)
    else:
        assert process.returncode == 143 and stderr.strip() == "ctqa: terminated"
        assert listing(out) == before


def test_runs_into_one_folder_take_turns(sample, tmp_path):
    out = tmp_path / "out"
    assessment = pipeline.assess(read_volume(sample["ct"]), model="physics")
    finished = threading.Event()

    def second_run():
        pipeline.write_outputs(assessment, out)
        finished.set()

    with OutputFolder(out) as first:
        (first.stage("slices")).write_text("slice\n0\n")
        writer = threading.Thread(target=second_run)
        writer.start()
        time.sleep(0.5)
        assert not finished.is_set()  # waits for the first run's lock
        first.commit({"run": "first"})
    writer.join(timeout=60)
    assert finished.is_set()
    summary = json.loads((out / "summary.json").read_text())
    assert "run" not in summary and summary["settings"]["model"] == "physics"  # the later run, complete
    assert summary["outputs"] == sorted(p.name for p in out.iterdir())


def test_leftover_staging_of_a_killed_run_is_cleared(sample, tmp_path):
    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}abc").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}abc" / "quality_map.nrrd").write_bytes(b"half")
    assert assess(sample, out) == 0
    assert not list(out.glob(STAGING_PREFIX + "*"))


def test_streamed_nrrd_matches_simpleitk(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(37, 11, 13)).astype(np.float32)
    values[3, 4, 5] = np.nan
    direction = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix()
    volume = CTVolume(values, (0.5, 0.7, 2.0), (1.5, -3.0, 7.25), tuple(direction.ravel()))
    write_map(values, volume, tmp_path / "map.nrrd")
    image = sitk.ReadImage(str(tmp_path / "map.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)  # NaN in the same place, bit-exact
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-12)
    np.testing.assert_allclose(image.GetDirection(), volume.direction, atol=1e-12)
    data = (tmp_path / "map.nrrd").read_bytes()
    payload = data[data.index(b"\n\n") + 2 :]  # 37 slices = 3 slabs compressed apart, one gzip member
    assert zlib.decompress(payload, wbits=31) == values.astype("<f4").tobytes()


def test_files_a_user_left_are_never_removed(sample, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"outputs": ["thesis.docx", "rois.csv"]}))  # not ctqa's
    (out / "thesis.docx").write_bytes(b"years of work")
    (out / "rois.csv").write_text("my own table\n")
    assert assess(sample, out, "--no-preview") == 0
    assert (out / "thesis.docx").read_bytes() == b"years of work"
    assert (out / "rois.csv").read_text() == "my own table\n"  # a contract name, but no ctqa run wrote it


def test_sigterm_during_the_commit_is_deferred_until_it_is_complete(sample, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert assess(sample, out, "--roi", str(sample["labels"])) == 0
    replace = os.replace
    calls = []

    def replace_then_signal(source, target):
        calls.append(target)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the commit
        replace(source, target)

    monkeypatch.setattr("ctqa.outputs.os.replace", replace_then_signal)
    assert assess(sample, out, "--window-mm", "8") == 143
    after = listing(out)
    summary = json.loads(after["summary.json"])
    assert summary["settings"]["noise_window_mm"] == 8.0 and summary["outputs"] == sorted(after)  # the new run, whole
