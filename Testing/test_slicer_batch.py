"""`ctqa batch` from Slicer's side: Logic.batchAssess runs the core's command line in its own process
(CTQualityAssessmentLib.batch) over a small tree of real CT (two one-slice chest series and a truncated file): the rows
of index.csv with the failed file and its reason, the outputs, the progress in the log with Slicer's events processed
while it waits, the one-line refusal of bad arguments, cancel ending the whole process tree, and Scripts/batch_assess.py
giving the same exit status and rows.

The module file needs Slicer to import, so the Logic's methods are compiled alone from its source (module_source),
with stand-ins for ensure_dependencies, logging and slicer.app. Physics models, no score, no preview, one worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from module_source import class_with

from ctqa.batch_index import ASSESSED, FAILED, INDEX_NAME, read_index
from ctqa.cli import _parser
from ctqa.errors import InputError
from CTQualityAssessmentLib import batch, process

pytest.importorskip("ray", reason="ctqa batch needs Ray: pip install 'ctqa[batch]'")

REPO = Path(__file__).resolve().parents[1]
FAST = dict(workers=1, model="physics", seriesModel="physics", scoreModel="none", preview=False)


class _Recorder:
    """Stand-ins for what the Logic calls in Slicer: ensure_dependencies, logging.info, slicer.app.processEvents."""

    def __init__(self):
        self.installs, self.logged, self.events = [], [], 0

    def namespace(self) -> dict:
        def process_events():
            self.events += 1

        return {
            "ensure_dependencies": lambda **options: self.installs.append(options),
            "logging": SimpleNamespace(info=self.logged.append),
            "slicer": SimpleNamespace(app=SimpleNamespace(processEvents=process_events)),
        }


def _logic(recorder: _Recorder):
    return class_with("CTQualityAssessmentLogic", {"_prepare", "batchAssess"}, recorder.namespace())()


@pytest.fixture(scope="module")
def tree(shared_data: Path, tmp_path_factory) -> Path:
    """Two one-slice chest CT series and a truncated copy of a third."""
    root = tmp_path_factory.mktemp("archive")
    chest = sorted((shared_data / "chest_sbu").glob("*.dcm"))
    for source in chest[:2]:
        shutil.copy(source, root / source.name)
    (root / "broken.dcm").write_bytes(chest[2].read_bytes()[:30000])
    return root


@pytest.fixture(scope="module")
def logic_run(tree, tmp_path_factory):
    """Logic.batchAssess over the tree, waiting: (rows, output folder, recorder)."""
    recorder = _Recorder()
    out = tmp_path_factory.mktemp("batch") / "audit"
    rows = _logic(recorder).batchAssess(str(tree), str(out), **FAST)
    return rows, out, recorder


def test_the_command_is_the_one_the_cli_takes():
    command = batch.batch_command("archive", "audit", workers=2, model="physics", denoise_model="d.json", preview=False)
    assert command[:3] == [process.python_executable(), "-m", "ctqa.cli"]
    args = _parser().parse_args(command[3:])
    assert (args.command, args.root, args.out, args.workers, args.model) == ("batch", "archive", "audit", 2, "physics")
    assert args.denoise and args.denoise_model == "d.json" and args.no_preview and args.address is None
    plain = _parser().parse_args(batch.batch_command("archive", "audit", address="auto")[3:])
    assert plain.address == "auto" and plain.workers is None and not plain.denoise and not plain.no_preview


def test_rows_come_back_with_the_failed_file_and_its_reason(logic_run, tree):
    rows, out, _ = logic_run
    by_status = {row.id: row.status for row in rows}
    assert by_status == {"broken.dcm": FAILED, **{path.stem: ASSESSED for path in tree.glob("A*.dcm")}}
    (failed,) = [row for row in rows if row.status == FAILED]
    assert "truncated DICOM file" in failed.reason and "\n" not in failed.reason
    assert rows == read_index(out / INDEX_NAME)


def test_outputs_and_reports_exist(logic_run):
    rows, out, _ = logic_run
    assert (out / "report.html").is_file()
    for row in rows:
        if row.status == ASSESSED:
            assert {"summary.json", "quality_map.nrrd", "report.html"} <= {p.name for p in (out / row.id).iterdir()}
            assert not (out / row.id / "preview.png").exists()


def test_batch_packages_are_ensured_and_slicer_stays_responsive_while_it_waits(logic_run):
    _, _, recorder = logic_run
    assert recorder.installs == [{}, {"learned": False, "batch": True}]
    assert recorder.events > 0
    logged = recorder.logged
    assert all(line.startswith("CTQualityAssessment batch: ") for line in logged)
    assert "started: -m ctqa.cli batch" in logged[0] and "finished in" in logged[-1]
    assert any("ctqa: failed: broken.dcm: " in line for line in logged)
    assert any("3 series: 2 assessed, 0 reused from an earlier run, 1 failed" in line for line in logged)


def test_bad_arguments_raise_the_one_line_message(tree, tmp_path):
    with pytest.raises(InputError, match=r"^--workers 0: must be at least 1$"):
        _logic(_Recorder()).batchAssess(str(tree), str(tmp_path / "out"), **{**FAST, "workers": 0})


def _live_group_members(group: int) -> list[int]:
    """Processes (not zombies) in a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if entry.name.isdigit() and int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from Linux's /proc")
def test_cancel_ends_the_process_tree_with_ray(tree, tmp_path):
    job = _logic(_Recorder()).batchAssess(str(tree), str(tmp_path / "out"), **FAST, wait=False)
    group = job._process.pid
    deadline = time.monotonic() + 60
    while job.poll() == process.RUNNING and len(_live_group_members(group)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # until Ray's processes (GCS, raylet) run beside the driver
    assert job.state == process.RUNNING and len(_live_group_members(group)) >= 3, job.log
    job.cancel()
    assert job.state == process.CANCELLED and job.log[-1].text == "cancelled"
    job.wait_ended()
    assert _live_group_members(group) == []
    with pytest.raises(InputError, match="cancelled"):
        job.rows()


def test_the_script_gives_the_same_exit_status_and_rows(logic_run, tree, tmp_path):
    rows, _, _ = logic_run
    out = tmp_path / "audit"
    flags = ["--workers", "1", "--model", "physics", "--series-model", "physics", "--score-model", "none"]
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "Scripts" / "batch_assess.py"),
            str(tree),
            "--out",
            str(out),
            *flags,
            "--no-preview",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    script_rows = read_index(out / INDEX_NAME)
    assert [(r.id, r.status, r.reason) for r in script_rows] == [(r.id, r.status, r.reason) for r in rows]
