"""Out-of-process assessment, as SlicerMONAIAuto3DSeg runs its inference: the GUI never computes.

1. write_inputs: the input volume (and reference) as gzip-compressed NRRD and the segmentation as .seg.nrrd into a
   folder of Slicer's temporary folder (segment export to the CT grid then happens in the worker, not in the GUI);
2. AssessmentProcess: `ctqa assess ... --progress json --no-preview --no-compress` in PythonSlicer (Slicer's
   own Python, found like slicer.util.executePythonModule does), started with subprocess.Popen in its own
   process group (on Windows without a console window, as slicer.util.launchConsoleProcess starts processes); two
   reader threads queue its stdout (JSON progress lines) and stderr; poll() drains them without blocking (the
   module's QTimer calls it; a blocking console call loops over it); cancel() asks the whole process tree to end and
   never waits: ended(), polled the same way, kills the tree when it outlives TERMINATE_GRACE_S;
   PythonSlicer is a launcher (CTK's ctkAppLauncher) that runs python-real as its child: on SIGTERM the launcher
   goes at once while python-real still unwinds and writes, so a run has ended only when its whole tree has (POSIX:
   its process group is empty; Windows: its output pipes are closed, and the children psutil saw are gone);
3. on success the caller loads the completed output folder (ctqa.outputs.read_outputs) into MRML (mrml.py).

subprocess.Popen directly, rather than slicer.util.launchConsoleProcess (which wraps it), because cancel needs the
process group, and because the same code then runs headless in the tests. Nothing here touches Qt, and nothing
imports ctqa.pipeline: model choices are checked against the model registry alone (needs_learned_packages).
start_ctqa and the process-tree functions also run `ctqa batch` (batch.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctqa.errors import InputError
from ctqa.io import NRRD_TYPES, write_map
from ctqa.models import registry
from ctqa.outputs import SavedOutputs, read_outputs

#: Folder that holds the `ctqa` package (Slicer puts it on sys.path; the worker gets it on PYTHONPATH).
MODULE_DIR = Path(__file__).resolve().parents[1]
#: States of a run; "running" until the process ends.
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
DEVICES = ("auto", "cpu", "cuda")
#: Seconds a cancelled process gets to clean up (its staging folder) before it is killed; also what a finished run's
#: leftovers in its process group get before they are killed.
TERMINATE_GRACE_S = 5.0
#: Seconds a killed process tree may take to disappear before ended() gives up on it (a process stuck in the kernel),
#: so that wait_ended() never hangs.
KILL_WAIT_S = 5.0
ON_WINDOWS = os.name == "nt"
#: The architecture backbone of a physics-feature score card (= ctqa.models.feature_score.BACKBONE, which imports
#: the physics measures): such a score needs no PyTorch.
FEATURE_SCORE_BACKBONE = "physics-features"
#: The score model choice that skips the 0-4 score (= ctqa.tasks.global_score.NO_SCORE_MODEL).
NO_SCORE_MODEL = "none"


@dataclass
class InputFiles:
    """Files written for one run in folder: the CT, and the optional reference and segmentation."""

    folder: Path
    volume: Path
    reference: Path | None = None
    segmentation: Path | None = None
    node_names: dict[str, str] = field(default_factory=dict)  # file path -> the node it came from, for messages
    acquisition_dicom: str | None = None  # a DICOM file of the series the volume was loaded from (its tags)


@dataclass
class LogLine:
    """One line for the module's log panel: seconds since the start, and the text."""

    seconds: float
    text: str


def python_executable() -> str:
    """Slicer's PythonSlicer when running inside Slicer, else this interpreter (headless use and tests)."""
    return shutil.which("PythonSlicer") or sys.executable


