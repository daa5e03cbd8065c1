"""Typed results of an assessment (table rows, estimates, the summary) and their serialisation, in one place.

Every figure a user reads is a field here, with its unit in the name or the docstring. ``to_json`` turns any of
these dataclasses into what ``summary.json`` holds (non-finite floats become null); ``table_columns`` /
``table_row`` give the CSV form of the row types (nested RegionStats fields are flattened).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from ctqa.volume import Acquisition


@dataclass(frozen=True)
class RegionStats:
    """Statistics over the assessed (inside-body) voxels of a region; NaN when it has none.

    quality_*: of the quality map (1 = best); noise_sd_hu: median local noise SD (HU); hu_mean: mean CT value (HU).
    """

    quality_mean: float = math.nan
    quality_median: float = math.nan
    quality_p10: float = math.nan
    noise_sd_hu: float = math.nan
    hu_mean: float = math.nan


@dataclass(frozen=True)
class SliceRow:
    """One row of slices.csv: slice index, its position z (mm, LPS) and statistics over its assessed voxels.

    score, score_sd: the slice's 0-4 quality score (LDCTIQAC2023 scale, 4 = best) and the spread of its predicted
    score distribution; NaN (an empty cell) when no score model ran, for slices without body, and score_sd for
    regression models. *_denoised: the same slice of the denoised CT (quality mean and 10th percentile, median
    noise SD in HU, 0-4 score); NaN without --denoise. Each addition comes last in the row, so readers of the
    earlier columns are unaffected.
    """

    slice: int
    z_mm: float
    voxels: int
    stats: RegionStats
    score: float = math.nan
    score_sd: float = math.nan
    quality_mean_denoised: float = math.nan
    quality_p10_denoised: float = math.nan
    noise_sd_hu_denoised: float = math.nan
    score_denoised: float = math.nan


@dataclass(frozen=True)
class RoiRow:
    """One row of rois.csv. status: "ok", "empty" (no voxels) or "outside body" (none assessed); window: the HU
    window its quality is read in, "lung" (most of its voxels in the lung mask) or "soft_tissue" ("" unless ok)."""

    label: int
    name: str
    voxels: int
    status: str
    window: str
    stats: RegionStats


@dataclass(frozen=True)
class LungQuality:
    """Quality by tissue window: the lung (lung mask, from HU and connectivity) in the lung window, the rest of the
    body in the soft-tissue window. Means of the quality map (1 = best); NaN where there is no such voxel, and the
    lung mean also when the model has no lung window."""

    lung_voxels: int
    lung_quality_mean: float
    soft_tissue_quality_mean: float
    lung_window_hu: tuple[float, float]
    soft_tissue_window_hu: tuple[float, float]


@dataclass(frozen=True)
class LearnedNoiseLevel:
    """The learned model's dose head read as what it is: a noise level relative to its training data, not a dose.

    relative_noise: noise SD relative to the full-dose images of the training protocol, exp(-mean(ln d) / 2) over
    the body slices, where d is the head's per-slice dose-equivalent (noise SD scales as 1/sqrt(d)). On real
    quarter/routine-dose pairs it did not track the true dose ratio within x1.5 (docs/contract.md), so it is not
    presented as a dose fraction.
    """

    relative_noise: float
    slices_used: int
    definition: str = (
        "noise SD relative to the full-dose images the model was trained on (learned, training-protocol specific; "
        "not a dose fraction)"
    )


@dataclass(frozen=True)
class ClassCall:
    """A two-class call of a series: label and the probability of that label (0.5..1)."""

    label: str
    probability: float


@dataclass(frozen=True)
class SeriesClasses:
    """Window (reconstruction) and dose class of a series from one classifier.

    window: "lung" (sharp lung kernel) or "soft_tissue" (smooth kernel); dose: "low" or "standard" exposure for the
    patient's size, the kernel and the slice thickness; method: the classifier (a model name or "physics").
    """

    window: ClassCall
    dose: ClassCall
    method: str


@dataclass(frozen=True)
class SeriesMeasures:
    """The series panel (Chest CT-IQA): physics measures, window/dose classes and the fitted score of a series.

    applies: False when the panel does not apply (not a body CT, or too little tissue to measure; note says why;
    the classes and the score are then None). water_equivalent_diameter_mm: mean TG-220 D_w over slices;
    kernel_index: mean NPS frequency in flat tissue (cycles/mm; sharper kernels score higher), measured in
    kernel_index_patches patches; noise_normalised_hu: GNL for a 300 mm water-equivalent patient at 3 mm slices
    (approximate); slice_thickness_mm: None when unknown; snr: (soft-tissue mean HU + 1000) / GNL; brisque: BRISQUE
    (Mittal et al. 2012; lower = more natural) of body slices in the soft-tissue window; window, dose: the learned
    classifier's calls when the series model's card says they validated better, else the physics classifier's;
    physics: the physics classifier's calls beside them; fitted_score: the Chest CT-IQA eq. 4 linear fit of the four
    outputs (its model card says what it was fitted to); classifier: the learned model's name when its calls are
    shown, else None; calls_from: "learned" or "physics" (None without calls); series_model: the series model whose
    card supplied the physics classifier and the fit; acquisition: DICOM tags (kernel, CTDIvol, mAs...) when known;
    tag_disagreements: where the tags contradict a call, one sentence each.
    """

    applies: bool
    note: str | None
    water_equivalent_diameter_mm: float
    kernel_index: float
    kernel_index_patches: int
    noise_normalised_hu: float
    slice_thickness_mm: float | None
    snr: float
    brisque: float
    window: ClassCall | None = None
    dose: ClassCall | None = None
    physics: SeriesClasses | None = None
    fitted_score: float | None = None
    classifier: str | None = None
    calls_from: str | None = None
    series_model: str | None = None
    acquisition: Acquisition | None = None
    tag_disagreements: tuple[str, ...] = ()


#: The scale of the global score: the LDCTIQAC2023 convention (0 bad ... 4 excellent, a mean of radiologists).
SCORE_SCALE = "0-4 LDCTIQAC2023"


@dataclass(frozen=True)
class GlobalScore:
    """summary.json's global_score block: the 0-4 quality score of a volume (LDCTIQAC2023 scale, 4 = best).

    value: mean of the slice scores over the slices with body; worst_decile: mean of the worst 10 % of those slices
    (at least one); sd: mean of the slices' SDs, the spread of the predicted score distributions (the model's
    uncertainty about one slice, not a confidence interval of the mean; NaN for regression models); model: the
    score model's name; slices_scored: slices with body that were scored; calibrated: the model card's monotone
    calibration to a user's radiologists was applied; device: where the model ran; trained_to: what the model's
    scores were fitted to, "surrogate" (a full-reference measure on simulated degradations, not radiologists'
    ratings: the bundled model), "radiologist scores" (LDCTIQAC2023 labels) or "calibrated to radiologist ratings";
    domain_notes: why the score may not mean what its label says for this input (outside the model's training
    domain: pixel size, a narrow display window, noise or texture never seen in training); () when in domain.
    """

    value: float
    sd: float
    worst_decile: float
    scale: str
    model: str
    slices_scored: int
    calibrated: bool
    device: str
    trained_to: str
    domain_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DenoisedSummary:
    """summary.json's denoised block: the global figures of the denoised CT (``ctqa assess --denoise``).

    model, method: the denoiser and its training ("supervised" or "neighbor2neighbor"); device: where it ran.
    gnl_hu, snr, cnr, global_quality_score, quality_median, quality_p10: as in Summary, measured on the denoised
    CT; score: its 0-4 global_score block (None without a score model); gnl_reduction_percent:
    100 x (1 - GNL after / GNL before) (NaN where either GNL is not reported); reference_ssim_mean_body: mean SSIM
    of the denoised CT against --reference over the body (None without a reference); quality_caveat: how the
    quality figures of a denoised image are to be read (tasks/denoise.QUALITY_CAVEAT).
    """

    model: str
    method: str
    device: str
    gnl_hu: float
    gnl_reduction_percent: float
    snr: float
    cnr: float
    global_quality_score: float
    quality_median: float
    quality_p10: float
    score: GlobalScore | None
    reference_ssim_mean_body: float | None
    quality_caveat: str


@dataclass(frozen=True)
class RunSettings:
    """How the figures were made: model, where it ran, the input scaling and the noise window."""

    model: str
    model_kind: str  # "builtin" or "learned"
    model_card: str | None  # path of a learned model's JSON card
    device: str
    precision: str
    device_fallback: str | None
    scaling: str
    noise_window_mm: float
    noise_window_voxels_yx: tuple[int, int]


@dataclass(frozen=True)
class Summary:
    """summary.json: the global figures of one assessment, the settings and what each figure means."""

    tool: str
    input: str
    shape_zyx: tuple[int, int, int]
    spacing_mm_xyz: tuple[float, float, float]
    notes: tuple[str, ...]  # remarks on the input and on figures not reported
    settings: RunSettings
    global_quality_score: float  # mean quality over the body
    quality_median: float
    quality_p10: float
    gnl_hu: float
    snr: float
    cnr: float
    soft_tissue_hu_mean: float
    fat_hu_mean: float
    body_voxels: int
    learned_noise_level: LearnedNoiseLevel | None = None
    lung: LungQuality | None = None
    series: SeriesMeasures | None = None
    global_score: GlobalScore | None = None
    reference_ssim_mean_body: float | None = None
    reference_ssim_mean: float | None = None
    denoised: DenoisedSummary | None = None
    definitions: dict[str, str] = field(default_factory=dict)


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def to_json(result) -> dict:
    """A JSON-ready dict of a result dataclass: nested dataclasses as objects, NaN/inf as null."""
    if not is_dataclass(result):
        raise TypeError(f"not a result dataclass: {type(result).__name__}")
    return _jsonable(asdict(result))


def table_columns(row_type) -> tuple[str, ...]:
    """CSV columns of a row dataclass (SliceRow, RoiRow): its fields with `stats` expanded into RegionStats'."""
    columns = []
    for item in fields(row_type):
        if item.name == "stats":
            columns.extend(f.name for f in fields(RegionStats))
        else:
            columns.append(item.name)
    return tuple(columns)


def table_row(row) -> dict:
    """{column: value} of a row dataclass in table_columns order; non-finite floats become None."""
    flat = {}
    for item in fields(row):
        value = getattr(row, item.name)
        if item.name == "stats":
            flat.update(asdict(value))
        else:
            flat[item.name] = value
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in flat.items()
    }


def table_column_types(row_type) -> dict[str, type]:
    """{column: int, float or str} of a row dataclass, for reading its CSV back (a segment named "007" stays "007")."""
    kinds = {"int": int, "float": float, "str": str}
    types = {}
    for item in fields(row_type):
        nested = fields(RegionStats) if item.name == "stats" else [item]
        types.update({f.name: kinds[str(f.type)] for f in nested})
    return types


SLICE_COLUMNS = table_columns(SliceRow)
ROI_COLUMNS = table_columns(RoiRow)
