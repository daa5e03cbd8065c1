"""`ctqa`: assess CT image quality from the shell (the contract: docs/contract.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ctqa import __version__
from ctqa.errors import InputError, exit_status
from ctqa.physics.noise import DEFAULT_WINDOW_MM
from ctqa.results import Summary

DESCRIPTION = """\
CT image quality assessment. `ctqa assess` reads a CT (DICOM folder or file, NIfTI, NRRD, MHA, TIFF, .npy) and writes
a per-voxel quality map (1 = best), a local noise map in HU, a 0-4 quality score (LDCTIQAC2023 scale, when a
score model is installed), per-slice and per-ROI tables, a summary and a preview image. `ctqa denoise` writes a
denoised copy of a low-dose CT (a learned denoiser); `ctqa assess --denoise` assesses it beside the input.
`ctqa sample` writes a small synthetic CT to try it on.
"""

ASSESS_EPILOG = """\
outputs in --out:
  quality_map.nrrd         float32 quality per voxel, 1 = best, input geometry (NaN outside the body)
  noise_map.nrrd           float32 local noise SD in HU
  reference_ssim_map.nrrd  SSIM against --reference, resampled onto the input by position (only with --reference)
  denoised_ct.nrrd         the denoised CT in HU, input geometry (only with --denoise; int16 for whole-HU inputs)
  quality_map_denoised.nrrd  the quality map of the denoised CT (only with --denoise)
  slices.csv               per slice: z (mm), quality mean / median / 10th percentile, noise SD, HU mean,
                           0-4 score and its SD (empty without a score model), then the denoised CT's quality
                           mean / 10th percentile, noise SD and score (empty without --denoise)
  rois.csv                 per ROI (only with --roi): label, name, voxels, status, the same statistics
  summary.json             global quality, 0-4 score (global_score), GNL (global noise level, HU), SNR, CNR,
                           the same figures of the denoised CT (denoised, with --denoise), settings, notes, outputs
  preview.png              representative slices with the quality overlay, and the per-slice plot

Files appear all at once: summary.json exists only beside a complete set from one run; files an earlier
run left that this run does not produce are removed. The full contract: docs/contract.md.

exit status: 0 on success, 2 on unusable input (the reason is printed on one line, nothing is written),
130 on Ctrl-C and 143 on SIGTERM (the output folder keeps the earlier complete run).

examples:
  ctqa sample sample_data
  ctqa assess sample_data/sample_ct.nrrd --reference sample_data/sample_reference_ct.nrrd \\
       --roi sample_data/sample_labels.nrrd --roi-names sample_data/sample_labels.txt --out results
  ctqa assess challenge_slice.tif --scaling ldctiqac2023 --out results   (an LDCTIQAC2023 image: its 0-4 score)
  ctqa assess low_dose.nrrd --denoise --out results   (before / after denoising, side by side)
"""

DENOISE_EPILOG = """\
FILE is a volume file (.nrrd, .nii, .nii.gz or .mha) with the input's geometry, in HU: int16 when the input holds
whole HU (every scanner's images; the denoised values are rounded to whole HU, a change far below any CT's noise),
else float32. A DICOM input (folder or file) gives a volume file too, not DICOM. The input is never changed: FILE
may not be the input file nor lie inside an input DICOM folder, and an existing FILE is replaced only with
--overwrite. FILE appears whole or not at all (written to a temporary file beside it, then renamed).

exit status: 0 on success, 2 on unusable input (one line on stderr, nothing written), 130 on Ctrl-C, 143 on SIGTERM.

examples:
  ctqa denoise low_dose.nrrd --out low_dose_denoised.nrrd
  ctqa denoise dicom_folder/ --out denoised.nii.gz --model my_denoiser.json --device cuda
"""

BATCH_EPILOG = """\
outputs in --out:
  index.csv       one row per series: id, input, status (assessed / reused / failed), reason, checks, shape,
                  spacing, scanner, kernel, protocol, window and dose class, GNL, quality mean and p10, score,
                  runtime (the columns: docs/contract.md)
  report.html     the group report: distributions per scanner, kernel and protocol, outliers, a sortable table
  <id>/           the `ctqa assess` outputs of each series, and its report.html