def needs_learned_packages(model: str, score_model: str = "default", denoise_model: str | None = None) -> bool:
    """Whether a run with these choices needs the learned packages (PyTorch & co.), from the model registry alone
    (no ctqa.pipeline, no torch); InputError (one line) for an unknown model or checkpoint, and for a denoiser when
    none is installed, before anything is installed or written.

    They serve a learned quality model, a denoiser, a score network named explicitly, and a default score network
    once PyTorch is there (then only timm & co. come from pip); a physics-feature score needs none of them. Without
    PyTorch a default score network is left out with a note in the run's summary (ctqa.tasks.global_score.resolve).
    """
    learned = registry.resolve("quality_map", model).is_learned
    if denoise_model is not None:
        if denoise_model in ("", registry.DEFAULT_MODEL) and registry.default_model("denoise") is None:
            raise InputError(
                "no denoise model is installed: train one with `ctqa-train denoise` and pass its checkpoint "
                "(X.json or X.safetensors) as the denoise model"
            )
        registry.resolve("denoise", denoise_model)
        learned = True
    skipped = str(score_model).strip().lower() == NO_SCORE_MODEL
    default_score = score_model in ("", registry.DEFAULT_MODEL)
    if skipped or (default_score and registry.default_model("global_score") is None):
        return learned
    card = registry.resolve("global_score", score_model).card
    if card.get("architecture", {}).get("backbone") == FEATURE_SCORE_BACKBONE:
        return learned
    return learned or not default_score or importlib.util.find_spec("torch") is not None


def temporary_folder() -> Path:
    """A new folder of its own for one run's files (tempfile.mkdtemp: a unique name, created atomically; not
    slicer.util.tempDirectory, whose names have millisecond resolution and which reuses an existing folder): inside
    Slicer, in Slicer's temporary folder (slicer.app.temporaryPath, set in the application settings); elsewhere
    (PythonSlicer, the tests) in the system's."""
    import slicer

    if hasattr(slicer, "app"):  # the application sets slicer.app; PythonSlicer and the slicer-core wheel do not
        parent = Path(slicer.app.temporaryPath)  # Slicer creates it when it is read; made sure of all the same
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="CTQualityAssessment-", dir=parent))
    return Path(tempfile.mkdtemp(prefix="CTQualityAssessment-"))


def write_inputs(volume_node, reference_node=None, segmentation_node=None, folder: Path | None = None) -> InputFiles:
    """Write a run's inputs (main thread; no segment export here) into folder, by default a new temporary_folder();
    InputError for unusable nodes, and then the temporary folder is removed again."""
    created = folder is None
    folder = Path(folder or temporary_folder())
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _write_input_files(
            InputFiles(folder, folder / "volume.nrrd"), volume_node, reference_node, segmentation_node
        )
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _write_node(node, path: Path, frame_node=None) -> None:
    """A volume node's voxels as gzip-compressed NRRD (level 1, slabs in parallel threads), in their own type (no
    float copy on the GUI thread; an 8-bit rendering stays 8-bit for the CLI to refuse), on its grid in frame_node's
    frame (the input's: a reference aligned by a registration transform is written where it is shown). NaN and the
    other value checks happen in the worker."""
    import slicer

    from CTQualityAssessmentLib.mrml import grid_from_node

    grid = grid_from_node(node, frame_node)
    voxels = slicer.util.arrayFromVolume(node)
    write_map(voxels if voxels.dtype.name in NRRD_TYPES else voxels.astype(np.float32), grid, path)


def _write_input_files(files: InputFiles, volume_node, reference_node, segmentation_node) -> InputFiles:
    import slicer

    from CTQualityAssessmentLib.mrml import check_same_frame, dicom_file_of

    files.node_names[str(files.volume)] = volume_node.GetName()
    _write_node(volume_node, files.volume)
    files.acquisition_dicom = dicom_file_of(volume_node)
    if reference_node is not None:
        files.reference = files.folder / "reference.nrrd"
        files.node_names[str(files.reference)] = reference_node.GetName()
        _write_node(reference_node, files.reference, frame_node=volume_node)
    if segmentation_node is not None:
        check_same_frame(segmentation_node, volume_node, "segmentation")  # its .seg.nrrd is in its own frame
        files.segmentation = files.folder / "segmentation.seg.nrrd"
        files.node_names[str(files.segmentation)] = segmentation_node.GetName()
        storage = slicer.vtkMRMLSegmentationStorageNode()  # compressed by default (UseCompression is 1)
        storage.SetFileName(str(files.segmentation))
        if not storage.WriteData(segmentation_node):
            raise InputError(f"{segmentation_node.GetName()}: cannot write the segmentation for the assessment")
    return files


