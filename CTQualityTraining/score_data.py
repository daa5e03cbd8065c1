"""Dataset of the global 0-4 quality score (issue 11): simulated, LDCTIQAC2023-labelled and unlabelled real slices.

Layout of DIR (as ``datasets.build_dataset``): ``shards/<source id>.npz``, one per source, and ``manifest.json``
(parameters, surrogate definition, sources with group, split, seed, shard and sample counts), each written whole
(``ctqa.outputs.written_whole``), the manifest last. A rerun keeps the shards whose recorded build matches and
rebuilds the others; a folder holding a complete dataset built with other parameters is refused.

Arrays of a shard (n samples): ``hu`` int16 (n, 512, 512) HU, square (pad with air, then resize; see below);
``score`` float32 (n,) on 0-4 (surrogate, radiologists' mean for LDCTIQAC2023, NaN when unlabelled); ``labelled``
bool (n,); ``ssim`` float32 (n,) the mean SSIM the surrogate comes from (NaN unless simulated); ``dose`` float32 (n,)
dose fraction (simulated: photons per view relative to the full dose; as acquired: 1 or 0.25 for a Mayo
full/quarter-dose pair, NaN where unknown); ``views`` int16 (n,) projections over 180 deg (0 unless simulated);
``kind`` int8 (n,) index into KINDS; ``slice`` int16 (n,) index in the source volume; ``pixel_mm`` float32 (n,) after
resizing; ``build`` the JSON text of the build.

Kinds: "simulated" - real full-dose slices degraded on a grid of dose x view count by the projection simulation
(``projection.simulate``, kernel "smooth", the soft-tissue reconstruction of the challenge's abdominal images), scored
by the surrogate; "ldctiqac" - the LDCTIQAC2023 layout ``image/*.tif`` + ``train.json`` (radiologists' mean score);
"unlabelled" - every real slice as acquired (full dose and the Mayo quarter-dose inputs alike), for the
semi-supervised step. Sources named in ``unlabelled_paths`` go to the unlabelled pool only (no simulation: e.g. 3 mm
volumes that would have to be upsampled fourfold before projection).

Degradations. Views: the full acquisition has FULL_VIEWS = 720 projections over 180 deg; a sparse acquisition keeps
V of them at the same photons per view (as sparse-view data made by dropping views from a scan), so its total
exposure is dose x V / 720 and it has more noise as well as the streaks of angular undersampling. The full-view
images are ``projection.simulate(kernels=("smooth",), views=720)``, whose I0 (photons per bin and view) is
calibrated on the slice's own noise. A sparse image re-projects the slice at V views, reconstructs it with the same
filter, and inserts the extra noise with that same I0: the image variance of the V-view FBP is sigma^2 x 720 /
(V d), the re-reconstructed slice carries about sigma^2 already, so the inserted ray-wise noise is that of the
dose fraction d' = 1 / (1/d + 1 - V/720) (``effective_dose``). ``projection.simulate`` at V views would instead
recalibrate I0 on the streaky V-view image, tying the noise to how streaky the slice is; hence the separate path.

Surrogate score (``surrogate_score``). S = mean SSIM (``ctqa.physics.ssim.ssim_map``: Gaussian 11x11, sigma 1.5, K1
0.01, K2 0.03) over the body (reference > -500 HU) in the challenge's display window W350/L40 (-135..215 HU, clipped,
scaled to [0, 1]), against the full-dose FULL-VIEW smooth image of the same slice; score = 4 (S - floor) / (ceiling -
floor) clipped to [0, 4] (SCORE_SSIM_FLOOR, SCORE_SSIM_CEILING; both in the manifest). Why: SSIM is the standard
full-reference proxy of perceived quality (Wang et al. 2004; it tracks observer scores far better than MSE/PSNR on IQA
databases); here it falls with noise (lower dose) and with streaks (fewer views), the two degradations of the challenge,
and computed in the radiologists' reading window it weighs only what they see. Floor 0.2 and ceiling 1 make the default
grid (8 doses x 7 view counts: 5-100 % dose, 64-720 views, from mild noise to heavy streaks) span the scale about evenly
on the shared real slices (28 slices, 1568 images, built into .work/score_data): per half point from 0 to 4, 249 / 206 /
206 / 218 / 216 / 176 / 162 / 135 images, mean 1.81, 4 % clipped at 0, only the references at 4; full-view 25 % dose
(noise about twice the full dose, as in the Mayo quarter-dose data) scores 2.84 (2.24-3.34, "fair" to "good"), 5 % dose
1.41, 64 views at full dose 0.66. Mean SSIM fell strictly with dose and with view count in every cell of every slice.
What it cannot capture: the task (a noise level that hides a small low-contrast lesion scores the same as one on a large
organ); the absolute quality of the acquisition (the reference always scores 4, even when the acquired slice was already
noisy or thin); readers' preferences of texture and kernel (the labelled images are all smooth-kernel
re-reconstructions, the unlabelled ones keep their scanner's kernel); the non-linear weighing of streaks against noise
(one SSIM unit of streaks is not one unit of noise to a reader); anatomy outside the window. It is monotone in each
degradation, which the score network learns; a user's radiologist ratings recalibrate it (``ctqa-train
calibrate-score``).

Resizing (sources whose grid is not 512 x 512): the slice is padded with air (-1024 HU) on both sides of the shorter
axis to a square (``datasets.pad_to_square``), then resampled to 512 x 512 with antialiased bilinear interpolation
(torch ``interpolate(antialias=True)``: a box-like average when shrinking, plain bilinear when enlarging), and the
pixel size becomes pixel x side / 512. The score network sees 512 x 512 slices of the same field of view.

Splits are per patient (``datasets.assign_splits``): DEFAULT_SPLIT_GROUPS for the shared data (used for the groups it
names when ``split_groups`` is None), the others by hash; then in every collection (input path) of at least three
patients, val and test each receive one if the hash left them none (``_hold_out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.models.score_network import INPUT_SIZE, score_canvas
from ctqa.outputs import check_output_folder, written_whole
from ctqa.scaling import NAMED

from .datasets import SPLITS, Source, assign_splits, find_sources, pad_to_square, shard_build
from .labels import BODY_HU, ssim_labels
from .projection import (
    DEFAULT_VIEWS,
    KERNELS,
    MU_WATER_PER_MM,
    ParallelBeam,
    _lowered,
    check_ct_slices,
    check_not_blank,
    hu_to_mu,
    simulate,
)

SCORE_FORMAT = "ctqa-score-slices/1"
#: The LDCTIQAC2023 display window W350/L40 in HU ([0, 1] <-> -135..215 HU).
SCORE_WINDOW_HU: tuple[float, float] = NAMED["ldctiqac2023"].clipped_hu
#: Side of the square slices of the dataset (and of the score network's input).
SCORE_SIZE = 512
#: Projections over 180 deg of the full acquisition (the reference).
FULL_VIEWS = DEFAULT_VIEWS
#: Reconstruction kernel of the simulated images (soft tissue, like the challenge's abdominal images).
SCORE_KERNEL = "smooth"
#: Sample kinds, value = index in the shards' ``kind``.
KINDS = ("simulated", "ldctiqac", "unlabelled")
#: Dose fractions (photons per view relative to full dose) and view counts of the default grid (module docstring).
DEFAULT_SCORE_DOSES = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
DEFAULT_SCORE_VIEWS = (720, 512, 360, 256, 180, 128, 64)
#: Mean SSIM mapped to score 0 and to score 4 (linear between, clipped).
SCORE_SSIM_FLOOR = 0.2
SCORE_SSIM_CEILING = 1.0
DEFAULT_SLICES_PER_VOLUME = 4
#: Explicit splits of the patients in ../shared/data (used when split_groups is None, for the groups present):
#: chest_sbu's 10 patients (file prefix) 6 / 2 / 2, chosen to mix GE and Toshiba, chest and abdomen in val and test;
#: the Mayo sharp-kernel abdomen (L067, folder mayo_sharp) also in test, the challenge's anatomy; the rest in train.
DEFAULT_SPLIT_GROUPS = {
    "A046441": "val",
    "A048383": "val",
    "A062055": "test",
    "A098752": "test",
    "mayo_sharp": "test",
    "A002304": "train",
    "A027284": "train",
    "A056642": "train",
    "A058062": "train",
    "A067967": "train",
    "A072894": "train",
    "L506": "train",
    "example_ct_dicom": "train",
    "example_ct.nii": "train",
}
_ARRAYS = ("hu", "score", "labelled", "ssim", "dose", "views", "kind", "slice", "pixel_mm")


@dataclass
class ScoreSamples:
    """Samples of one split: hu int16 (n, 512, 512) HU; score float32 (n,) 0-4 (NaN unlabelled); labelled bool (n,);
    ssim float32 (n,); dose float32 (n,); views int16 (n,); kind int8 (n,) (KINDS); group and source: n names."""

    hu: np.ndarray
    score: np.ndarray
    labelled: np.ndarray
    ssim: np.ndarray
    dose: np.ndarray
    views: np.ndarray
    kind: np.ndarray
    group: list[str]
    source: list[str]

    def __len__(self) -> int:
        return int(self.score.shape[0])


def to_score_grid(
    hu: np.ndarray, pixel_mm: float, size: int = SCORE_SIZE, grid_mm: float | None = None
) -> tuple[np.ndarray, float]:
    """((z, size, size) float32 HU, pixel mm) of (z, y, x) slices. grid_mm None (the old convention): padded with
    air to square, then resampled with antialiased bilinear interpolation when the side is not size (module
    docstring); grid_mm: the physical canvas of ``score_network.score_canvas`` (size must be its INPUT_SIZE)."""
    if grid_mm is not None:
        if size != INPUT_SIZE:
            raise InputError(f"a grid dataset has {INPUT_SIZE} x {INPUT_SIZE} slices, got size {size}")
        return score_canvas(np.asarray(hu, np.float32), (pixel_mm, pixel_mm), grid_mm), float(grid_mm)
    square = pad_to_square(np.asarray(hu, np.float32))
    side = square.shape[-1]
    if side == size:
        return square, float(pixel_mm)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(
            torch.as_tensor(square)[:, None], size=(size, size), mode="bilinear", antialias=True
        )
    return resized[:, 0].numpy(), float(pixel_mm) * side / size


def effective_dose(dose: float, views: int, full_views: int = FULL_VIEWS) -> float:
    """Dose fraction whose ray-wise extra noise, reconstructed from views projections, gives a sparse acquisition at
    dose (photons per view) its noise on top of the re-reconstructed slice (module docstring)."""
    return 1.0 / (1.0 / dose + 1.0 - views / full_views)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def simulate_score_grid(
    hu: np.ndarray,
    pixel_mm: float,
    doses,
    views,
    seed: int = 0,
    device: str = "cpu",
    source: str = "<array>",
    full_views: int = FULL_VIEWS,
) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (len(views), len(doses), z, y, x) HU, reference float32 (z, y, x) HU) of square real slices
    (z, y, x) HU: each view count (<= full_views) x dose fraction, smooth kernel; the reference is the full-dose
    full-view image. Reproducible for a given seed and device; InputError for slices that are not whole CT.
    """
    full = simulate(hu, pixel_mm, doses, (SCORE_KERNEL,), full_views, 0.0, seed, device, source)[SCORE_KERNEL]
    slices = check_ct_slices(hu, source)
    filt, to_hu = KERNELS[SCORE_KERNEL], 1000.0 / (pixel_mm * MU_WATER_PER_MM)
    images = []
    for count in views:
        if count == full_views:
            images.append(full.hu)
            continue
        geometry = ParallelBeam(slices.shape[1], count, device)
        generator = torch.Generator(device=geometry.device).manual_seed(_seed(seed, count))
        original = torch.as_tensor(slices, device=geometry.device)
        with torch.no_grad():
            line_integrals = geometry.project(hu_to_mu(original) * pixel_mm)
            recon = geometry.fbp(line_integrals, filt, pixel_mm) * to_hu
            reference = torch.where(geometry.inside, recon - 1000.0, original)
            doses_v = tuple(effective_dose(d, count, full_views) for d in full.doses)
            sparse = _lowered(
                SCORE_KERNEL,
                reference,
                full.i0,
                full.full_dose_noise_sd,
                line_integrals,
                geometry,
                filt,
                pixel_mm,
                doses_v,
                0.0,
                generator,
            )
        images.append(sparse.hu)
    return np.stack(images), full.reference


