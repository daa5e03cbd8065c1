"""`ctqa batch` from 3D Slicer: the core's own command line in its own process, as the shell runs it.

Slicer's main thread holds the GIL even while idle, so neither the series work nor Ray's driver may live in Slicer's
process: BatchProcess runs `python -m ctqa.cli batch ...` in PythonSlicer (process.python_executable), started like an
assessment (process.start_ctqa: own process group, the module folder on PYTHONPATH), keeps its output lines as the
log (the progress bar's redraws, the failed series, the closing summary) and reads index.csv when it ends. Exit
status 1 (some series failed) is a finished batch: the rows say which series failed and why.
"""

from __future__ import annotations

import queue
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ctqa.batch_index import INDEX_NAME, IndexRow, read_index
from ctqa.errors import InputError
from CTQualityAssessmentLib.process import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    LogLine,
    end_process_tree,
    python_executable,
    queued_lines,
    start_ctqa,
)

#: Exit statuses of `ctqa batch` whose index.csv is complete: all assessed (0), some series failed (1).
FINISHED_STATUSES = (0, 1)


def batch_command(
    root: str | Path,
    out: str | Path,
    workers: int | None = None,
    address: str | None = None,
    model: str = "default",
    score_model: str = "default",
    series_model: str = "default",
    denoise_model: str | None = None,
    device: str = "auto",
    preview: bool = True,
) -> list[str]:
    """The `ctqa batch` command line (options as `ctqa batch --help`; denoise_model None: no denoising)."""
    command = [python_executable(), "-m", "ctqa.cli", "batch", str(root), "--out", str(out)]
    command += ["--model", str(model), "--series-model", str(series_model), "--score-model", str(score_model)]
    command += ["--device", device]
    if workers is not None:
        command += ["--workers", str(workers)]
    if address:
        command += ["--address", address]
    if denoise_model is not None:
        command += ["--denoise", "--denoise-model", str(denoise_model)]
    if not preview:
        command.append("--no-preview")
    return command


@dataclass
class BatchProcess:
    """One running `ctqa batch`; poll() for the state and new log lines, cancel() to stop it, rows() for index.csv."""

    out: Path
    command: list[str]
    state: str = RUNNING
    exit_status: int | None = None
    error: str | None = None
    log: list[LogLine] = field(default_factory=list)
    _process: subprocess.Popen | None = None
    _lines: queue.Queue | None = None
    _open_streams: int = 2
    _started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, root: str | Path, out: str | Path, **options) -> BatchProcess:
        """Start `ctqa batch root --out out` (options: batch_command's keywords)."""
        job = cls(Path(out), batch_command(root, out, **options))
        try:
            job._process, job._lines = start_ctqa(job.command)
        except OSError as error:
            raise InputError(f"cannot start the batch process ({job.command[0]}): {error}") from None
        job._note(f"started: {' '.join(job.command[1:])}")
        return job

    def _note(self, text: str) -> None:
        self.log.append(LogLine(time.monotonic() - self._started, text))

    def poll(self) -> str:
        """Take what the process printed so far (never blocks) and return the state."""
        for tag, line in queued_lines(self._lines):
            if line is None:
                self._open_streams -= 1
            elif line.strip():
                self._note(line.strip())
                if tag == "err" and line.startswith("ctqa: error: "):
                    self.error = line.removeprefix("ctqa: error: ")
        if self.state == RUNNING and self._open_streams == 0 and self._process.poll() is not None:
            self.exit_status = self._process.returncode
            self.state = DONE if self.exit_status in FINISHED_STATUSES else FAILED
            if self.state == FAILED and self.error is None:
                self.error = f"the batch process ended with exit status {self.exit_status}"
            elapsed = time.monotonic() - self._started
            self._note(f"finished in {elapsed:.1f} s" if self.state == DONE else f"failed: {self.error}")
        return self.state

    def wait(
        self, log: Callable[[str], None] | None = None, idle: Callable[[], None] | None = None, interval_s=0.1
    ) -> list[IndexRow]:
        """Block until the batch ends and return its rows: log(text) for each new log line, idle() between polls
        (Slicer: processEvents, so that the application stays responsive). Interrupted (Ctrl-C): the process tree
        is ended."""
        logged = 0
        try:
            while True:
                state = self.poll()
                if log is not None:
                    for line in self.log[logged:]:
                        log(line.text)
                logged = len(self.log)
                if state != RUNNING:
                    return self.rows()
                if idle is not None:
                    idle()
                time.sleep(interval_s)
        except BaseException:
            self.cancel()  # no-op once the process has ended
            raise

    def cancel(self) -> None:
        """End the process tree (ctqa stops Ray on SIGTERM; then kill). The series finished so far stay in out and
        index.csv: a later run reuses them."""
        if self.state != RUNNING:
            return
        end_process_tree(self._process)
        self.exit_status = self._process.returncode
        self.state = CANCELLED
        self._note("cancelled")

    def rows(self) -> list[IndexRow]:
        """The rows of index.csv of a finished batch; InputError with the process's one-line reason otherwise."""
        if self.state != DONE:
            raise InputError(self.error or f"batch {self.state}")
        return read_index(self.out / INDEX_NAME)
