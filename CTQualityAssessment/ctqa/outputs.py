"""The output-folder contract of `ctqa assess` (docs/contract.md): which files, how they appear atomically, and
reading a completed folder back (read_outputs: the Slicer module loads a run's results this way).

A run writes every file into a staging folder inside --out, then, with SIGINT/SIGTERM held back, removes the old
summary.json, moves the new files in (os.replace: each file is whole or absent), removes the files of an earlier run
that this run did not produce, and moves summary.json in last. So `summary.json` exists only beside a complete,
unmixed set of outputs; it lists them under "outputs". Runs into one folder take turns: an exclusive lock on
`--out/.ctqa.lock` is held from staging to commit (released by the OS if the process dies); the lock file is
removed when the run ends.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctqa.errors import InputError
from ctqa.results import RoiRow, SliceRow, table_column_types

OUTPUT_FILES = {
    "quality_map": "quality_map.nrrd",
    "noise_map": "noise_map.nrrd",
    "reference_ssim_map": "reference_ssim_map.nrrd",
    "denoised_ct": "denoised_ct.nrrd",
    "quality_map_denoised": "quality_map_denoised.nrrd",
    "slices": "slices.csv",
    "rois": "rois.csv",
    "summary": "summary.json",
    "preview": "preview.png",
}
LOCK_NAME = ".ctqa.lock"
STAGING_PREFIX = ".ctqa-staging-"
#: Prefix of the writability probe: not STAGING_PREFIX, so a staging folder always means the lock is held.
PROBE_PREFIX = ".ctqa-probe-"


def check_output_folder(path: str | os.PathLike) -> Path:
    """The output folder, checked before any work: not empty, not a file, creatable and writable.

    Nothing is created here; InputError (one line) names the path and why it cannot be used.
    """
    if not str(path).strip():
        raise InputError("output folder is an empty string; name a folder with --out")
    folder = Path(path)
    try:
        if folder.is_symlink() and not folder.exists():
            raise InputError(f"{folder}: output path is a broken symbolic link")
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: output path is an existing file, not a folder")
        occupied = [name for name in OUTPUT_FILES.values() if (folder / name).is_dir()]
        if occupied:
            raise InputError(f"{folder / occupied[0]}: a folder where the output file must go")
        existing = folder.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"{folder}: cannot create the output folder: {existing} is a file")
        # a real probe: permissions, read-only file systems and root's privileges all answer truthfully
        os.rmdir(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=existing))
    except OSError as error:
        raise InputError(f"{str(folder)[:200]}: cannot write the output folder ({error.strerror or error})") from None
    return folder


def check_inputs_survive(folder: Path, inputs: list) -> None:
    """Refuse a run whose outputs would replace one of its own input files (e.g. INPUT = --out/quality_map.nrrd)."""
    targets = {(folder / name).resolve() for name in OUTPUT_FILES.values()}
    for path in inputs:
        if path is not None and Path(path).resolve() in targets:
            raise InputError(f"{path}: an input inside --out {folder} would be overwritten by this run's outputs")


def _lock(handle) -> None:
    """Exclusive lock on an open file, waiting for other runs (POSIX flock; msvcrt on Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:  # LK_LOCK gives up after 10 attempts of a second: keep waiting for the other run
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _acquire_lock(path: Path):
    """Open and lock path, waiting for other runs; retried when the holder removed the file meanwhile."""
    while True:
        handle = open(path, "a+b")  # noqa: SIM115 (held until the run ends)
        _lock(handle)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # we locked a file the previous holder had already removed


@contextmanager
def _signals_held():
    """Defer SIGINT/SIGTERM until the block ends, so a commit is not cut in half.

    Python runs signal handlers in the main thread only, whichever thread the OS delivers to; a handler that just
    records the signal therefore defers it reliably. It is re-raised when the block ends. No-op outside the main
    thread (the Slicer runner's worker process runs ctqa in its main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: arrived.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if arrived:
            signal.raise_signal(arrived[0])


class OutputFolder:
    """Stage a run's files, then commit them into the folder all at once (see the module docstring).

    with OutputFolder(folder) as out:
        write(out.stage("quality_map")) ...
        out.commit(summary_json)
    Leaving the block without commit() (an error, Ctrl-C) leaves the folder as it was, staging removed.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = check_output_folder(folder)
        self._staged: dict[str, Path] = {}
        self._staging: Path | None = None
        self._lock_handle = None

    def __enter__(self) -> OutputFolder:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_handle = _acquire_lock(self.folder / LOCK_NAME)
            for leftover in self.folder.glob(STAGING_PREFIX + "*"):  # from a killed run: we hold the lock now
                shutil.rmtree(leftover, ignore_errors=True)
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        except OSError as error:
            self._release()
            raise InputError(f"{self.folder}: cannot write the output folder: {error.strerror or error}") from None
        except BaseException:  # Ctrl-C / SIGTERM while entering (no __exit__ then): leave no lock or staging folder
            self._release()
            raise
        return self

    def stage(self, role: str) -> Path:
        """Path in the staging folder to write the file of `role` (a key of OUTPUT_FILES) to."""
        path = self._staging / OUTPUT_FILES[role]
        self._staged[role] = path
        return path

    def commit(self, summary: dict) -> dict[str, Path]:
        """Write summary.json (with the list of outputs) and move everything into the folder; paths by role."""
        names = sorted({OUTPUT_FILES[role] for role in self._staged} | {OUTPUT_FILES["summary"]})
        summary_path = self.stage("summary")
        summary_path.write_text(json.dumps({**summary, "outputs": names}, indent=2) + "\n", encoding="utf-8")
        final = {role: self.folder / path.name for role, path in self._staged.items()}
        stale = self._previous_outputs() - set(names)
        with _signals_held():
            (self.folder / OUTPUT_FILES["summary"]).unlink(missing_ok=True)  # from here on: "not done"
            for role, path in self._staged.items():
                if role != "summary":
                    os.replace(path, final[role])
            for name in stale:
                (self.folder / name).unlink(missing_ok=True)
            os.replace(summary_path, final["summary"])
        return final

    def _previous_outputs(self) -> set[str]:
        """Files an earlier ctqa run wrote here: those its summary.json lists (the contract's names for versions
        that kept no list). Without a summary.json written by ctqa nothing counts: a user's files are never removed.
        """
        try:
            earlier = json.loads((self.folder / OUTPUT_FILES["summary"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(earlier, dict) or not str(earlier.get("tool", "")).startswith("ctqa "):
            return set()
        listed = earlier.get("outputs", list(OUTPUT_FILES.values()))
        known = set(OUTPUT_FILES.values())  # never anything else, whatever a summary says
        names = {name for name in listed if isinstance(name, str) and name in known}
        return {name for name in names if (self.folder / name).is_file()}

    def _release(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._lock_handle is not None:
            path = Path(self._lock_handle.name)
            if os.name == "posix":
                path.unlink(missing_ok=True)  # still held: no other run can own this file
            self._lock_handle.close()  # closing releases the lock
            if os.name != "posix":  # Windows cannot remove an open file; another run may hold it by now
                try:
                    path.unlink(missing_ok=True)
                except PermissionError:
                    pass
            self._lock_handle = None

    def __exit__(self, *exc_info) -> None:
        self._release()


@contextmanager
def written_whole(path: str | os.PathLike):
    """Yield a temporary path beside path (same name after a prefix, so writers that go by the extension work) and,
    when the block succeeds, move it onto path with os.replace: path is then whole or, after an error, Ctrl-C or
    SIGTERM, as it was. The folder is created when missing; InputError naming path when it cannot be written."""
    target = Path(path)
    temporary = target.with_name(f".partial-{os.getpid()}-{target.name}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, target)
    except OSError as error:
        raise InputError(f"{target}: cannot write ({error.strerror or error})") from None
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file (a report, a table) whole or not at all (written_whole); returns its path."""
    with written_whole(path) as partial:
        partial.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    """A CSV table with a header; None is written as an empty cell."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})


@dataclass
class SavedOutputs:
    """A complete output folder read back: maps (z, y, x) by role (float32; the denoised CT int16 or float32, see
    tasks/denoise.storage_array), table rows and the summary.

    Table cells are int, float or str as the columns hold them (None for empty cells); maps absent from the run
    (reference SSIM without --reference) are missing from `maps`, rois is None without --roi.
    """

    folder: Path
    maps: dict[str, np.ndarray]
    slices: list[dict]
    rois: list[dict] | None
    summary: dict


def read_csv(path: Path, types: dict[str, type]) -> list[dict]:
    """Rows of a contract table, each cell of its column's type (None for empty cells)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {key: (None if value == "" else types[key](value)) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def read_outputs(folder: str | os.PathLike) -> SavedOutputs:
    """Read a folder a run completed (summary.json present); InputError for an incomplete one."""
    import SimpleITK as sitk

    folder = Path(folder)
    summary_path = folder / OUTPUT_FILES["summary"]
    if not summary_path.is_file():
        raise InputError(f"{folder}: no complete assessment here (summary.json missing)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    listed = set(summary.get("outputs", []))
    maps = {
        role: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
        for role, name in OUTPUT_FILES.items()
        if name.endswith(".nrrd") and name in listed
    }
    rois = None
    if OUTPUT_FILES["rois"] in listed:
        rois = read_csv(folder / OUTPUT_FILES["rois"], table_column_types(RoiRow))
    slices = read_csv(folder / OUTPUT_FILES["slices"], table_column_types(SliceRow))
    return SavedOutputs(folder, maps, slices, rois, summary)