def mean_ssim(images: np.ndarray, reference: np.ndarray, source: str = "<array>") -> np.ndarray:
    """(n,) mean SSIM in SCORE_WINDOW_HU over the body (reference > -500 HU; the whole slice when it has none) of
    images (n, y, x) HU against one reference (y, x) HU."""
    images = np.asarray(images, np.float32)
    reference = np.asarray(reference, np.float32)
    maps = ssim_labels(images, np.broadcast_to(reference, images.shape), source, SCORE_WINDOW_HU)
    body = reference > BODY_HU
    return np.array([m[body].mean() if body.any() else m.mean() for m in maps], dtype=np.float32)


def surrogate_score(ssim, floor: float = SCORE_SSIM_FLOOR, ceiling: float = SCORE_SSIM_CEILING) -> np.ndarray:
    """float32 score on 0-4 of mean SSIM values: linear from floor (0) to ceiling (4), clipped (module docstring)."""
    ssim = np.asarray(ssim, np.float64)
    return np.clip(4.0 * (ssim - floor) / (ceiling - floor), 0.0, 4.0).astype(np.float32)


def _evenly(count: int, wanted: int | None) -> np.ndarray:
    """Indices of `wanted` evenly spaced slices of `count` (all when wanted is None or larger)."""
    if wanted is None or wanted >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round()).astype(int)


