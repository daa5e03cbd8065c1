"""`ctqa batch`: every CT series under a folder, assessed on Ray, one output folder each (the `ctqa assess` contract),
resumable and failure-isolated; index.csv (batch_index.py) and the HTML reports (reports/).

Ray is the scheduler: a local instance sized to this machine, or an existing cluster (address); the same tasks
either way. Each series is one task asking for its CPUs and an estimate of its peak memory, so Ray never runs more
series at once than fit. A series whose folder holds complete outputs (summary.json is committed last) made from
the same input files and options (the fingerprint in summary.json's "batch" block) is reused, not assessed again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from ctqa import __version__
from ctqa.batch_index import ASSESSED, FAILED, INDEX_NAME, REPORT_NAME, REUSED, IndexRow, row_from_summary, write_index
from ctqa.dicom import DicomSeries, add_image, is_localizer, read_dicom_header
from ctqa.errors import InputError, first_line
from ctqa.io import VOLUME_EXTENSIONS, detached_data_files
from ctqa.outputs import OUTPUT_FILES
from ctqa.physics.noise import DEFAULT_WINDOW_MM

RAY_MISSING = "ctqa batch runs on Ray, which is not installed: pip install 'ctqa[batch]' (or pip install ray)"
#: Peak memory of one series (bytes): a process baseline with the models loaded, plus bytes per voxel, measured by
#: benchmarks/bench_assess.py (the streamed pass of issue 23: about 800 MiB + 0.65 MiB per 512 x 512 slice, i.e.
#: 2.6 B/voxel: the int16 volume and its window grid; the maps are in staging files) with a margin; denoising
#: assesses a second volume and holds the denoised CT whole (not re-measured since the streaming).
PEAK_BASE_BYTES = 800 << 20
PEAK_BYTES_PER_VOXEL = 4
PEAK_BYTES_PER_VOXEL_DENOISE = 30
#: GPU share a series asks for when the cluster has GPUs and --device is not cpu (Ray then gives its worker that GPU
#: in CUDA_VISIBLE_DEVICES): two series share one; a series holds one batch of slices on it.
GPU_SHARE = 0.5
#: Share of the machine's available memory the local Ray instance lets the series use.
MEMORY_SHARE = 0.8
#: Results taken from Ray at a time (ray.wait over a long list costs time in proportion to it).
WAIT_BATCH = 64
#: index.csv is rewritten after a series completes at most this often (seconds; and when the run ends or stops).
INDEX_SAVE_INTERVAL_S = 2.0
#: Seconds to wait for a cluster's address to answer before refusing it.
CONNECT_TIMEOUT_S = 5.0
#: Files that are never a CT series of their own: segmentations, and the maps and tables of ctqa's outputs.
SKIPPED_SUFFIXES = (".seg.nrrd",)
OUTPUT_NAMES = frozenset(OUTPUT_FILES.values()) | {INDEX_NAME, REPORT_NAME}

ProgressCallback = Callable[[int, int, IndexRow], None]


@dataclass(frozen=True)
class AssessOptions:
    """The `ctqa assess` options a batch applies to every series (see pipeline.assess)."""

    model: str = "default"
    device: str = "auto"
    window_mm: float = DEFAULT_WINDOW_MM
    scaling: str | None = None
    regularize: bool = False
    series_model: str = "default"
    score_model: str = "default"
    denoise_model: str | None = None
    preview: bool = True


@dataclass(frozen=True)
class SeriesInput:
    """One CT series found under the batch root.

    id: its output folder's name (unique in the batch); path: the volume file, or the folder holding the DICOM
    series; series_uid: its SeriesInstanceUID ("" for volume files and DICOM without one); files: every file of the
    series (read as one series; what the fingerprint covers; a .mhd/.nhdr header first, then its data file);
    voxels: its size (z * y * x), for the memory estimate; modality: the DICOM Modality ("" for volume files).
    """

    id: str
    path: str
    series_uid: str
    files: tuple[str, ...]
    voxels: int
    modality: str = ""

    @property
    def input(self) -> str:
        """What is read and shown as the series' input: its one file, or the folder of a series of several files."""
        return self.files[0] if len(self.files) == 1 else self.path