A series that fails (unreadable, not a CT, ...) gets a row with the one-line reason; the others finish. Ctrl-C stops
the run; the series done so far are kept and the next run goes on from there. Ray is an optional extra:
pip install 'ctqa[batch]'.

exit status: 0 when every series was assessed, 1 when some failed (their count is printed), 2 on unusable
arguments (one line on stderr), 130 on Ctrl-C, 143 on SIGTERM.

examples:
  ctqa batch archive/ --out audit                    (a local Ray instance sized to this machine)
  ctqa batch archive/ --out audit --workers 2 --score-model none
  ctqa batch /shared/archive --out /shared/audit --address auto   (an existing Ray cluster; ctqa on every node)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctqa", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ctqa {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    assess = commands.add_parser(
        "assess",
        help="assess one CT volume",
        description="Assess the image quality of one CT volume.",
        epilog=ASSESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    assess.add_argument(
        "input", metavar="INPUT", help="CT: DICOM folder or file, .nii/.nii.gz, .nrrd, .mha, .tif/.tiff or .npy"
    )
    assess.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    assess.add_argument(
        "--reference", metavar="REF", help="full-dose CT of the same anatomy (resampled by position): adds an SSIM map"
    )
    assess.add_argument(
        "--roi", metavar="LABELS", help="labelmap file, Slicer .seg.nrrd, or a folder of binary masks (one ROI each)"
    )
    assess.add_argument(
        "--roi-names", metavar="TABLE", help="label names: Slicer colour table (value name R G B A) or value,name CSV"
    )
    assess.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when INPUT holds several series")
    _add_assessment_options(assess)
    _add_reading_options(assess)
    assess.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar",
        help="progress display: a bar on stderr (default), JSON lines on stdout for programs (see docs/contract.md), "
        "or none",
    )
    assess.add_argument("--quiet", action="store_true", help="no progress bar (same as --progress none)")
    assess.add_argument(
        "--no-compress", action="store_true", help="write the maps uncompressed (temporary outputs a program reads)"
    )
    assess.add_argument(
        "--acquisition-from",
        metavar="DICOM_FILE",
        help="read the acquisition tags (kernel, CTDIvol, mAs, thickness) from this DICOM file of the series INPUT "
        "was exported from (INPUT itself carries none, e.g. NRRD written by Slicer)",
    )

    denoise = commands.add_parser(
        "denoise",
        help="write a denoised copy of a CT (learned denoiser)",
        description="Denoise a (low-dose) CT with a learned denoiser and write it to FILE with the input's geometry. "
        "Prints the global noise level (GNL) before and after.",
        epilog=DENOISE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    denoise.add_argument(
        "input", metavar="INPUT", help="CT: DICOM folder or file, .nii/.nii.gz, .nrrd, .mha, .tif/.tiff or .npy"
    )
    denoise.add_argument(
        "--out", required=True, metavar="FILE", help="denoised CT: .nrrd, .nii, .nii.gz or .mha (not DICOM)"
    )
    denoise.add_argument(
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="denoiser: default (the bundled denoiser), a bundled model's name, or a checkpoint (X.json / "
        "X.safetensors)",
    )
    denoise.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the denoiser runs (default: auto)"
    )
    denoise.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the denoiser over the eight rotations and flips of each slice (8 x the time, a small gain)",
    )
    denoise.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when INPUT holds several series")
    _add_reading_options(denoise)
    denoise.add_argument("--overwrite", action="store_true", help="replace FILE when it exists (never the input)")
    denoise.add_argument("--quiet", action="store_true", help="no progress bar")

    classify = commands.add_parser(
        "classify",
        help="one line per CT series: window and dose class, fitted score, SNR, BRISQUE, DICOM tags (quick triage)",
        description="Classify each CT series (every CT series of a DICOM folder, or one volume file) by its "
        "reconstruction window (lung / soft tissue) and exposure (low / standard), with the physics classifier "
        "beside the learned one, and flag DICOM tags (ConvolutionKernel, CTDIvol) that disagree. No maps are written.",
    )
    classify.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM folders or files, or volume files")
    _add_reading_options(classify)
    classify.add_argument(
        "--series-model", default="default", metavar="NAME|PATH", help="default, physics, a name or a checkpoint"
    )
    classify.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    classify.add_argument("--json", action="store_true", help="one JSON object per line (the summary's series block)")

    batch = commands.add_parser(
        "batch",
        help="assess every CT series under a folder (on Ray): one output folder each, index.csv, HTML reports",
        description="Assess every CT series under ROOT (DICOM trees grouped by SeriesInstanceUID; .nii, .nii.gz, "
        ".nrrd, .mha files) with the options of `ctqa assess`, in parallel on Ray: one output folder per series, "
        "index.csv, a report.html per series and a group report.html. Rerunning skips series whose outputs are "
        "complete and whose input files and options are unchanged.",
        epilog=BATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("root", metavar="ROOT", help="folder to search (recursively) for CT series")
    batch.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    batch.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="series assessed at once on this machine (default: one per core, fewer when the largest series' "
        "memory would not fit)",
    )
    batch.add_argument(
        "--address", metavar="ADDRESS", help="an existing Ray cluster (auto or host:port) instead of a local instance"
    )
    _add_assessment_options(batch)
    _add_reading_options(batch, pixel_mm=False)
    batch.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser(
        "report",
        help="rebuild the HTML reports of a batch (or of one assessment) from its outputs",
        description="Rebuild report.html from existing outputs: in a `ctqa batch` folder (with index.csv) every "
        "series report and the group report; in a `ctqa assess` folder (with summary.json) its series report.",
    )
    report.add_argument("folder", metavar="DIR", help="a ctqa batch or ctqa assess output folder")

    sample = commands.add_parser(
        "sample",
        help="write the bundled synthetic sample CT",
        description="Write the synthetic demo CT, its "
        "full-dose reference and an organ labelmap (made offline by this project's code) into DIR.",
    )
    sample.add_argument("out", metavar="DIR", help="folder to write into (created if missing)")
    return parser