def _as_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def _arrays(hu, score, ssim, dose, views, kind, slices, pixel_mm) -> dict[str, np.ndarray]:
    n = hu.shape[0]
    score = np.broadcast_to(np.asarray(score, np.float32), (n,)).copy()
    return {
        "hu": _as_int16(hu),
        "score": score,
        "labelled": np.isfinite(score),
        "ssim": np.broadcast_to(np.asarray(ssim, np.float32), (n,)).copy(),
        "dose": np.broadcast_to(np.asarray(dose, np.float32), (n,)).copy(),
        "views": np.broadcast_to(np.asarray(views, np.int16), (n,)).copy(),
        "kind": np.full(n, KINDS.index(kind), np.int8),
        "slice": np.asarray(slices, np.int16).reshape(n),
        "pixel_mm": np.full(n, pixel_mm, np.float32),
    }


def _samples_of(data: dict, role: str, parameters: dict, seed: int, source: str) -> dict:
    """Shard arrays of one loaded source (module docstring); role "simulated" (grid + unlabelled), "unlabelled"
    (as acquired only) or "ldctiqac"."""
    check_not_blank(data["hu"], source)
    size, full_views = parameters["size"], parameters["full_views"]
    hu, pixel = to_score_grid(data["hu"], float(data["pixel_mm"]), size, parameters.get("grid_mm"))
    if role == "ldctiqac":
        return _arrays(hu, data["score"], np.nan, np.nan, 0, "ldctiqac", np.arange(hu.shape[0]), pixel)
    parts = []
    acquired = _evenly(hu.shape[0], parameters["unlabelled_per_volume"])
    paired = "quarter" in data
    parts.append(_arrays(hu[acquired], np.nan, np.nan, 1.0 if paired else np.nan, 0, "unlabelled", acquired, pixel))
    if paired:
        quarter_hu = check_not_blank(data["quarter"], source, "quarter-dose slice")
        quarter = to_score_grid(quarter_hu, float(data["pixel_mm"]), size, parameters.get("grid_mm"))[0]
        parts.append(_arrays(quarter[acquired], np.nan, np.nan, 0.25, 0, "unlabelled", acquired, pixel))
    if role == "simulated":
        doses, views = parameters["doses"], parameters["views"]
        floor, ceiling = parameters["ssim_floor"], parameters["ssim_ceiling"]
        for index in _evenly(hu.shape[0], parameters["slices_per_volume"]):
            images, reference = simulate_score_grid(
                hu[index : index + 1], pixel, doses, views, _seed(seed, index), parameters["device"], source, full_views
            )
            flat = images[:, :, 0].reshape(-1, *reference.shape[1:])  # (views x doses, y, x), views outer
            ssim = mean_ssim(flat, reference[0], source)
            grid_views = np.repeat(np.asarray(views), len(doses))
            grid_doses = np.tile(np.asarray(doses, np.float32), len(views))
            score = surrogate_score(ssim, floor, ceiling)
            parts.append(_arrays(flat, score, ssim, grid_doses, grid_views, "simulated", [index] * len(flat), pixel))
    return {name: np.concatenate([p[name] for p in parts]) for name in _ARRAYS}