def command_line(
    inputs: InputFiles,
    out: Path,
    model: str = "default",
    device: str = "auto",
    window_mm: float | None = None,
    score_model: str = "default",
    denoise_model: str | None = None,
) -> list[str]:
    """The `ctqa assess` command of a run (JSON progress on stdout, no preview.png, maps uncompressed: they are read
    back at once and deleted). score_model: the 0-4 score's model ("default", a name, a checkpoint or "none");
    denoise_model: None, or the denoiser of a run that also denoises the CT and assesses the result (--denoise)."""
    command = [python_executable(), "-m", "ctqa.cli", "assess", str(inputs.volume), "--out", str(out)]
    command += ["--progress", "json", "--no-preview", "--no-compress", "--model", str(model), "--device", device]
    command += ["--score-model", str(score_model)]
    if inputs.reference is not None:
        command += ["--reference", str(inputs.reference)]
    if inputs.segmentation is not None:
        command += ["--roi", str(inputs.segmentation)]
    if window_mm is not None:
        command += ["--window-mm", f"{window_mm:g}"]
    if inputs.acquisition_dicom is not None:
        command += ["--acquisition-from", inputs.acquisition_dicom]
    if denoise_model is not None:
        command += ["--denoise", "--denoise-model", str(denoise_model)]
    return command


def _read_lines(stream, tag: str, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))


def hidden_console() -> dict:
    """Popen arguments that start a process without a console window on Windows, as slicer.util.launchConsoleProcess
    does (STARTUPINFO with STARTF_USESHOWWINDOW and SW_HIDE); none elsewhere."""
    if not ON_WINDOWS:
        return {}
    startup = subprocess.STARTUPINFO()
    startup.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    startup.wShowWindow = subprocess.SW_HIDE
    return {"startupinfo": startup}


def start_ctqa(command: list[str]) -> tuple[subprocess.Popen, queue.Queue, tuple[threading.Thread, ...]]:
    """Start a `ctqa` command line in its own process group (terminate_process_tree ends all it starts), with the
    module folder on PYTHONPATH and no console window; two reader threads (returned: they end when every process
    holding the pipes is gone) queue (tag, line) of its stdout ("out") and stderr ("err") and (tag, None) when a
    stream closes (queued_lines takes them). OSError when it cannot start."""
    paths = [str(MODULE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]  # no empty entry (= the cwd)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    if ON_WINDOWS:
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP, **hidden_console()}
    else:
        group = {"start_new_session": True}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,  # universal newlines: each "\r" redraw of a progress bar arrives as a line
        encoding="utf-8",
        errors="replace",
        env=environment,
        **group,
    )
    lines = queue.Queue()
    readers = tuple(
        threading.Thread(target=_read_lines, args=(stream, tag, lines), daemon=True)
        for stream, tag in ((process.stdout, "out"), (process.stderr, "err"))
    )
    for reader in readers:
        reader.start()
    return process, lines, readers


def queued_lines(lines: queue.Queue) -> list[tuple[str, str | None]]:
    """What start_ctqa's readers queued so far, without blocking."""
    taken = []
    while True:
        try:
            taken.append(lines.get_nowait())
        except queue.Empty:
            return taken