def _add_assessment_options(command: argparse.ArgumentParser) -> None:
    """The options of `ctqa assess` that `ctqa batch` applies to every series: models, device, noise window,
    denoising, preview."""
    command.add_argument(
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="quality model: default (the bundled learned model, physics when none is installed), physics "
        "(noise-based, no training), a bundled model's name, or a checkpoint (X.json / X.safetensors)",
    )
    command.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where learned models run (default: auto)"
    )
    command.add_argument(
        "--window-mm",
        type=float,
        default=DEFAULT_WINDOW_MM,
        help=f"noise window size in mm (default {DEFAULT_WINDOW_MM:g})",
    )
    command.add_argument(
        "--series-model",
        default="default",
        metavar="NAME|PATH",
        help="series panel classifier: default (the bundled series model), physics, a name or a checkpoint",
    )
    command.add_argument(
        "--score-model",
        default="default",
        metavar="NAME|PATH|none",
        help="0-4 quality score model (LDCTIQAC2023 scale): default (the bundled score model; skipped with a note "
        "when none is installed), a bundled model's name, a checkpoint (X.json / X.safetensors), or none to skip",
    )
    command.add_argument(
        "--denoise",
        action="store_true",
        help="also denoise the CT and assess the result the same way: adds denoised_ct.nrrd, "
        "quality_map_denoised.nrrd and the summary's denoised block (the input is never changed)",
    )
    command.add_argument(
        "--denoise-model",
        metavar="NAME|PATH",
        help="denoiser for --denoise (implies it): default (the bundled denoiser), a bundled model's name, or a "
        "checkpoint (X.json / X.safetensors)",
    )
    command.add_argument(
        "--no-preview", action="store_true", help="do not draw preview.png (programs that show the maps themselves)"
    )


def _add_reading_options(command: argparse.ArgumentParser, pixel_mm: bool = True) -> None:
    command.add_argument(
        "--scaling",
        metavar="SCALING",
        help="how stored values become HU: hu (default; checked), hu+1024, ldctiqac2023 ([0, 1] = W350/L40), "
        "mayo-npy ((HU+1024)/4096) or window:LOW,HIGH ([0, 1] = LOW..HIGH HU)",
    )
    command.add_argument(
        "--regularize",
        action="store_true",
        help="resample a DICOM series with missing slices or uneven spacing onto a regular grid (else refused)",
    )
    if pixel_mm:
        command.add_argument(
            "--pixel-mm",
            type=float,
            metavar="MM",
            help="pixel size of TIFF/.npy and PNG/JPEG/BMP inputs, which store none in mm (default 1)",
        )


