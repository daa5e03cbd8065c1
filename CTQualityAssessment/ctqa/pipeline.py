"""One assessment of one CT volume, orchestration only: physics pass, quality-map task, global 0-4 score task,
reference SSIM, tables, summary (and, with a denoiser, the same passes over the denoised CT); and writing it to a
folder through the output contract (outputs.py)."""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ctqa import __version__
from ctqa.aggregate import lung_quality, roi_table, tabulate
from ctqa.errors import InputError
from ctqa.geometry import reference_on_grid
from ctqa.io import write_map
from ctqa.models import registry
from ctqa.models.registry import DEFAULT_MODEL, ModelSpec
from ctqa.outputs import OutputFolder, write_csv
from ctqa.physics.noise import DEFAULT_WINDOW_MM, NoiseAnalysis, analyse_noise
from ctqa.physics.ssim import ssim_map
from ctqa.results import (
    ROI_COLUMNS,
    SLICE_COLUMNS,
    DenoisedSummary,
    RegionStats,
    RoiRow,
    RunSettings,
    SeriesMeasures,
    SliceRow,
    Summary,
    table_row,
    to_json,
)
from ctqa.rois import Roi
from ctqa.slabs import SLAB_SLICES, ProgressCallback
from ctqa.staging import StagedMap, release_free_memory
from ctqa.tasks import denoise, global_score, quality_map, series_panel
from ctqa.volume import CTVolume

#: Noise window limits (mm): below, a window holds too few voxels at any CT pixel size; above, it averages organs.
WINDOW_MM_RANGE = (1.0, 50.0)

DEFINITIONS = {
    "gnl_hu": "global noise level: mode of the local SD (HU) over soft-tissue windows (0..150 HU), Christianson 2015",
    "snr": "(soft-tissue mean HU + 1000) / GNL",
    "cnr": "(soft-tissue mean HU - fat mean HU) / GNL",
    "global_quality_score": "mean of the quality map over the body (1 = best)",
    "lung": "lung mask from HU and connectivity (air-like voxels inside the body, not connected to the air around "
    "the patient); lung_quality_mean: quality in the lung window over it; soft_tissue_quality_mean: quality in the "
    "soft-tissue window over the rest of the body",
    "series": "series panel (Chest CT-IQA): TG-220 water-equivalent diameter; NPS kernel index (mean noise frequency "
    "in flat tissue, cycles/mm; sharper kernels higher); GNL normalised to a 300 mm patient at 3 mm slices; SNR; "
    "BRISQUE of body slices in the soft-tissue window; window class (lung = sharp lung-kernel reconstruction) and "
    "dose class (low = noise well above what a routine exposure gives for the size and thickness) with their "
    "probabilities, from the classifier the series model chose on validation (calls_from) and the physics "
    "classifier beside it; fitted_score: the eq. 4 linear fit of "
    "the four outputs on 0-4, fitted to what the model card says (no clinician scores were available)",
    "global_score": global_score.DEFINITION,
    "denoised": denoise.DEFINITION,
}


@dataclass
class VolumePasses:
    """The per-volume passes of an assessment: physics noise, quality map, 0-4 score, reference SSIM, slice rows and
    the statistics over the whole body (one pass over the maps: aggregate.tabulate).

    reference_ssim: float32 (z, y, x) SSIM against the reference on the volume's grid (a staging.StagedMap), None
    without one; scores: None when no score model ran (or no slice shows the body). The maps here and in
    noise and quality_map are staging.SlabMaps: read by slab, never held whole.
    """

    noise: NoiseAnalysis
    quality_map: quality_map.QualityMap
    scores: global_score.SliceScores | None
    reference_ssim: np.ndarray | None
    slices: list[SliceRow]
    body: RegionStats


@dataclass
class DenoisedAssessment:
    """The denoised CT (denoiser.volume, on the input's grid) and the same passes over it as over the input.

    slices: the denoised CT's own rows (the input's rows carry them in their *_denoised columns); summary: the
    summary.json "denoised" block.
    """

    denoiser: denoise.Denoised
    passes: VolumePasses
    summary: DenoisedSummary

    @property
    def volume(self) -> CTVolume:
        return self.denoiser.volume

    @property
    def quality(self) -> np.ndarray:
        return self.passes.quality_map.quality


