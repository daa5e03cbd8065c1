"""`ctqa batch` from 3D Slicer: the core's own command line in its own process, as the shell runs it.

Slicer's main thread holds the GIL even while idle, so neither the series work nor Ray's driver may live in Slicer's
process: BatchProcess runs `python -m ctqa.cli batch ...` in PythonSlicer (process.python_executable), started like an
assessment (process.start_ctqa: own process group, the module folder on PYTHONPATH, no console window), keeps its
output lines as the log (the progress bar's redraws, the failed series, the closing summary) and reads index.csv when
it ends. Exit status 1 (some series failed) is a finished batch: the rows say which series failed and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ctqa.batch_index import INDEX_NAME, IndexRow, read_index
from ctqa.errors import InputError
from CTQualityAssessmentLib.process import DONE, RUNNING, CtqaProcess, python_executable

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
class BatchProcess(CtqaProcess):
    """One running `ctqa batch`; poll() for the state and new log lines, cancel() to stop it, rows() for index.csv."""

    KIND = "batch"
    FINISHED_STATUSES = FINISHED_STATUSES

    out: Path = None
    _wall_start: float = field(default_factory=time.time, init=False)

    @classmethod
    def start(cls, root: str | Path, out: str | Path, **options) -> BatchProcess:
        """Start `ctqa batch root --out out` (options: batch_command's keywords)."""
        job = cls(batch_command(root, out, **options), out=Path(out))
        job._launch()
        return job

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
            self.wait_ended()
            raise

    def rows(self) -> list[IndexRow]:
        """The rows of index.csv of a finished batch; InputError with the process's one-line reason otherwise."""
        if self.state != DONE:
            raise InputError(self.error or f"batch {self.state}")
        index = self.out / INDEX_NAME
        if not index.is_file() or index.stat().st_mtime < self._wall_start:  # exit 1 from a crash, not failed series
            last = self.log[-2].text if len(self.log) > 1 else "no output"
            raise InputError(f"the batch ended without writing {index} ({last})")
        return read_index(index)