@dataclass
class Discovery:
    """What a root holds: the series to assess, rows for files that cannot be read as one, and what was left out
    (other modalities, localizers, non-image DICOM), one phrase each."""

    series: list[SeriesInput]
    unreadable: list[IndexRow]
    left_out: list[str]


@dataclass
class BatchResult:
    """The rows of a batch (index.csv order) and where its outputs are."""

    out: Path
    rows: list[IndexRow]
    left_out: list[str]

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)


def _slug(text: str) -> str:
    """A folder-name-safe version of text (letters, digits, ._-), at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "series"


def _stem(name: str) -> str:
    for extension in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def _volume_voxels(path: str) -> int:
    """z * y * x of a volume file from its header (0 when unreadable: reading it later says why)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 0
    return math.prod(reader.GetSize())


def _unique_ids(items: list, key: Callable[[object], str]) -> list:
    """Series (or rows) with ids made unique, ignoring case, by a suffix of key(item)'s hash where two would share a
    folder or a row."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.id.lower()] = counts.get(item.id.lower(), 0) + 1
    return [
        replace(item, id=f"{item.id}-{hashlib.sha1(key(item).encode()).hexdigest()[:8]}")
        if counts[item.id.lower()] > 1
        else item
        for item in items
    ]


def _is_ctqa_output(folder: Path, names: list[str]) -> bool:
    """A folder `ctqa assess` or a batch wrote: its summary.json says tool "ctqa ...", or the batch's index.csv."""
    if INDEX_NAME in names and REPORT_NAME in names:
        return True
    if OUTPUT_FILES["summary"] not in names:
        return False
    try:
        summary = json.loads((folder / OUTPUT_FILES["summary"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and str(summary.get("tool", "")).startswith("ctqa ")


def find_series(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> Discovery:
    """Every CT series under root: volume files (NIfTI, NRRD, MHA) one each, DICOM files grouped by
    SeriesInstanceUID (localizers and other modalities left out). exclude: a folder not to look in (the batch's
    own output folder when it lies inside root); ctqa's output folders (a summary.json ctqa wrote, a batch's
    index.csv) are not looked in, nor are symbolic links to folders. Second copies of a DICOM image (same
    SOPInstanceUID in one series) are left out with a note."""
    root = Path(root).absolute()
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; `ctqa assess` takes one file")
    skipped = Path(exclude).resolve() if exclude is not None else None
    volumes: list[SeriesInput] = []
    dicom: dict[str, DicomSeries] = {}
    instances: set[tuple[str, str]] = set()
    unreadable: list[IndexRow] = []
    non_image = copies = 0
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".") and (here / name).resolve() != skipped
        )
        if _is_ctqa_output(here, names):
            subfolders[:] = []  # outputs of ctqa, not input
            continue
        for name in sorted(names):
            path = here / name
            relative = path.relative_to(root).as_posix()
            if name.startswith(".") or name.lower().endswith(SKIPPED_SUFFIXES) or name in OUTPUT_NAMES:
                continue
            if name.lower().endswith(VOLUME_EXTENSIONS):
                files = (str(path), *detached_data_files(path))  # a .mhd/.nhdr header and its data file
                volumes.append(SeriesInput(_slug(_stem(relative)), str(path), "", files, _volume_voxels(str(path))))
                continue
            try:
                header = read_dicom_header(str(path))
            except InputError as error:
                unreadable.append(IndexRow(id=_slug(relative), input=str(path), status=FAILED, reason=str(error)))
                continue
            if header is None:
                continue
            if "PixelData" not in header:
                non_image += 1
                continue
            uid = str(header.get("SeriesInstanceUID", ""))
            key = uid or f"{folder}/<no SeriesInstanceUID>"
            instance = str(header.get("SOPInstanceUID", "")) or str(path)
            if (key, instance) in instances:  # a second copy of an image (a backup, a double export)
                copies += 1
                continue
            instances.add((key, instance))
            add_image(dicom, header, str(path), key=key)
    series, left_out = _dicom_inputs(list(dicom.values()), root)
    if non_image:
        left_out.append(f"{non_image} DICOM file{'s' if non_image > 1 else ''} without pixel data")
    if copies:
        left_out.append(f"{copies} second cop{'ies' if copies > 1 else 'y'} of DICOM images (same SOPInstanceUID)")
    found = _unique_ids(sorted(volumes + series, key=lambda item: item.id), lambda item: item.path + item.series_uid)
    return Discovery(found, _unique_ids(unreadable, lambda row: row.input), left_out)


def _dicom_inputs(found: list[DicomSeries], root: Path) -> tuple[list[SeriesInput], list[str]]:
    """The CT series among the DICOM series found under root, and a phrase for each one left out (localizers, other
    modalities). A series' id: its folder and SeriesNumber_SeriesDescription, or its file for a one-file series."""
    inputs, left_out = [], []
    for entry in found:
        header, files = entry.first_header, sorted(item.path for item in entry.slices)
        if entry.modality != "CT" or is_localizer(header):
            kind = "localizer" if is_localizer(header) else entry.modality or "unknown modality"
            left_out.append(f"{kind} series {entry.uid} ({len(files)} files)")
            continue
        folder = Path(os.path.commonpath(files)) if len(files) > 1 else Path(files[0]).parent
        relative = folder.relative_to(root).as_posix() if folder != root else root.name
        named = "_".join(str(header.get(key) or "") for key in ("SeriesNumber", "SeriesDescription"))
        single = re.sub(r"(?i)\.(dcm|ima)$", "", Path(files[0]).relative_to(root).as_posix())
        label = f"{relative}_{named}" if len(files) > 1 else single
        voxels = len(files) * max(rows * columns for rows, columns in entry.sizes)
        inputs.append(SeriesInput(_slug(label), str(folder), entry.uid, tuple(files), voxels, "CT"))
    return inputs, left_out


def resolved_models(options: AssessOptions) -> dict:
    """The model specs (registry.ModelSpec, None where none runs) the options name, by role."""
    from ctqa.pipeline import resolve_denoise_model, resolve_model, resolve_score_model, resolve_series_model

    return {
        "model": resolve_model(options.model),
        "series_model": resolve_series_model(options.series_model),
        "score_model": resolve_score_model(options.score_model),
        "denoise_model": resolve_denoise_model(options.denoise_model) if options.denoise_model else None,
    }


def model_identity(models: dict) -> str:
    """What the options' model names resolve to on this machine (models: resolved_models), for the fingerprint:
    each model's name, card and the modification times of its card and weights (a checkpoint retrained under the same
    path changes it; the score model is null while PyTorch is missing, so installing it changes it too)."""

    def identity(spec) -> list | None:
        if spec is None:
            return None
        files = [spec.card_path, spec.card_path.with_suffix(".safetensors")] if spec.card_path else []
        return [spec.name, *(f"{path}@{path.stat().st_mtime_ns}" for path in files if path.is_file())]

    return json.dumps({role: identity(spec) for role, spec in models.items()}, sort_keys=True)


def fingerprint(series: SeriesInput, options: AssessOptions, models: str = "") -> str:
    """sha256 of what a series' outputs depend on: ctqa's version, the options, the models they resolve to
    (model_identity) and each input file's path, size and modification time (a changed, added or removed file
    changes it). OSError when a file has gone."""
    settings = {"ctqa": __version__, "options": asdict(options), "models": models}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(series.series_uid.encode())
    for path in series.files:
        stat = os.stat(path)
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def completed_summary(folder: Path, expected_fingerprint: str) -> dict | None:
    """The summary.json of a complete output folder made from the same input and options, else None."""
    try:
        summary = json.loads((folder / OUTPUT_FILES["summary"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or (summary.get("batch") or {}).get("fingerprint") != expected_fingerprint:
        return None
    if not all((folder / name).is_file() for name in summary.get("outputs", [])):
        return None
    return summary


def peak_bytes(series: SeriesInput, options: AssessOptions) -> int:
    """Estimated peak memory of assessing one series (bytes; see PEAK_BASE_BYTES)."""
    per_voxel = PEAK_BYTES_PER_VOXEL_DENOISE if options.denoise_model else PEAK_BYTES_PER_VOXEL
    return PEAK_BASE_BYTES + per_voxel * series.voxels


def _write_report(folder: Path) -> str:
    """The series report (reports/series_report.py); "" when it could not be drawn (the outputs stand)."""
    try:
        from ctqa.reports.series_report import write_series_report

        write_series_report(folder)
    except Exception as error:  # a report is a view of complete outputs: never fail the series for it
        print(f"ctqa: warning: {folder}: report not written ({first_line(error)})", file=sys.stderr)
        return ""
    return f"{folder.name}/{REPORT_NAME}"


def assess_series(series: SeriesInput, options: AssessOptions, out: str, expected_fingerprint: str) -> IndexRow:
    """Assess one series into out/<id>/ (the `ctqa assess` contract, summary.json with a "batch" block holding
    expected_fingerprint) and write its report; the index row. Any failure becomes a failed row with a one-line
    reason (this runs in a Ray worker)."""
    from ctqa.io import read_volume
    from ctqa.pipeline import assess, write_outputs
    from ctqa.staging import tune_allocator

    tune_allocator()  # this worker process assesses volumes (staging.tune_allocator)
    folder = Path(out) / series.id
    start = time.perf_counter()
    try:
        volume = read_volume(
            series.input,
            scaling=options.scaling,
            regularize=options.regularize,
            dicom_files=list(series.files) if Path(series.input).is_dir() else None,
            compact=True,  # int16 HU stays int16: half the memory of each worker
        )
        assessment = assess(
            volume,
            model=options.model,
            window_mm=options.window_mm,
            device=options.device,
            series_model=options.series_model,
            score_model=options.score_model,
            denoise_model=options.denoise_model,
        )
        runtime = time.perf_counter() - start
        batch_block = {
            "fingerprint": expected_fingerprint,
            "series_uid": series.series_uid,
            "runtime_s": round(runtime, 2),
            "worker_peak_rss_mib": _peak_rss_mib(),
        }
        write_outputs(assessment, folder, preview=options.preview, extra={"batch": batch_block})
        summary = json.loads((folder / OUTPUT_FILES["summary"]).read_text(encoding="utf-8"))
    except InputError as error:
        return _failed(series, str(error), time.perf_counter() - start)
    except MemoryError:
        return _failed(series, "out of memory (run fewer workers: --workers)", time.perf_counter() - start)
    except Exception as error:  # isolate the series: the batch goes on, the row says what broke
        return _failed(series, f"{type(error).__name__}: {first_line(error)}", time.perf_counter() - start)
    report = _write_report(folder)
    return _done_row(series, summary, ASSESSED, time.perf_counter() - start, report)


def _done_row(series: SeriesInput, summary: dict, status: str, runtime_s: float, report: str) -> IndexRow:
    return row_from_summary(
        series.id,
        series.input,
        series.series_uid,
        summary,
        status=status,
        modality=series.modality or "CT",
        runtime_s=round(runtime_s, 2),
        report=report,
    )


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far (MiB; a Ray worker's over the series it ran), None off POSIX."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)


def _failed(series: SeriesInput, reason: str, runtime: float) -> IndexRow:
    return IndexRow(
        id=series.id,
        input=series.input,
        series_uid=series.series_uid,
        status=FAILED,
        reason=reason,
        modality=series.modality,
        runtime_s=round(runtime, 2),
    )


def _reused_row(series: SeriesInput, folder: Path, summary: dict) -> IndexRow:
    """The row of a series reused from an earlier run; its report is drawn again unless it is newer than the
    summary (a run stopped between the commit and the report leaves an older one)."""
    report_path, summary_path = folder / REPORT_NAME, folder / OUTPUT_FILES["summary"]
    current = report_path.is_file() and report_path.stat().st_mtime_ns >= summary_path.stat().st_mtime_ns
    report = f"{series.id}/{REPORT_NAME}" if current else _write_report(folder)
    earlier = float((summary.get("batch") or {}).get("runtime_s") or math.nan)  # reading and assessing
    return _done_row(series, summary, REUSED, earlier, report)


def default_workers(series: list[SeriesInput], options: AssessOptions) -> int:
    """Series run at once on this machine: one per core, fewer when the largest series' peak memory times that many
    would not fit in MEMORY_SHARE of the available memory (at least 1)."""
    cores = os.cpu_count() or 1
    largest = max((peak_bytes(entry, options) for entry in series), default=PEAK_BASE_BYTES)
    return max(1, min(cores, int(MEMORY_SHARE * _available_memory() // largest)))


def _available_memory() -> int:
    """Bytes of memory available to new processes (MemAvailable on Linux; total physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a host:port (or ray://host:port) address nothing answers at within timeout_s: Ray itself would keep
    retrying for minutes. "auto" and other forms are left to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address.strip())
    if match is None:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout_s).close()
    except OSError as error:
        raise InputError(f"--address {address}: no Ray cluster answers there ({error.strerror or error})") from None


def _start_ray(workers: int | None, address: str | None, threads: int):
    """Ray, connected: an existing cluster at address, else a local instance with workers * threads CPUs. The
    workers find this ctqa (PYTHONPATH) and use threads threads each (CTQA_THREADS, OMP_NUM_THREADS)."""
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    package_parent = str(Path(__file__).resolve().parents[1])
    paths = [package_parent, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(paths), "CTQA_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    settings = dict(runtime_env={"env_vars": env}, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    if ray.is_initialized():
        return ray, False
    if address:
        _check_reachable(address)
    in_main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        if address:
            ray.init(address=address, **settings)
        else:
            ray.init(num_cpus=workers * threads, **settings)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(f"cannot start Ray{f' at {address}' if address else ''}: {first_line(error)}") from None
    finally:
        if in_main_thread:  # Ray installs its own SIGTERM handler: keep ours (clean unwinding, exit status 143)
            signal.signal(signal.SIGTERM, on_sigterm)
    return ray, True


def run_batch(
    root: str | os.PathLike,
    out: str | os.PathLike,
    options: AssessOptions = AssessOptions(),
    workers: int | None = None,
    address: str | None = None,
    progress: ProgressCallback | None = None,
) -> BatchResult:
    """Assess every CT series under root into out (module docstring); returns the rows, also written to
    out/index.csv (as series complete, so an interrupted run leaves the finished rows) with the group report.

    workers: series at once on a local Ray instance (default: default_workers); address: an existing Ray cluster
    ("auto" or host:port), whose CPUs and memory then decide. progress(done, total, row) after each series.
    The Python console of 3D Slicer can call this directly (the work runs in Ray's worker processes).
    """
    from ctqa.outputs import check_output_folder

    out = check_output_folder(Path(out).absolute())  # absolute: Ray's workers (on other nodes too) write there
    if address and workers:
        raise InputError("--workers sizes a local Ray instance; with --address the cluster's CPUs and memory decide")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    specs = resolved_models(options)  # unknown names and missing packages: one line before any work
    found = find_series(root, exclude=out)
    if not found.series and not found.unreadable:
        raise InputError(f"{root}: no CT series found (DICOM, .nii, .nii.gz, .nrrd, .mha)")
    models = model_identity(specs)
    rows: dict[str, IndexRow] = {row.id: row for row in found.unreadable}
    pending: dict[str, tuple[SeriesInput, str]] = {}
    for series in found.series:
        try:
            expected = fingerprint(series, options, models)
        except OSError:  # a file went away since discovery: the series' worker says so
            expected = ""
        summary = completed_summary(out / series.id, expected) if expected else None
        if summary is not None:
            rows[series.id] = _reused_row(series, out / series.id, summary)
        else:
            pending[series.id] = (series, expected)
    order = [row.id for row in found.unreadable] + [series.id for series in found.series]
    total, done = len(order), len(rows)

    def save() -> list[IndexRow]:
        ordered = [rows[key] for key in order if key in rows]
        write_index(ordered, out / INDEX_NAME)
        return ordered

    for row in list(rows.values()):
        if progress is not None:
            progress(done, total, row)
    if pending:
        workers = workers or (None if address else default_workers([s for s, _ in pending.values()], options))
        threads = max(1, (os.cpu_count() or 1) // workers) if workers else 1
        ray, started = _start_ray(workers, address, threads)
        out.mkdir(parents=True, exist_ok=True)
        try:
            requests = _ray_requests(ray, options, threads, specs)
            task = ray.remote(assess_series)
            futures = {
                task.options(**requests(series)).remote(series, options, str(out), expected): series
                for series, expected in pending.values()
            }
            waiting, saved_at = list(futures), -math.inf
            while waiting:
                finished, waiting = _wait(ray, waiting)
                for future in finished:
                    series = futures.pop(future)
                    try:
                        row = ray.get(future)
                    except ray.exceptions.RayTaskError as error:  # assess_series isolates failures: a bug of ours
                        row = _failed(series, f"{type(error.cause).__name__}: {first_line(error.cause)}", math.nan)
                    except ray.exceptions.RayError as error:  # the worker died (killed, out of memory)
                        row = _failed(series, f"worker lost: {first_line(error)}", math.nan)
                    rows[series.id] = row
                    done += 1
                    if progress is not None:
                        progress(done, total, row)
                if finished and time.monotonic() - saved_at >= INDEX_SAVE_INTERVAL_S:
                    save()
                    saved_at = time.monotonic()
        finally:
            save()  # the rows so far, also when interrupted
            if started:
                ray.shutdown()
    out.mkdir(parents=True, exist_ok=True)  # (a run with nothing to assess and only unreadable files)
    ordered = save()
    _write_group_report(out, ordered)
    return BatchResult(out, ordered, found.left_out)


def _wait(ray, waiting: list) -> tuple[list, list]:
    """ray.wait for up to WAIT_BATCH finished tasks (at most a second). A signal handler's exception raised inside
    Ray's wait (SIGTERM's Terminated) comes out as a SystemError caused by it: raised as itself, so that the run
    unwinds as on Ctrl-C."""
    try:
        return ray.wait(waiting, num_returns=min(len(waiting), WAIT_BATCH), timeout=1.0)
    except SystemError as error:
        cause = error.__cause__
        if cause is not None and not isinstance(cause, Exception):
            raise cause from None
        raise


def _ray_requests(ray, options: AssessOptions, threads: int, specs: dict) -> Callable[[SeriesInput], dict]:
    """The Ray resources one series asks for: its threads as CPUs; its peak memory estimate, capped at the largest
    node's memory (a request no node can meet would wait forever; such a series runs alone and may fail, with a
    row saying so); GPU_SHARE of a GPU when a learned model runs (specs: resolved_models), --device is not cpu and the
    cluster has GPUs."""
    largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    learned = any(spec is not None and spec.is_learned for spec in specs.values())
    gpus = GPU_SHARE if learned and options.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
    return lambda series: dict(
        num_cpus=threads,
        num_gpus=gpus,
        memory=min(peak_bytes(series, options), int(largest)) if largest else peak_bytes(series, options),
        max_retries=0,
    )


def _write_group_report(out: Path, rows: list[IndexRow]) -> None:
    """The group report; a failure is a warning (index.csv and the series' outputs stand)."""
    from ctqa.reports.group_report import write_group_report

    try:
        write_group_report(out, rows)
    except Exception as error:  # a view of the index: never lose a finished batch for it
        print(f"ctqa: warning: {out / REPORT_NAME}: not written ({first_line(error)})", file=sys.stderr)


def rebuild_reports(folder: str | os.PathLike) -> list[Path]:
    """Rebuild report.html from existing outputs (`ctqa report`): in a batch folder (index.csv) each series report
    whose outputs are complete (not of failed rows: their folder may hold an earlier run of another input), then the
    group report; in an assessment folder (summary.json) its report. The
    written reports; InputError for any other folder."""
    from ctqa.batch_index import read_index
    from ctqa.reports.group_report import write_group_report
    from ctqa.reports.series_report import write_series_report

    folder = Path(folder)
    if (folder / INDEX_NAME).is_file():
        rows, written = read_index(folder / INDEX_NAME), []
        for index, row in enumerate(rows):
            if row.status != FAILED and (folder / row.id / OUTPUT_FILES["summary"]).is_file():
                written.append(write_series_report(folder / row.id))
                rows[index] = replace(row, report=f"{row.id}/{REPORT_NAME}")
        write_index(rows, folder / INDEX_NAME)
        return [*written, write_group_report(folder, rows)]
    if (folder / OUTPUT_FILES["summary"]).is_file():
        return [write_series_report(folder)]
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    raise InputError(f"{folder}: neither a ctqa batch folder (index.csv) nor a ctqa assess folder (summary.json)")