@dataclass
class Assessment:
    """Everything one assessment produced; maps are float32 (z, y, x) on the grid of volume.

    denoised: the denoised CT and its assessment (``assess(..., denoise_model=...)``), else None.
    """

    volume: CTVolume
    quality_map: quality_map.QualityMap
    noise: NoiseAnalysis
    reference_ssim: np.ndarray | None
    slices: list[SliceRow]
    rois: list[RoiRow] | None
    summary: Summary
    scores: global_score.SliceScores | None = None
    denoised: DenoisedAssessment | None = None

    @property
    def quality(self) -> np.ndarray:
        return self.quality_map.quality

    @property
    def model(self) -> str:
        return self.quality_map.model.name


def check_window_mm(window_mm: float) -> float:
    """The noise window size (mm), refused unless finite and within WINDOW_MM_RANGE."""
    if not (math.isfinite(window_mm) and WINDOW_MM_RANGE[0] <= window_mm <= WINDOW_MM_RANGE[1]):
        raise InputError(
            f"--window-mm {window_mm:g}: must be between {WINDOW_MM_RANGE[0]:g} and {WINDOW_MM_RANGE[1]:g}"
        )
    return float(window_mm)


def resolve_model(model: str | ModelSpec | None) -> ModelSpec:
    """The quality-map model of a user's choice (see registry.resolve); a ModelSpec passes through. A median-SSIM
    map's calibration is read here, so that a missing or replaced weights file is refused before any work."""
    spec = model if isinstance(model, ModelSpec) else registry.resolve("quality_map", model)
    quality_map.calibration_of(spec)
    return spec


def resolve_series_model(model: str | ModelSpec | None) -> ModelSpec:
    """The series-panel classifier of a user's choice (task series_class); a ModelSpec passes through."""
    return model if isinstance(model, ModelSpec) else registry.resolve("series_class", model)


def resolve_score_model(model: str | os.PathLike | ModelSpec | None, require_packages: bool = True) -> ModelSpec | None:
    """The global-score model of a user's choice (task global_score; tasks/global_score.resolve): None for "none",
    and for "default" when no score model is installed or (require_packages) PyTorch/timm are missing; the score is
    then skipped, with a note for the latter two. require_packages=False: what the choice names, for an installer
    that will provide the packages (the Slicer module)."""
    return global_score.resolve(model, require_packages)


def resolve_denoise_model(model: str | os.PathLike | ModelSpec | None, require_packages: bool = True) -> ModelSpec:
    """The denoiser of a user's choice (task denoise; tasks/denoise.resolve): InputError when none is installed,
    for unknown names and, with require_packages, when PyTorch/MONAI/safetensors are missing."""
    return denoise.resolve(model, require_packages)


def _stage(progress: ProgressCallback | None, low: float, high: float) -> ProgressCallback | None:
    """progress for one part of the work: its fractions 0..1 mapped onto low..high."""
    if progress is None:
        return None
    return lambda fraction, message: progress(low + (high - low) * fraction, message)


def _reference_means(reference_ssim: np.ndarray, quality: np.ndarray) -> tuple[float, float, float]:
    """(mean SSIM over the body, over everything the reference covers, share of the volume it covers), a slab at a
    time (the maps may be staging.SlabMaps)."""
    body_sum = everything_sum = 0.0
    body_count = covered_count = 0
    for start in range(0, reference_ssim.shape[0], SLAB_SLICES):
        ssim = np.asarray(reference_ssim[start : start + SLAB_SLICES])
        covered = np.isfinite(ssim)
        inside = np.isfinite(quality[start : start + SLAB_SLICES]) & covered
        body_sum += float(ssim[inside].sum(dtype=np.float64))
        everything_sum += float(ssim[covered].sum(dtype=np.float64))
        body_count += int(np.count_nonzero(inside))
        covered_count += int(np.count_nonzero(covered))
    body = body_sum / body_count if body_count else math.nan
    everything = everything_sum / covered_count if covered_count else math.nan
    return body, everything, covered_count / math.prod(reference_ssim.shape)