class _ProgressBar:
    """tqdm bar driven by the core's progress(fraction, message) callback."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self._bar = tqdm(
            total=100, desc="assessing", disable=not enabled, bar_format="{desc:<36.36}{bar}| {n:.0f}% [{elapsed}]"
        )

    def __call__(self, fraction: float, message: str) -> None:
        self._bar.set_description_str(message, refresh=False)
        self._bar.update(max(0.0, 100.0 * fraction - self._bar.n))

    def close(self) -> None:
        self._bar.close()


class _JsonProgress:
    """Progress as JSON lines on stdout for programs that run ctqa (the Slicer module's process runner).

    {"event": "progress", "fraction": 0..1, "stage": text}, then {"event": "done", "out": DIR, "outputs": [...]}.
    Errors stay one line on stderr with exit status 2.
    """

    @staticmethod
    def emit(event: str, **fields) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    def __call__(self, fraction: float, message: str) -> None:
        self.emit("progress", fraction=round(float(fraction), 4), stage=message)

    def close(self) -> None:
        pass


def _print_notes(summary: Summary) -> None:
    """Notes and the device fallback on stderr, once each."""
    for note in summary.notes:
        print(f"ctqa: note: {note}", file=sys.stderr)
    if summary.settings.device_fallback:
        print(f"ctqa: warning: {summary.settings.device_fallback}", file=sys.stderr)


def _print_result(input_path: str, summary: Summary, written: int, out: Path) -> None:
    """The one-line result on stdout, after the notes on stderr."""
    _print_notes(summary)
    score, gnl, noise_level = summary.global_quality_score, summary.gnl_hu, summary.learned_noise_level
    figures = [
        f"global quality {score:.3f}" if math.isfinite(score) else "quality n/a (no flat tissue to measure noise in)",
        f"GNL {gnl:.1f} HU" if math.isfinite(gnl) else "GNL n/a",
    ]
    if summary.global_score is not None:
        figures.append(score_text(summary.global_score))
    if noise_level is not None:
        figures.append(f"learned noise level {noise_level.relative_noise:.1f}x the training full-dose images")
    print(f"{Path(input_path).name} ({summary.settings.model}, {summary.settings.device}): " + ", ".join(figures))
    if summary.series is not None:
        print(series_line("series", summary.series))
    if summary.denoised is not None:
        print(denoised_line(summary))
    print(f"wrote {written} files to {out}")


def _gnl_text(gnl: float) -> str:
    return f"{gnl:.1f}" if math.isfinite(gnl) else "n/a"


def denoised_line(summary: Summary) -> str:
    """The after figures of a run with --denoise (results.DenoisedSummary) on one line."""
    after = summary.denoised
    change = f" ({-after.gnl_reduction_percent:+.0f} %)" if math.isfinite(after.gnl_reduction_percent) else ""
    figures = [
        f"apparent quality {after.global_quality_score:.3f} (overstated on denoised images, see quality_caveat)"
        if math.isfinite(after.global_quality_score)
        else "n/a",
        f"GNL {_gnl_text(summary.gnl_hu)} -> {_gnl_text(after.gnl_hu)} HU{change}",
    ]
    if after.score is not None:
        figures.append(score_text(after.score))
    return f"denoised ({after.model}, {after.method}): " + ", ".join(figures)


def score_text(score) -> str:
    """ "score 2.7 ± 0.3 / 4" of a results.GlobalScore (no ± for a model without uncertainty; "(surrogate)" after
    it for a model trained to the surrogate score, not to radiologists; a bracket when the input is outside the model's
    domain)."""
    spread = f" ± {score.sd:.1f}" if math.isfinite(score.sd) else ""
    basis = " (surrogate)" if score.trained_to == "surrogate" else ""
    domain = " [outside the model's domain: see notes]" if score.domain_notes else ""
    return f"score {score.value:.1f}{spread} / 4{basis}{domain}"


def _assess(args: argparse.Namespace) -> None:
    from ctqa.io import read_volume, with_acquisition_from
    from ctqa.outputs import check_inputs_survive, check_output_folder
    from ctqa.pipeline import (
        assess,
        check_window_mm,
        resolve_denoise_model,
        resolve_model,
        resolve_score_model,
        resolve_series_model,
        write_outputs,
    )
    from ctqa.rois import load_rois

    out = check_output_folder(args.out)
    check_inputs_survive(out, [args.input, args.reference, args.roi])
    model = resolve_model(args.model)
    series_model = resolve_series_model(args.series_model)
    score_spec = resolve_score_model(args.score_model)
    denoise_model = resolve_denoise_model(args.denoise_model) if args.denoise or args.denoise_model else None
    window_mm = check_window_mm(args.window_mm)
    _check_pixel_mm(args.pixel_mm)
    if args.roi_names and not args.roi:
        raise InputError(f"{args.roi_names}: --roi-names needs --roi")
    options = dict(scaling=args.scaling, regularize=args.regularize, pixel_mm=args.pixel_mm)
    volume = read_volume(args.input, series_uid=args.series, compact=True, **options)  # int16 HU stays int16
    if args.acquisition_from:
        volume = with_acquisition_from(volume, args.acquisition_from)
    reference = read_volume(args.reference, compact=True, **options) if args.reference else None
    rois = load_rois(args.roi, volume, args.roi_names) if args.roi else None
    display = "none" if args.quiet else args.progress
    bar = _JsonProgress() if display == "json" else _ProgressBar(enabled=display == "bar")
    try:
        assessment = assess(
            volume,
            reference,
            rois,
            model=model,
            window_mm=window_mm,
            device=args.device,
            progress=bar,
            series_model=series_model,
            score_model=args.score_model if score_spec is None else score_spec,  # a skip keeps its note
            denoise_model=denoise_model,
        )
        bar(1.0, "writing outputs")
        paths = write_outputs(assessment, out, preview=not args.no_preview, compress=not args.no_compress)
    finally:
        bar.close()
    if display == "json":
        _JsonProgress.emit("done", out=str(out), outputs=sorted(path.name for path in paths.values()))
        _print_notes(assessment.summary)
    else:
        _print_result(args.input, assessment.summary, len(paths), out)


def _check_pixel_mm(pixel_mm: float | None) -> None:
    if pixel_mm is not None and not (math.isfinite(pixel_mm) and 0.01 <= pixel_mm <= 20.0):
        raise InputError(f"--pixel-mm {pixel_mm:g}: must be between 0.01 and 20")


def _call_text(call, physics, learned: bool) -> str:
    """A call with its probability, and the physics call beside a learned one."""
    if call is None:
        return "-"
    if not learned:
        return f"{call.label} (p {call.probability:.2f}, physics)"
    beside = f"; physics {physics.label} {physics.probability:.2f}" if physics is not None else ""
    return f"{call.label} (p {call.probability:.2f}{beside})"


def series_line(name: str, panel) -> str:
    """One triage line of a series panel (results.SeriesMeasures)."""
    if not panel.applies:
        return f"{name}: series panel does not apply: {panel.note}"

    def figure(value, fmt: str, unit: str = "") -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:{fmt}}{unit}"

    physics = panel.physics
    parts = [
        f"window {_call_text(panel.window, physics.window if physics else None, panel.classifier is not None)}",
        f"dose {_call_text(panel.dose, physics.dose if physics else None, panel.classifier is not None)}",
        f"fitted score {figure(panel.fitted_score, '.2f')}",
        f"SNR {figure(panel.snr, '.1f')}",
        f"BRISQUE {figure(panel.brisque, '.1f')}",
        f"WED {figure(panel.water_equivalent_diameter_mm, '.0f', ' mm')}",
        f"kernel index {figure(panel.kernel_index, '.3f', '/mm')}",
        f"thickness {figure(panel.slice_thickness_mm, 'g', ' mm')}",
    ]
    tags = panel.acquisition
    if tags is not None:
        shown = [
            f"kernel {tags.kernel}" if tags.kernel else None,
            f"CTDIvol {tags.ctdivol_mgy:g} mGy" if tags.ctdivol_mgy else None,
            f"{tags.exposure_mas:g} mAs" if tags.exposure_mas else None,
        ]
        parts.append("tags " + (", ".join(t for t in shown if t) or "-"))
    line = f"{name}: " + " | ".join(parts)
    if panel.note:
        line += f" | {panel.note}"
    return line + "".join(f" | DISAGREES: {text}" for text in panel.tag_disagreements)


def _series_of(path: str) -> list[tuple[str | None, str]]:
    """(SeriesInstanceUID, label) of each CT image series in a DICOM folder, localizers (scouts) left out; [(None,
    path)] for a file or a folder without one (reading it then says what it holds)."""
    from ctqa.dicom import find_dicom_series, is_localizer

    if not Path(path).is_dir():
        return [(None, path)]
    found = []
    for series in find_dicom_series(path).series:
        header = series.first_header
        if series.modality != "CT" or is_localizer(header):
            continue
        number, description = header.get("SeriesNumber", ""), header.get("SeriesDescription", "")
        found.append((series.uid, f"{path} [series {number} {description}]".replace(" ]", "]")))
    if len(found) == 1:
        return [(found[0][0], path)]
    return found or [(None, path)]


def _classify(args: argparse.Namespace) -> int:
    from ctqa.io import read_volume
    from ctqa.physics.noise import analyse_noise
    from ctqa.pipeline import resolve_series_model
    from ctqa.results import to_json
    from ctqa.tasks import series_panel

    spec = resolve_series_model(args.series_model)
    options = dict(scaling=args.scaling, regularize=args.regularize, pixel_mm=args.pixel_mm)
    failed = 0
    for path in args.inputs:
        for uid, name in _series_of(path):
            try:
                volume = read_volume(path, series_uid=uid, compact=True, **options)
                panel = series_panel.run(volume, analyse_noise(volume), spec, args.device)
            except InputError as error:
                failed += 1
                print(f"ctqa: error: {error}", file=sys.stderr)
                continue
            print(json.dumps({"input": name, **to_json(panel)}) if args.json else series_line(name, panel))
    return 2 if failed else 0


def _denoise(args: argparse.Namespace) -> None:
    from ctqa.io import read_volume
    from ctqa.physics.noise import analyse_noise
    from ctqa.pipeline import resolve_denoise_model
    from ctqa.tasks import denoise

    out = check_denoise_output(args.out, args.input, args.overwrite)
    spec = resolve_denoise_model(args.model)
    _check_pixel_mm(args.pixel_mm)
    volume = read_volume(
        args.input, series_uid=args.series, scaling=args.scaling, regularize=args.regularize, pixel_mm=args.pixel_mm
    )
    bar = _ProgressBar(enabled=not args.quiet)
    try:
        bar(0.0, "noise before")
        before = analyse_noise(volume).gnl
        result = denoise.run(
            volume,
            spec,
            args.device,
            lambda fraction, message: bar(0.05 + 0.8 * fraction, message),
            self_ensemble=args.self_ensemble,
        )
        bar(0.85, "noise after")
        after = analyse_noise(result.volume).gnl
        bar(0.95, "writing")
        write_file_atomically(denoise.storage_array(result.volume.hu), result.volume, out, args.overwrite)
        bar(1.0, "done")
    finally:
        bar.close()
    for note in volume.notes:
        print(f"ctqa: note: {note}", file=sys.stderr)
    if result.device_fallback:
        print(f"ctqa: warning: {result.device_fallback}", file=sys.stderr)
    gnl = f"GNL {_gnl_text(before)} -> {_gnl_text(after)} HU"
    ensemble = ", self-ensemble" if args.self_ensemble else ""
    print(f"denoised {args.input} -> {out} (model {result.model}, {result.method}{ensemble}; {gnl})")


def check_denoise_output(path: str, input_path: str, overwrite: bool) -> Path:
    """The output file of `ctqa denoise`, checked before any work: a writable volume format, not the input file nor
    inside an input folder, and not an existing file unless overwrite; InputError (one line) otherwise."""
    from ctqa.io import WRITABLE_EXTENSIONS
    from ctqa.outputs import check_output_folder

    out = Path(path)
    if not str(path).strip() or not out.name:
        raise InputError("--out is empty; name the denoised file (.nrrd, .nii, .nii.gz or .mha)")
    if not out.name.lower().endswith(WRITABLE_EXTENSIONS):
        raise InputError(f"{out}: unsupported output format; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    source, target = Path(input_path).resolve(), out.resolve()
    if target == source or (out.exists() and Path(input_path).exists() and out.samefile(input_path)):
        raise InputError(f"{out}: is the input; denoising never overwrites its input")
    if source.is_dir() and source in target.parents:
        raise InputError(f"{out}: lies inside the input folder {input_path}; write the denoised CT elsewhere")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; name the denoised file")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    check_output_folder(out.parent)
    return out


def write_file_atomically(array, like, out: Path, overwrite: bool) -> None:
    """Write a (z, y, x) array with like's geometry to out (ctqa.io.write_map) whole or not at all
    (outputs.written_whole: a temporary file beside it, renamed onto out when complete, removed on any error, Ctrl-C
    or SIGTERM)."""
    from ctqa.io import write_map
    from ctqa.outputs import written_whole

    with written_whole(out) as partial:
        try:
            write_map(array, like, partial)
        except InputError as error:  # name the file the user asked for, not the temporary one
            raise InputError(str(error).replace(str(partial), str(out))) from None
        if out.exists() and not overwrite:  # created by someone else while we worked
            raise InputError(f"{out}: exists; pass --overwrite to replace it")


class _SeriesBar:
    """tqdm bar over the series of a batch, with the last series' status; drawn from the first finished series
    on, so that nothing reaches stderr before a refusal."""

    def __init__(self, enabled: bool):
        self._enabled = enabled
        self._bar = None
        self._failed = 0

    def __call__(self, done: int, total: int, row) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="series", disable=not self._enabled, desc="batch")
        self._bar.total = total
        self._failed += row.status == "failed"
        self._bar.set_postfix_str(f"{self._failed} failed, last {row.id} {row.status}", refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _batch(args: argparse.Namespace) -> int:
    from ctqa.batch import AssessOptions, run_batch
    from ctqa.batch_index import FAILED, INDEX_NAME, REUSED
    from ctqa.pipeline import check_window_mm

    denoise_model = (args.denoise_model or "default") if args.denoise or args.denoise_model else None
    options = AssessOptions(
        model=args.model,
        device=args.device,
        window_mm=check_window_mm(args.window_mm),
        scaling=args.scaling,
        regularize=args.regularize,
        series_model=args.series_model,
        score_model=args.score_model,
        denoise_model=denoise_model,
        preview=not args.no_preview,
    )
    bar = _SeriesBar(enabled=not args.quiet)
    try:
        result = run_batch(args.root, args.out, options, args.workers, args.address, progress=bar)
    finally:
        bar.close()
    for phrase in result.left_out:
        print(f"ctqa: note: left out {phrase}", file=sys.stderr)
    for row in result.rows:
        if row.status == FAILED:
            print(f"ctqa: failed: {row.id}: {row.reason}", file=sys.stderr)
    failed, reused = result.count(FAILED), result.count(REUSED)
    assessed = len(result.rows) - failed - reused
    print(
        f"{len(result.rows)} series: {assessed} assessed, {reused} reused from an earlier run, {failed} failed; "
        f"{result.out / INDEX_NAME}, {result.out / 'report.html'}"
    )
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> None:
    from ctqa.batch import rebuild_reports

    for path in rebuild_reports(args.folder):
        print(f"wrote {path}")


def _sample(args: argparse.Namespace) -> None:
    from ctqa.sample import write_sample

    paths = write_sample(args.out)
    for role, path in paths.items():
        print(f"{role:12s} {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ctqa`; returns the exit status (2 on bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    if args.command in ("assess", "batch", "classify"):
        from ctqa.staging import tune_allocator

        tune_allocator()  # reuse freed memory between batches: about half the kernel time of an assessment
    commands = {
        "assess": _assess,
        "batch": _batch,
        "classify": _classify,
        "denoise": _denoise,
        "report": _report,
        "sample": _sample,
    }
    return exit_status("ctqa", lambda: commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