def _check_grid(doses, views, full_views: int) -> tuple[list[float], list[int]]:
    doses = [float(d) for d in doses]
    views = [int(v) for v in views]
    if not doses or any(not 0.0 < d <= 1.0 for d in doses) or len(set(doses)) != len(doses):
        raise InputError(f"dose fractions must be distinct and lie in (0, 1], got {doses}")
    if not views or any(not 8 <= v <= full_views for v in views) or len(set(views)) != len(views):
        raise InputError(f"view counts must be distinct and lie in 8..{full_views}, got {views}")
    return doses, views


def _group_rank(group: str, seed: int) -> bytes:
    return hashlib.sha256(f"hold-out:{seed}:{group}".encode()).digest()


def _hold_out(collections: dict[str, list[str]], splits: dict[str, str], explicit: dict, seed: int) -> dict:
    """splits with, in every collection of >= 3 groups that lacks a val or a test group, the first (by a hash of
    seed and name) train group not chosen explicitly moved there."""
    splits = dict(splits)
    for groups in collections.values():
        groups = sorted(set(groups))
        if len(groups) < 3:
            continue
        for wanted in ("val", "test"):
            free = [g for g in groups if splits[g] == "train" and g not in explicit]
            if not any(splits[g] == wanted for g in groups) and free:
                splits[min(free, key=lambda g: _group_rank(g, seed))] = wanted
    return splits