def _staged_ssim_map(volume: CTVolume, reference_hu: np.ndarray, progress: ProgressCallback | None) -> StagedMap:
    """The reference SSIM map (physics/ssim.ssim_map, slice by slice) of volume, made a few slabs at a time into a
    staging file (staging.StagedMap)."""
    out = StagedMap(volume.shape, np.float32)
    depth = volume.shape[0]
    step = 4 * SLAB_SLICES
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        part = _stage(progress, start / depth, stop / depth)
        out.write(start, ssim_map(volume.hu[start:stop], reference_hu[start:stop], progress=part))
    return out


def _volume_passes(
    volume: CTVolume,
    spec: ModelSpec,
    score_spec: ModelSpec | None,
    reference_hu: np.ndarray | None,
    window_mm: float,
    device: str,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> VolumePasses:
    """Physics noise pass, quality map, 0-4 score, reference SSIM and slice rows of one volume (the input, and the
    denoised CT); progress 0..1 over them."""
    physics_end = 0.3 if spec.is_learned else 0.6
    map_end = 0.8 if score_spec is None else (0.6 if spec.is_learned else 0.65)  # the score runs up to 0.8
    end = 0.95 if reference_hu is not None else 0.8  # the reference SSIM runs from 0.8

    def part(low: float, high: float) -> ProgressCallback | None:
        return _stage(progress, low / end, high / end)

    noise = analyse_noise(volume, window_mm, progress=part(0.0, 0.7 * physics_end))
    noise = noise.with_packed_body(progress=part(0.7 * physics_end, physics_end))  # the body mask, once
    result = quality_map.run(volume, spec, noise, device, part(physics_end, map_end), cancel)
    release_free_memory()  # the network's freed activations, before the next stage's peak
    scores = None
    if score_spec is not None:
        if progress is not None:
            progress(map_end / end, "quality score")
        scores = global_score.run(volume, score_spec, noise.body_voxels(), device, part(map_end, 0.8), cancel, noise)
        release_free_memory()
    reference_ssim = None
    if reference_hu is not None:
        reference_ssim = _staged_ssim_map(volume, reference_hu, part(0.8, end))
    tables = tabulate(
        volume,
        result.quality,
        noise.noise_sd,
        scores.score if scores is not None else None,
        scores.sd if scores is not None else None,
    )
    return VolumePasses(noise, result, scores, reference_ssim, tables.slices, tables.body)


def _with_denoised_columns(rows: list[SliceRow], denoised: list[SliceRow]) -> list[SliceRow]:
    """The input's slice rows with the denoised CT's figures of the same slice in their *_denoised columns."""
    return [
        replace(
            row,
            quality_mean_denoised=after.stats.quality_mean,
            quality_p10_denoised=after.stats.quality_p10,
            noise_sd_hu_denoised=after.stats.noise_sd_hu,
            score_denoised=after.score,
        )
        for row, after in zip(rows, denoised)
    ]


def _denoised_summary(denoiser: denoise.Denoised, passes: VolumePasses, gnl_before: float) -> DenoisedSummary:
    body = passes.body
    reference_body = None
    if passes.reference_ssim is not None:
        reference_body = _reference_means(passes.reference_ssim, passes.quality_map.quality)[0]
    return DenoisedSummary(
        model=denoiser.model,
        method=denoiser.method,
        device=denoiser.device,
        gnl_hu=passes.noise.gnl,
        gnl_reduction_percent=100.0 * (1.0 - passes.noise.gnl / gnl_before),
        snr=passes.noise.snr,
        cnr=passes.noise.cnr,
        global_quality_score=body.quality_mean,
        quality_median=body.quality_median,
        quality_p10=body.quality_p10,
        score=passes.scores.summary if passes.scores is not None else None,
        reference_ssim_mean_body=reference_body,
        quality_caveat=denoise.QUALITY_CAVEAT,
    )


def _summary(
    volume: CTVolume,
    passes: VolumePasses,
    window_mm: float,
    series: SeriesMeasures,
    score_notes: tuple[str, ...],
    denoised: DenoisedAssessment | None,
) -> Summary:
    noise, result, scores, body = passes.noise, passes.quality_map, passes.scores, passes.body
    reference_body = reference_all = None
    notes = volume.notes + noise.notes + result.notes + score_notes
    if passes.reference_ssim is not None:
        reference_body, reference_all, share = _reference_means(passes.reference_ssim, result.quality)
        if share < 0.999:
            notes += (f"the reference covers {100 * share:.0f} % of the input; SSIM only where it does",)
    if denoised is not None:
        notes += tuple(f"denoised CT: {note}" for note in denoised.passes.noise.notes)
        if denoised.denoiser.device_fallback:
            notes += (f"denoising: {denoised.denoiser.device_fallback}",)
        notes += tuple(f"denoising: {note}" for note in denoised.denoiser.notes)
    settings = RunSettings(
        model=result.model.name,
        model_kind=result.model.kind,
        model_card=str(result.model.card_path) if result.model.card_path else None,
        device=result.device,
        precision=result.precision,
        device_fallback=result.device_fallback,
        scaling=volume.scaling,
        noise_window_mm=window_mm,
        noise_window_voxels_yx=noise.window_voxels,
    )
    return Summary(
        tool=f"ctqa {__version__}",
        input=volume.source,
        shape_zyx=volume.shape,
        spacing_mm_xyz=volume.spacing,
        notes=notes,
        settings=settings,
        global_quality_score=body.quality_mean,
        quality_median=body.quality_median,
        quality_p10=body.quality_p10,
        gnl_hu=noise.gnl,
        snr=noise.snr,
        cnr=noise.cnr,
        soft_tissue_hu_mean=noise.soft_tissue_hu,
        fat_hu_mean=noise.fat_hu,
        body_voxels=sum(row.voxels for row in passes.slices),
        learned_noise_level=result.noise_level,
        lung=lung_quality(result.windows, result.lung),
        series=series,
        global_score=scores.summary if scores is not None else None,
        reference_ssim_mean_body=reference_body,
        reference_ssim_mean=reference_all,
        denoised=denoised.summary if denoised is not None else None,
        definitions={"quality": result.definition, **DEFINITIONS},
    )


def assess(
    volume: CTVolume,
    reference: CTVolume | None = None,
    rois: list[Roi] | None = None,
    model: str | ModelSpec | None = DEFAULT_MODEL,
    window_mm: float = DEFAULT_WINDOW_MM,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    series_model: str | ModelSpec | None = DEFAULT_MODEL,
    score_model: str | os.PathLike | ModelSpec | None = DEFAULT_MODEL,
    denoise_model: str | os.PathLike | ModelSpec | None = None,
) -> Assessment:
    """Assess one CT volume: quality and noise maps, optional reference SSIM map, per-slice and per-ROI tables.

    model: "default", a registry name, a checkpoint path or a resolved ModelSpec (resolved once, here). The noise
    map, GNL and body mask always come from the physics pass. reference: any grid overlapping volume; resampled by
    physical position. device: where a learned model runs; cancel stops it between batches (inference.Cancelled).
    series_model: the series panel's classifier ("default", "physics", a name or a checkpoint; tasks/series_panel).
    score_model: the 0-4 global score's model ("default", a name, a checkpoint, or "none"/None to skip it; without
    an installed model "default" skips it with a note; tasks/global_score).
    denoise_model: None (no denoising), or the denoiser ("default", a name or a checkpoint; tasks/denoise): the
    volume is denoised into a new CTVolume (volume is not changed) and assessed with the same passes
    (Assessment.denoised).
    """
    spec = resolve_model(model)
    series_spec = resolve_series_model(series_model)
    score_spec = resolve_score_model(score_model)
    denoise_spec = resolve_denoise_model(denoise_model) if denoise_model is not None else None
    score_note = global_score.skipped_note(score_model, score_spec)
    window_mm = check_window_mm(window_mm)
    reference_hu = reference_on_grid(reference, volume) if reference is not None else None

    passes_end = 0.45 if denoise_spec is not None else 0.95
    passes = _volume_passes(
        volume, spec, score_spec, reference_hu, window_mm, device, _stage(progress, 0.0, passes_end), cancel
    )
    denoised = None
    if denoise_spec is not None:
        denoiser = denoise.run(volume, denoise_spec, device, _stage(progress, 0.45, 0.7), cancel)
        after = _stage(progress, 0.7, 0.95)
        denoised_passes = _volume_passes(
            denoiser.volume,
            spec,
            score_spec,
            reference_hu,
            window_mm,
            device,
            None if after is None else lambda fraction, message: after(fraction, f"denoised CT: {message}"),
            cancel,
        )
        summary = _denoised_summary(denoiser, denoised_passes, passes.noise.gnl)
        denoised = DenoisedAssessment(denoiser, denoised_passes, summary)
        passes = replace(passes, slices=_with_denoised_columns(passes.slices, denoised_passes.slices))
    roi_rows = None
    if rois is not None:
        roi_rows = roi_table(volume, passes.quality_map.windows, passes.quality_map.lung, passes.noise.noise_sd, rois)
    if progress is not None:
        progress(0.97, "series panel")
    series = series_panel.run(volume, passes.noise, series_spec, passes.quality_map.device)
    if progress is not None:
        progress(1.0, "tables")
    score_notes = (score_note,) if score_note else ()
    scores, result = passes.scores, passes.quality_map
    if score_spec is not None and scores is None:
        body_slices = sum(row.voxels > 0 for row in passes.slices)
        score_notes += global_score.unscored_notes(volume, score_spec, body_slices)
    if scores is not None:
        score_notes += tuple(f"0-4 score outside its domain: {note}" for note in scores.summary.domain_notes)
    if scores is not None and scores.device_fallback and scores.device_fallback != result.device_fallback:
        score_notes += (f"quality score: {scores.device_fallback}",)
    summary = _summary(volume, passes, window_mm, series, score_notes, denoised)
    return Assessment(
        volume, result, passes.noise, passes.reference_ssim, passes.slices, roi_rows, summary, scores, denoised
    )


@contextmanager
def _writing_into(folder: Path):
    """A failed write (disk full, quota) as one line naming the output folder, not the staging file."""
    try:
        yield
    except OSError as error:
        raise InputError(f"{folder}: cannot write the outputs ({error.strerror or error})") from None


def write_outputs(
    assessment: Assessment,
    folder: str | os.PathLike,
    preview: bool = True,
    compress: bool = True,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Write the output contract (outputs.OUTPUT_FILES) into folder atomically; returns the written paths by role.

    preview=False leaves out preview.png (and matplotlib, which Slicer does not bundle); compress=False writes the
    maps uncompressed (temporary outputs another program reads at once); extra: blocks added to summary.json
    (a batch run's "batch" block: batch.py).
    """
    volume = assessment.volume
    release_free_memory()  # the tables' freed temporaries, before the peak of writing (slabs in flight)
    with OutputFolder(folder) as out, _writing_into(out.folder):
        write_map(assessment.quality, volume, out.stage("quality_map"), compress)
        write_map(assessment.noise.noise_sd, volume, out.stage("noise_map"), compress)
        if assessment.reference_ssim is not None:
            write_map(assessment.reference_ssim, volume, out.stage("reference_ssim_map"), compress)
        if assessment.denoised is not None:
            denoised_ct = denoise.storage_array(assessment.denoised.volume.hu)  # int16 for whole HU (tasks/denoise)
            write_map(denoised_ct, volume, out.stage("denoised_ct"), compress)
            write_map(assessment.denoised.quality, volume, out.stage("quality_map_denoised"), compress)
        write_csv([table_row(row) for row in assessment.slices], SLICE_COLUMNS, out.stage("slices"))
        if assessment.rois is not None:
            write_csv([table_row(row) for row in assessment.rois], ROI_COLUMNS, out.stage("rois"))
        if preview:
            from ctqa.reports.preview import save_preview  # matplotlib is imported only when a preview is drawn

            save_preview(assessment, out.stage("preview"))
        return out.commit({**to_json(assessment.summary), **(extra or {})})