@dataclass
class CtqaProcess:
    """A running `ctqa` command line (start_ctqa): its state, its one-line error and a timed log; poll() takes what
    it printed (never blocks), cancel() ends its process tree. Subclasses say what their output lines mean
    (_handle), which exit statuses are a finished run (FINISHED_STATUSES) and what they are called (KIND)."""

    KIND = "ctqa"
    FINISHED_STATUSES = (0,)

    command: list[str]
    state: str = field(default=RUNNING, init=False)
    error: str | None = field(default=None, init=False)
    exit_status: int | None = field(default=None, init=False)
    log: list[LogLine] = field(default_factory=list, init=False)
    _process: subprocess.Popen | None = field(default=None, init=False)
    _lines: queue.Queue | None = field(default=None, init=False)
    _open_streams: int = field(default=2, init=False)
    _started: float = field(default_factory=time.monotonic, init=False)
    _readers: tuple = field(default=(), init=False)  # start_ctqa's reader threads (Windows: the tree's pipes)
    _children: list = field(default_factory=list, init=False)  # Windows with psutil: the tree seen at cancel/kill
    _kill_at: float | None = field(default=None, init=False)  # when a tree still there gets killed
    _killed_at: float | None = field(default=None, init=False)  # when it was killed
    _gone: bool = field(default=False, init=False)  # the whole tree has ended: never signalled again

    def _launch(self) -> None:
        """Start the command; InputError (one line) when it cannot start."""
        try:
            self._process, self._lines, self._readers = start_ctqa(self.command)
        except OSError as error:
            raise InputError(f"cannot start the {self.KIND} process ({self.command[0]}): {error}") from None
        self._note(f"started: {' '.join(self.command[1:])}")

    def _note(self, text: str) -> None:
        self.log.append(LogLine(time.monotonic() - self._started, text))

    def _handle(self, tag: str, line: str) -> None:
        """One output line: logged, and a `ctqa: error:` line on stderr kept as the error."""
        self._note(line)
        if tag == "err" and line.startswith("ctqa: error: "):
            self.error = line.removeprefix("ctqa: error: ")

    def poll(self) -> str:
        """Take what the process printed so far (never blocks) and return the state."""
        for tag, line in queued_lines(self._lines):
            if line is None:
                self._open_streams -= 1
            elif line.strip():
                self._handle(tag, line.strip() if tag == "err" else line)
        if self.state == RUNNING and self._open_streams == 0 and self._process.poll() is not None:
            self.exit_status = self._process.returncode
            self.state = DONE if self.exit_status in self.FINISHED_STATUSES else FAILED
            if self.state == FAILED and self.error is None:
                self.error = f"the {self.KIND} process ended with exit status {self.exit_status}"
            elapsed = time.monotonic() - self._started
            self._note(f"finished in {elapsed:.1f} s" if self.state == DONE else f"failed: {self.error}")
        return self.state

    def cancel(self) -> None:
        """Ask the process tree to end (SIGTERM lets ctqa remove its staging folder and stop Ray; on Windows, which
        has no such request for console processes, the tree is killed at once) and mark the run cancelled; never
        waits: ended() kills the tree if it is still there TERMINATE_GRACE_S later."""
        if self.state != RUNNING:
            return
        self.state = CANCELLED
        self._note("cancelled")
        self._kill_at = time.monotonic() + TERMINATE_GRACE_S
        try:
            if ON_WINDOWS:
                self.kill()
            else:
                terminate_process_tree(self._process)
        except OSError as error:  # ended() still kills, or gives up, later
            self._note(f"could not end the process tree: {error}")

    def _tree_alive(self) -> bool:
        """Whether anything of the run's process tree may still be running, the launcher (PythonSlicer) aside: on
        POSIX a process of its group; on Windows a holder of its output pipes (the reader threads have not seen EOF)
        or a child psutil saw at cancel or kill."""
        if ON_WINDOWS:
            return any(reader.is_alive() for reader in self._readers) or any(
                _still_running(child) for child in self._children
            )
        return group_alive(self._process.pid)

    def ended(self) -> bool:
        """True once the whole process tree has ended: the launcher has exited (its exit status is then kept) and
        nothing of its tree is left (_tree_alive), so that no process writes in the run's files any more. A
        cancelled tree still there TERMINATE_GRACE_S after cancel() is killed, and so are leftovers of a finished run
        TERMINATE_GRACE_S after its launcher exited; a killed tree still there KILL_WAIT_S later is given up on (a
        log line). Never blocks: poll it from a timer."""
        if self._gone:
            return True
        exited = self._process.poll() is not None
        if exited and self.exit_status is None:
            self.exit_status = self._process.returncode
        if exited and not self._tree_alive():
            self._gone = True
            return True
        now = time.monotonic()
        if self._killed_at is not None:
            if now - self._killed_at < KILL_WAIT_S:
                return False
            self._note(f"the process tree was still there {KILL_WAIT_S:g} s after it was killed; given up on")
            self._gone = True
            return True
        if self._kill_at is None and exited:  # a finished run that left processes in its group
            self._kill_at = now + TERMINATE_GRACE_S
        if self._kill_at is not None and now >= self._kill_at:
            self.kill()
        return False

    def kill(self) -> None:
        """Kill the whole process tree at once, the launcher's children too when the launcher has already exited (a
        cancel's grace is over, or Slicer is exiting and no timer will poll ended() again); never waits."""
        if self._gone:
            return
        self._killed_at = time.monotonic()  # before the kill: a kill that raises is not repeated at each poll
        self._kill_at = None
        if not self._children:
            self._children = tree_children(self._process)
        kill_process_tree(self._process, self._children)

    def wait_ended(self, interval_s: float = 0.05) -> None:
        """Block until the whole process tree has ended (console and batch use, never the GUI); see ended()."""
        while not self.ended():
            time.sleep(interval_s)