def _find(paths, unlabelled_paths, pixel_mm) -> list[tuple[Source, str, str]]:
    """(source, role, collection) of every source under paths (role simulated or ldctiqac) and unlabelled_paths
    (role unlabelled; LDCTIQAC2023 folders keep their scores), sorted by id; InputError for a duplicate id."""
    found = []
    for paths_, default_role in ((paths, "simulated"), (unlabelled_paths, "unlabelled")):
        for path in paths_:
            for source in find_sources([path], pixel_mm):
                role = "ldctiqac" if source.kind == "ldctiqac" else default_role
                found.append((source, role, str(path)))
    ids = [s.id for s, _, _ in found]
    duplicate = sorted({i for i in ids if ids.count(i) > 1})
    if duplicate:
        raise InputError(f"two sources share the name {duplicate[0]!r}; rename one or pass it once")
    if not found:
        raise InputError("no sources given; name CT volumes, DICOM folders or dataset folders")
    return sorted(found, key=lambda item: item[0].id)


def build_score_dataset(
    paths,
    out: str | os.PathLike,
    doses=DEFAULT_SCORE_DOSES,
    views=DEFAULT_SCORE_VIEWS,
    slices_per_volume: int = DEFAULT_SLICES_PER_VOLUME,
    seed: int = 0,
    device: str = "cpu",
    split_groups: dict[str, str] | None = None,
    progress: bool = True,
    unlabelled_paths=(),
    unlabelled_per_volume: int | None = None,
    ssim_floor: float = SCORE_SSIM_FLOOR,
    ssim_ceiling: float = SCORE_SSIM_CEILING,
    pixel_mm: float | None = None,
    size: int = SCORE_SIZE,
    full_views: int = FULL_VIEWS,
    grid_mm: float | None = None,
) -> dict:
    """Build (or resume) the score dataset in out; returns the manifest (module docstring).

    paths: sources simulated on the dose x views grid (slices_per_volume evenly spaced slices each) and kept as
    acquired in the unlabelled pool (unlabelled_per_volume evenly spaced slices; None = all), or LDCTIQAC2023
    folders (labelled as given); unlabelled_paths: sources for the unlabelled pool only. Source k (sorted by id) has
    seed seed + k, its slice j the seed (seed + k, j). split_groups: explicit split per group (patient or volume);
    None uses DEFAULT_SPLIT_GROUPS for the groups present. pixel_mm overrides the pixel size of Mayo .npy and
    LDCTIQAC2023 sources. size (slice side) and full_views (projections of the reference) are for tests and quick
    experiments; the score network takes 512 x 512 slices.
    """
    folder = check_output_folder(out)
    if size < 32 or full_views < 8:
        raise InputError(f"need a slice side >= 32 and >= 8 full views, got {size} and {full_views}")
    doses, views = _check_grid(doses, views, full_views)
    if not 0.0 <= ssim_floor < ssim_ceiling <= 1.0:
        raise InputError(f"need 0 <= SSIM floor < ceiling <= 1, got {ssim_floor} and {ssim_ceiling}")
    if slices_per_volume < 1 or (unlabelled_per_volume is not None and unlabelled_per_volume < 1):
        raise InputError("slices per volume must be at least 1")
    found = _find(paths, unlabelled_paths, pixel_mm)
    groups = [source.group for source, _, _ in found]
    if split_groups is None:
        explicit = {g: s for g, s in DEFAULT_SPLIT_GROUPS.items() if g in groups}
    else:
        explicit = dict(split_groups)
    collections: dict[str, list[str]] = {}
    for source, _, collection in found:
        collections.setdefault(collection, []).append(source.group)
    splits = _hold_out(collections, assign_splits(groups, seed, explicit), explicit, seed)
    parameters = {
        "doses": doses,
        "views": views,
        "full_views": int(full_views),
        "kernel": SCORE_KERNEL,
        "slices_per_volume": int(slices_per_volume),
        "unlabelled_per_volume": unlabelled_per_volume,
        "seed": int(seed),
        "device": device,
        "pixel_mm": pixel_mm,
        **({"grid_mm": grid_mm} if grid_mm is not None else {}),  # datasets of the old convention still resume
        "size": int(size),
        "window_hu": list(SCORE_WINDOW_HU),
        "ssim_floor": float(ssim_floor),
        "ssim_ceiling": float(ssim_ceiling),
        "split_groups": dict(sorted(explicit.items())),
    }
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and _manifest(manifest_path)["parameters"] != parameters:
        raise InputError(f"{folder}: holds a dataset built with other parameters; choose a new folder")
    entries = [
        {
            "id": source.id,
            "group": source.group,
            "collection": collection,
            "role": role,
            "kind": source.kind,
            "path": source.path,
            "split": splits[source.group],
            "seed": seed + k,
            "shard": f"shards/{source.id}.npz",
        }
        for k, (source, role, collection) in enumerate(found)
    ]
    for (source, role, _), entry in tqdm(
        list(zip(found, entries)), desc="score data", unit="source", disable=not progress
    ):
        shard = folder / entry["shard"]
        build = json.dumps({"parameters": parameters, "source": entry}, sort_keys=True)
        if shard_build(shard) != build:  # else finished by an earlier, interrupted run
            arrays = _samples_of(source.load(), role, parameters, entry["seed"], source.path)
            with written_whole(shard) as partial:
                np.savez_compressed(partial, build=np.array(build), **arrays)
        with np.load(shard) as stored:
            entry["samples"] = dict(Counter(KINDS[k] for k in stored["kind"].tolist()))
    totals = {name: dict(Counter()) for name, _ in SPLITS}
    for entry in entries:
        for kind, n in entry["samples"].items():
            totals[entry["split"]][kind] = totals[entry["split"]].get(kind, 0) + n
    manifest = {
        "format": SCORE_FORMAT,
        "parameters": parameters,
        "surrogate": {
            "measure": "mean SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03) over the body (reference > "
            f"{BODY_HU:g} HU) in the window {SCORE_WINDOW_HU[0]:g}..{SCORE_WINDOW_HU[1]:g} HU",
            "reference": f"full dose, {full_views} views, kernel {SCORE_KERNEL}",
            "score": "clip(4 * (ssim - ssim_floor) / (ssim_ceiling - ssim_floor), 0, 4)",
            "ssim_floor": float(ssim_floor),
            "ssim_ceiling": float(ssim_ceiling),
        },
        "kinds": list(KINDS),
        "samples": totals,
        "sources": entries,
    }
    with written_whole(manifest_path) as partial:
        partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _manifest(path: Path) -> dict:
    """A score dataset's manifest; InputError when path holds none."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest["format"] != SCORE_FORMAT:
            raise ValueError(f"format {manifest['format']!r}, not {SCORE_FORMAT}")
        manifest["parameters"], manifest["sources"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a score dataset manifest ({error})") from None
    return manifest


def load_score_split(data: str | os.PathLike, split: str, labelled: bool | None = None) -> ScoreSamples:
    """The samples of split (train, val or test) of the score dataset in data; labelled: True only labelled (simulated
    and LDCTIQAC2023), False only unlabelled, None all. InputError for a missing dataset, split or shard."""
    folder = Path(data)
    names = [name for name, _ in SPLITS]
    if split not in names:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(names)}")
    if not (folder / "manifest.json").is_file():
        raise InputError(f"{folder}: no manifest.json; build the dataset with ctqa-train score-data")
    manifest = _manifest(folder / "manifest.json")
    parts, groups, sources = [], [], []
    for entry in (e for e in manifest["sources"] if e["split"] == split):
        try:
            with np.load(folder / entry["shard"]) as shard:
                keep = np.ones(shard["labelled"].shape, bool) if labelled is None else shard["labelled"] == labelled
                parts.append({name: shard[name][keep] for name in _ARRAYS})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise InputError(f"{folder / entry['shard']}: cannot read the shard ({error})") from None
        groups += [entry["group"]] * int(keep.sum())
        sources += [entry["id"]] * int(keep.sum())
    if parts:
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in _ARRAYS}
    else:
        size = int(manifest["parameters"].get("size", SCORE_SIZE))
        empty = np.zeros((0, size, size), np.float32)
        arrays = _arrays(empty, np.nan, np.nan, np.nan, 0, "simulated", np.zeros(0), np.nan)
    return ScoreSamples(
        hu=arrays["hu"],
        score=arrays["score"],
        labelled=arrays["labelled"],
        ssim=arrays["ssim"],
        dose=arrays["dose"],
        views=arrays["views"],
        kind=arrays["kind"],
        group=groups,
        source=sources,
    )


def describe(data: str | os.PathLike, bins: int = 8) -> str:
    """Text summary of the score dataset in data: samples per split and kind, and per (dose, views) the surrogate's
    mean, range and histogram on 0-4 (bins bins) over the simulated samples of every split."""
    folder = Path(data)
    manifest = _manifest(folder / "manifest.json")
    lines = [
        "samples per split: " + "; ".join(f"{s} {dict(sorted(k.items()))}" for s, k in manifest["samples"].items())
    ]
    cells: dict[tuple[float, int], list[np.ndarray]] = {}
    for entry in manifest["sources"]:
        with np.load(folder / entry["shard"]) as shard:
            simulated = shard["kind"] == KINDS.index("simulated")
            for dose, count, score in zip(
                shard["dose"][simulated], shard["views"][simulated], shard["score"][simulated]
            ):
                cells.setdefault((float(dose), int(count)), []).append(score)
    edges = np.linspace(0.0, 4.0, bins + 1)
    everything = np.array([s for cell in cells.values() for s in cell], np.float32)
    lines.append(f"surrogate 0-4 of simulated samples, histogram over bins {np.round(edges, 2).tolist()}")
    lines.append(f"{'dose':>6} {'views':>5} {'n':>4} {'mean':>5} {'min':>5} {'max':>5}  histogram")
    for (dose, count), scores in sorted(cells.items(), key=lambda item: (-item[0][1], -item[0][0])):
        scores = np.asarray(scores)
        histogram = np.histogram(scores, edges)[0]
        lines.append(
            f"{dose:6.3g} {count:5d} {len(scores):4d} {scores.mean():5.2f} {scores.min():5.2f} {scores.max():5.2f}  "
            + " ".join(f"{h:3d}" for h in histogram)
        )
    if everything.size:
        histogram = np.histogram(everything, edges)[0]
        lines.append(
            f"{'all':>6} {'':5} {everything.size:4d} {everything.mean():5.2f} {everything.min():5.2f} "
            f"{everything.max():5.2f}  " + " ".join(f"{h:3d}" for h in histogram)
        )
    return "\n".join(lines)


def cli_score_data(args: argparse.Namespace) -> None:
    """`ctqa-train score-data`: build the dataset from the parsed options and print its summary."""
    given = {
        name: getattr(args, name)
        for name in (
            "doses", "views", "slices_per_volume", "unlabelled_per_volume", "seed", "device", "pixel_mm", "grid_mm"
        )
        if getattr(args, name, None) is not None
    }
    if getattr(args, "ssim_range", None):
        given["ssim_floor"], given["ssim_ceiling"] = args.ssim_range
    if getattr(args, "split_groups", None):
        given["split_groups"] = _pairs(args.split_groups)
    unlabelled = getattr(args, "unlabelled", None) or ()
    manifest = build_score_dataset(
        args.input, args.out, unlabelled_paths=unlabelled, progress=sys.stderr.isatty(), **given
    )
    print(f"wrote {args.out}: {len(manifest['sources'])} sources, manifest {args.out}/manifest.json")
    print(describe(args.out))


def _pairs(items: list[str]) -> dict[str, str]:
    """{group: split} from GROUP=SPLIT items; InputError for another form."""
    pairs = {}
    for item in items:
        group, sep, split = item.partition("=")
        if not sep or not group or not split:
            raise InputError(f"--split expects GROUP=SPLIT, got {item!r}")
        pairs[group] = split
    return pairs