@dataclass
class AssessmentProcess(CtqaProcess):
    """One running `ctqa assess --progress json`; poll() for progress, cancel() to stop it, result() for the loaded
    outputs, cleanup() once it has ended() to delete its files."""

    KIND = "assessment"

    inputs: InputFiles = None
    out: Path = None
    fraction: float = field(default=0.0, init=False)
    stage: str = field(default="starting", init=False)

    @classmethod
    def start(
        cls,
        inputs: InputFiles,
        model: str = "default",
        device: str = "auto",
        window_mm: float | None = None,
        score_model: str = "default",
        denoise_model: str | None = None,
    ):
        """Start the assessment of inputs (with denoise_model: also of the denoised CT); the outputs go to
        inputs.folder / "out"."""
        out = inputs.folder / "out"
        command = command_line(inputs, out, model, device, window_mm, score_model, denoise_model)
        job = cls(command, inputs=inputs, out=out)
        try:
            job._launch()
        except InputError:
            job.cleanup()
            raise
        return job

    def _handle(self, tag: str, line: str) -> None:
        if tag == "err":
            super()._handle(tag, line)
            if self.error is not None:
                for path, name in self.inputs.node_names.items():  # name the node, not its temporary file
                    self.error = self.error.replace(path, name)
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):  # text, or JSON that is no event (a number, a list): a log line
            self._note(line)
            return
        if event.get("event") == "progress":
            try:
                fraction = float(event["fraction"])
            except (KeyError, TypeError, ValueError):
                self._note(line)
                return
            if event.get("stage") != self.stage:
                self._note(f"{event.get('stage')}")
            self.fraction, self.stage = fraction, str(event.get("stage", ""))
        elif event.get("event") == "done":
            self._note(f"done: {len(event.get('outputs', []))} files")

    def wait(self, progress=None, interval_s: float = 0.05) -> str:
        """Block until the process ends (the Python-console and batch path); progress(fraction, stage) on changes."""
        reported = None
        while self.poll() == RUNNING:
            if progress is not None and (self.fraction, self.stage) != reported:
                reported = (self.fraction, self.stage)
                progress(self.fraction, self.stage)
            time.sleep(interval_s)
        return self.state

    def result(self) -> SavedOutputs:
        """The completed outputs (state DONE); InputError with the process's one-line reason otherwise."""
        if self.state != DONE:
            raise InputError(self.error or f"assessment {self.state}")
        return read_outputs(self.out)

    @property
    def folder(self) -> Path:
        """The run's temporary folder (inputs and outputs)."""
        return self.inputs.folder

    def cleanup(self) -> bool:
        """Remove the run's temporary folder (inputs and outputs); True once it is gone. False when something in it
        could not be removed (on Windows a file a process of the tree still holds open): try again later."""
        shutil.rmtree(self.inputs.folder, ignore_errors=True)
        return not self.inputs.folder.exists()


def group_alive(pgid: int) -> bool:
    """POSIX: whether a process of the process group pgid is still there. os.killpg(pgid, 0) finds the group while
    any member exists, even after its leader exited; on Linux a group of zombies only (exited, not reaped yet) counts
    as gone (/proc/PID/stat)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member this user may not signal: it exists
        return True
    return _live_group_member(pgid)


def _live_group_member(pgid: int) -> bool:
    """Linux: whether /proc lists a process of group pgid that is not a zombie; True where there is no /proc."""
    if not os.path.isfile("/proc/self/stat"):
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:  # it ended meanwhile
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def tree_children(process: subprocess.Popen) -> list:
    """Windows: the processes the launcher started (psutil.Process.children, recursive), to kill and to watch even
    after the launcher is gone; [] elsewhere (the process group does that), without psutil, or when the launcher
    has exited."""
    if not ON_WINDOWS or process.poll() is not None:
        return []
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def _still_running(child) -> bool:
    """Whether a psutil.Process is still running (is_running also checks that its pid was not reused)."""
    try:
        return child.is_running()
    except Exception:  # psutil.Error: it is gone
        return False


def taskkill_path() -> str:
    """Windows' taskkill.exe by its full path (not whatever "taskkill" the PATH finds first)."""
    return os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "taskkill.exe")


def terminate_process_tree(process: subprocess.Popen) -> None:
    """Ask a process started in its own group (start_ctqa), and everything it started, to end; never waits. On
    POSIX the whole group gets SIGTERM, also once its leader (the launcher) has exited; on Windows, where a console
    process tree has no SIGTERM, the tree is killed."""
    if ON_WINDOWS:
        kill_process_tree(process)
    else:
        with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
            os.killpg(process.pid, signal.SIGTERM)


def kill_process_tree(process: subprocess.Popen, children=()) -> None:
    """Kill a process started in its own group (start_ctqa) and everything it started; never waits. POSIX: SIGKILL
    to the whole group, also once its leader has exited. Windows: taskkill /F /T while the launcher is there (it runs
    on its own, without a console window), and children (tree_children, psutil) killed one by one."""
    if ON_WINDOWS:  # the launcher's children are not in a signalable group; taskkill /T ends the tree
        if process.poll() is None:
            command = [taskkill_path(), "/F", "/T", "/PID", str(process.pid)]
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **hidden_console())
        for child in children:
            with contextlib.suppress(Exception):  # psutil.Error: it is gone
                child.kill()
    else:
        with contextlib.suppress(ProcessLookupError):  # the group has ended
            os.killpg(process.pid, signal.SIGKILL)


def run(
    volume_node,
    segmentation_node=None,
    model: str = "default",
    reference_volume_node=None,
    window_mm: float | None = None,
    device: str = "auto",
    progress=None,
    show: bool = True,
    opacity: float | None = None,
    score_model: str = "default",
    denoise_model: str | None = None,
):
    """Assess a volume node out of process and put the results in its scene, blocking (console and batch use).

    progress(fraction, stage) as the process reports; show: put the quality map over the CT in every slice view;
    score_model: the 0-4 score's model ("default": the installed one, skipped with a note when there is none; a
    name; a checkpoint; "none"); denoise_model: None, or a denoiser ("default", a name, a checkpoint): the CT is
    also denoised into a new volume node and assessed (Denoise and compare; volume_node is never changed).
    Returns mrml.OutputNodes; InputError with the one-line reason for unusable input.
    """
    from CTQualityAssessmentLib import mrml

    if volume_node is None:
        raise InputError("no input volume selected")
    if device not in DEVICES:
        raise InputError(f"{device}: unknown device; choose one of {', '.join(DEVICES)}")
    needs_learned_packages(model, score_model, denoise_model)  # an unknown model is refused before anything is written
    job = AssessmentProcess.start(
        write_inputs(volume_node, reference_volume_node, segmentation_node),
        model,
        device,
        window_mm,
        score_model,
        denoise_model,
    )
    try:
        job.wait(progress)
        outputs = mrml.outputs_to_scene(job.result(), volume_node, segmentation_node)
    finally:
        job.cancel()  # no-op unless interrupted (Ctrl-C in the console)
        job.wait_ended()  # the whole tree (PythonSlicer's python-real too) before its files are removed
        if not job.cleanup():
            logging.warning(f"CTQualityAssessment: could not remove {job.folder}")
    if show:
        mrml.show_overlay(outputs.quality_map, volume_node, mrml.DEFAULT_OPACITY if opacity is None else opacity)
    return outputs
