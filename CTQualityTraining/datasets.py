"""Sharded training datasets of simulated low-dose CT slices, with a manifest, resumable.

Layout of DIR: ``shards/<id>.npz``, one shard per source volume, and ``manifest.json`` (parameters, seeds,
sources with their split and shard). Each file is written to a temporary name and moved into place (os.replace), so
it is whole or absent; the manifest is written last, so it exists only beside a complete dataset. A rerun (after an
error or Ctrl-C) keeps the shards whose recorded build (``build``: parameters and manifest entry) matches, and
rebuilds the others. Arrays of a shard (n = samples): ``hu`` int16 (n, y, x) HU; ``dose`` float32 (n,) dose
fraction; ``dose_class``, ``kernel_class``, ``method`` int8 (n,) (METHODS); ``score`` float32 (n,) on 0-4
(surrogate, labels.py, or the radiologists' mean for LDCTIQAC2023); ``slice`` int16 (n,); ``pixel_mm`` float32
(n,); ``build`` the JSON text of the build. Simulated sources also hold ``reference`` int16 (n, y, x) HU (full dose,
same kernel) and the label maps ``ssim`` (soft-tissue window) and ``ssim_lung`` (lung window), float16 (n, y, x).

Sources (readers): a volume file or DICOM folder (the core's read_volume); a folder of Mayo-style pairs
``<patient>_<n>_input.npy`` (quarter dose) / ``<patient>_<n>_target.npy`` (full dose) with value = (HU + 1024) /
4096 (MAYO_NPY_SCALING); a Mayo-style DICOM patient folder with one ``*full*`` and one ``*quarter*`` series subfolder
(.IMA/.dcm); the LDCTIQAC2023 layout ``image/NNNN.tif`` (float32 in [0, 1] = -135..215 HU, LDCTIQAC_SCALING) +
``train.json`` (file name -> mean radiologist score); a folder of single-slice DICOM files of several patients
named ``<patient>_<rest>.dcm`` (chest_sbu), one source per file, grouped by patient. Every file is read by the
core's read_volume (NaN/inf, blank, 8-bit and out-of-range values refused, naming the file), with the core's
scalings (ctqa.scaling); a blank slice is refused too. Splits are drawn per patient (Mayo, chest_sbu) or per
volume, never per slice: by a hash of the group name and the seed (``split_of``), or chosen explicitly per group
(``split_groups``, for small collections where the hash might leave the test split empty).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ctqa.errors import InputError
from ctqa.io import read_volume
from ctqa.outputs import check_output_folder, written_whole
from ctqa.physics.lung import LUNG_WINDOW_HU

from .imagedomain import simulate_from_pair
from .labels import dose_class, kernel_class, ssim_labels, surrogate_score
from .projection import DEFAULT_DOSES, DEFAULT_VIEWS, check_ct_slices, check_not_blank, simulate

#: Core scaling (ctqa.scaling) of Mayo .npy slices: value = (HU + 1024) / 4096 (data/README.md).
MAYO_NPY_SCALING = "mayo-npy"
#: Core scaling of LDCTIQAC2023 images: [0, 1] renderings of W350/L40, 0 = -135 HU, 1 = 215 HU, clipped outside.
LDCTIQAC_SCALING = "ldctiqac2023"
#: Pixel size of Mayo .npy slices, which store none (patient L506; override with pixel_mm).
MAYO_PIXEL_MM = 0.74
#: Simulation methods, value = index: projection domain, image domain (QD/FD pair), as acquired (no simulation).
METHODS = ("projection", "image-domain", "acquired")
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
#: HU of the air added around non-square slices.
AIR_PAD_HU = -1024.0


@dataclass
class Source:
    """One source volume: the unit of a shard. group (patient or volume) is the unit of the split."""

    id: str
    group: str
    kind: str
    path: str
    load: Callable[[], dict]


def _volume_source(path: Path, group: str | None = None) -> Source:
    """A volume file or DICOM folder; its group is group, else its name without .gz."""

    def load() -> dict:
        volume = read_volume(path)
        if abs(volume.spacing[0] - volume.spacing[1]) > 1e-3 * volume.spacing[0]:
            raise InputError(f"{path}: pixels are not square ({volume.spacing[0]} x {volume.spacing[1]} mm)")
        return {"hu": volume.hu, "pixel_mm": volume.spacing[0]}

    name = path.name.removesuffix(".gz")
    return Source(name, group or name, "volume", str(path), load)


def single_slice_files(folder: Path) -> list[Path]:
    """The files of a folder of single-slice DICOM files of several patients: only ``<patient>_<rest>.dcm`` files,
    no subfolders, at least two patients; [] for any other folder."""
    entries = sorted(Path(folder).iterdir())
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if len(files) != len(entries) or not all(p.suffix.lower() == ".dcm" and "_" in p.stem for p in files):
        return []
    return files if len({patient_of(p) for p in files}) > 1 else []


def patient_of(path: Path) -> str:
    """The patient of a single-slice file named ``<patient>_<rest>``: the name before the first "_"."""
    return path.name.split("_", 1)[0]


def mayo_pair_files(folder: Path) -> list[tuple[str, Path, Path]]:
    """(case, full-dose <case>_target.npy, quarter-dose <case>_input.npy) of a folder of Mayo pairs, sorted;
    InputError for a target without its partner."""
    pairs = []
    for target in sorted(Path(folder).glob("*_target.npy")):
        case = target.name.removesuffix("_target.npy")
        quarter = target.with_name(f"{case}_input.npy")
        if not quarter.is_file():
            raise InputError(f"{target}: no quarter-dose partner {quarter.name}")
        pairs.append((case, target, quarter))
    return pairs


def read_mayo_pair(target: Path, quarter: Path) -> tuple[np.ndarray, np.ndarray]:
    """(full dose, quarter dose): float32 (z, y, x) HU of a Mayo .npy pair (MAYO_NPY_SCALING) of equal shape."""
    full, low = (read_volume(path, scaling=MAYO_NPY_SCALING).hu for path in (target, quarter))
    if full.shape != low.shape:
        raise InputError(f"{quarter}: shape {low.shape} differs from the {full.shape} of {target.name}")
    return full, low


def _mayo_sources(folder: Path, pixel_mm: float | None) -> list[Source]:
    sources = []
    for case, target, quarter in mayo_pair_files(folder):

        def load(target=target, quarter=quarter) -> dict:
            full, low = read_mayo_pair(target, quarter)
            return {"hu": full, "quarter": low, "pixel_mm": pixel_mm or MAYO_PIXEL_MM}

        sources.append(Source(case, case.split("_")[0], "mayo-pair", str(target), load))
    return sources


def _dicom_pair_folders(folder: Path) -> tuple[Path, Path] | None:
    """(full-dose, quarter-dose) subfolders of a Mayo-style DICOM patient folder (e.g. full_3mm/, quarter_3mm/)."""
    subfolders = [p for p in folder.iterdir() if p.is_dir()]
    full = [p for p in subfolders if "full" in p.name.lower()]
    quarter = [p for p in subfolders if "quarter" in p.name.lower()]
    return (full[0], quarter[0]) if len(full) == 1 and len(quarter) == 1 else None


def _dicom_pair_source(folder: Path, full_folder: Path, quarter_folder: Path) -> Source:
    """A patient folder with full- and quarter-dose DICOM series (.IMA/.dcm) of the same slices."""

    def load() -> dict:
        full, quarter = read_volume(full_folder), read_volume(quarter_folder)
        if full.shape != quarter.shape or not np.allclose(full.origin, quarter.origin, atol=1e-3):
            raise InputError(f"{quarter_folder}: quarter-dose series is not on the grid of {full_folder}")
        return {"hu": full.hu, "quarter": quarter.hu, "pixel_mm": full.spacing[0]}

    return Source(folder.name, folder.name, "dicom-pair", str(folder), load)


def _ldctiqac_scores(path: Path) -> dict[str, float]:
    """{image file name: mean radiologist score} of an LDCTIQAC2023 train.json; InputError unless every score is a
    finite number."""
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    if not isinstance(scores, dict):
        raise InputError(f"{path}: expected an object of file name -> score")
    for name, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(f"{path}: the score of {name} is {score!r}, not a finite number")
    return scores


def _ldctiqac_sources(folder: Path, pixel_mm: float | None) -> list[Source]:
    sources = []
    for name, score in sorted(_ldctiqac_scores(folder / "train.json").items()):
        image = folder / "image" / name
        if not image.is_file():
            raise InputError(f"{folder / 'train.json'}: lists {name}, missing from {folder / 'image'}")

        def load(image=image, score=score) -> dict:
            hu = read_volume(image, scaling=LDCTIQAC_SCALING).hu
            if hu.shape[0] != 1:
                raise InputError(f"{image}: {hu.shape[0]} slices; LDCTIQAC2023 images are single 2D slices")
            return {"hu": hu, "score": np.array([score], dtype=np.float32), "pixel_mm": pixel_mm or MAYO_PIXEL_MM}

        sources.append(Source(image.stem, image.stem, "ldctiqac", str(image), load))
    return sources


def find_sources(paths, pixel_mm: float | None = None) -> list[Source]:
    """Sources under each path (see module docstring for the layouts); pixel_mm overrides the Mayo/LDCTIQAC size."""
    sources = []
    for entry in map(Path, paths):
        if not entry.exists():
            raise InputError(f"{entry}: no such file or folder")
        if entry.is_dir() and (entry / "train.json").is_file() and (entry / "image").is_dir():
            sources += _ldctiqac_sources(entry, pixel_mm)
        elif entry.is_dir() and any(entry.glob("*_target.npy")):
            sources += _mayo_sources(entry, pixel_mm)
        elif entry.is_dir() and (pair := _dicom_pair_folders(entry)) is not None:
            sources.append(_dicom_pair_source(entry, *pair))
        elif entry.is_dir() and (files := single_slice_files(entry)):
            sources += [_volume_source(path, patient_of(path)) for path in files]
        else:
            sources.append(_volume_source(entry))
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        raise InputError(f"two sources share a name ({sorted({i for i in ids if ids.count(i) > 1})[0]}); rename one")
    return sources


def split_of(group: str, seed: int) -> str:
    """train / val / test for a patient or volume group, fixed by a hash of group and seed."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    position, edge = int.from_bytes(digest[:8], "big") / 2**64, 0.0
    for name, fraction in SPLITS:
        edge += fraction
        if position < edge:
            return name
    return SPLITS[-1][0]


def assign_splits(groups, seed: int, split_groups: dict[str, str] | None = None) -> dict[str, str]:
    """{group: split}: split_groups' explicit choice (group -> "train"/"val"/"test") where given, else ``split_of``.

    InputError for an unknown split name or a split_groups entry naming no group.
    """
    split_groups = dict(split_groups or {})
    names = {name for name, _ in SPLITS}
    for group, split in split_groups.items():
        if split not in names:
            raise InputError(f"split of group {group!r} must be one of {sorted(names)}, got {split!r}")
        if group not in groups:
            raise InputError(f"split given for group {group!r}, but no source has it (groups: {sorted(set(groups))})")
    return {group: split_groups.get(group) or split_of(group, seed) for group in groups}


def pad_to_square(hu: np.ndarray) -> np.ndarray:
    """(z, y, x) slices padded with air (AIR_PAD_HU) on both sides of the shorter axis to square; the projection
    simulation needs square slices."""
    hu = np.asarray(hu)
    side = max(hu.shape[-2:])
    pads = [(0, 0)] * (hu.ndim - 2) + [((side - n) // 2, side - n - (side - n) // 2) for n in hu.shape[-2:]]
    return np.pad(hu, pads, constant_values=AIR_PAD_HU) if any(any(p) for p in pads) else hu


def _samples_of(data: dict, parameters: dict, seed: int, source: str) -> dict[str, np.ndarray]:
    """Shard arrays for one loaded source (module docstring) named source in errors; non-square slices of simulated
    sources are padded to square. InputError for a blank slice (before padding, which would hide it)."""
    check_not_blank(data["hu"], source)
    pixel = float(data["pixel_mm"])
    if "score" in data:  # already low dose, scored by radiologists: stored as acquired, no simulation
        hu = np.asarray(data["hu"], np.float32)
        n = hu.shape[0]
        return {
            "hu": np.rint(hu).astype(np.int16),
            "dose": np.full(n, np.nan, np.float32),
            "dose_class": np.full(n, -1, np.int8),
            "kernel_class": np.full(n, kernel_class("native"), np.int8),
            "method": np.full(n, METHODS.index("acquired"), np.int8),
            "score": data["score"],
            "slice": np.arange(n, dtype=np.int16),
            "pixel_mm": np.full(n, pixel, np.float32),
        }
    hu = check_ct_slices(pad_to_square(data["hu"]), source)
    chosen = np.unique(np.linspace(0, hu.shape[0] - 1, min(parameters["slices_per_volume"], hu.shape[0])).round())
    chosen = chosen.astype(int)
    doses = parameters["doses"]
    parts = []  # (images (d, z, y, x), reference (z, y, x), dose list, kernel, method)
    sims = simulate(
        hu[chosen],
        pixel,
        doses,
        parameters["kernels"],
        parameters["views"],
        parameters["electronic_noise"],
        seed,
        parameters["device"],
        source,
        parameters.get("noise_model", "insert"),
    )
    parts += [(sim.hu, sim.reference, sim.doses, kernel, "projection") for kernel, sim in sims.items()]
    if "quarter" in data:
        quarter = pad_to_square(check_not_blank(data["quarter"], source, "quarter-dose slice"))
        pair = simulate_from_pair(hu[chosen], quarter[chosen], doses)
        parts.append((pair, hu[chosen], doses, "native", "image-domain"))
    arrays: dict[str, list] = {
        k: []
        for k in (
            "hu",
            "reference",
            "ssim",
            "ssim_lung",
            "dose",
            "dose_class",
            "kernel_class",
            "method",
            "score",
            "slice",
            "pixel_mm",
        )
    }
    for images, reference, part_doses, kernel, method in parts:
        for image, dose in zip(images, part_doses):
            ssim = ssim_labels(image, reference, source)
            n = image.shape[0]
            arrays["hu"].append(np.rint(image).astype(np.int16))
            arrays["reference"].append(np.rint(reference).astype(np.int16))
            arrays["ssim"].append(ssim.astype(np.float16))
            arrays["ssim_lung"].append(ssim_labels(image, reference, source, LUNG_WINDOW_HU).astype(np.float16))
            arrays["dose"].append(np.full(n, dose, np.float32))
            arrays["dose_class"].append(np.full(n, dose_class(dose), np.int8))
            arrays["kernel_class"].append(np.full(n, kernel_class(kernel), np.int8))
            arrays["method"].append(np.full(n, METHODS.index(method), np.int8))
            arrays["score"].append(surrogate_score(ssim, reference))
            arrays["slice"].append(chosen.astype(np.int16))
            arrays["pixel_mm"].append(np.full(n, pixel, np.float32))
    return {k: np.concatenate(v) for k, v in arrays.items()}


def source_entries(sources: list, splits: dict[str, str], seed: int) -> list[dict]:
    """The manifest entry of each source (sorted): id, group, kind, path, split (splits by group), seed (seed + its
    position) and its shard file."""
    return [
        {
            "id": s.id,
            "group": s.group,
            "kind": s.kind,
            "path": s.path,
            "split": splits[s.group],
            "seed": seed + k,
            "shard": f"shards/{s.id}.npz",
        }
        for k, s in enumerate(sources)
    ]


def build_dataset(
    paths,
    out: str | os.PathLike,
    doses=DEFAULT_DOSES,
    kernels=("native", "sharp", "smooth"),
    views: int = DEFAULT_VIEWS,
    slices_per_volume: int = 8,
    electronic_noise: float = 0.0,
    seed: int = 0,
    pixel_mm: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    split_groups: dict[str, str] | None = None,
    noise_model: str = "insert",
) -> dict:
    """Build (or resume) the dataset in out from the sources under paths; returns the manifest.

    Source k is simulated with seed + k (k in sorted source order). split_groups: explicit split per group
    (patient or volume; a volume's group is its file or folder name without .gz), the others by hash
    (``assign_splits``). Refuses a folder that holds a complete dataset built with other parameters; shards of an
    unfinished build are kept when their build matches, rebuilt otherwise (module docstring).
    """
    folder = check_output_folder(out)
    parameters = {
        "doses": [float(d) for d in doses],
        "kernels": list(kernels),
        "views": int(views),
        "slices_per_volume": int(slices_per_volume),
        "electronic_noise": float(electronic_noise),
        "seed": int(seed),
        "pixel_mm": pixel_mm,
        "device": device,
        "split_groups": dict(sorted((split_groups or {}).items())),
        **({"noise_model": noise_model} if noise_model != "insert" else {}),  # earlier manifests have no key
    }
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and _manifest_parameters(manifest_path) != parameters:
        raise InputError(f"{folder}: holds a dataset built with other parameters; choose a new folder")
    sources = sorted(find_sources(paths, pixel_mm), key=lambda s: s.id)
    splits = assign_splits([s.group for s in sources], seed, split_groups)
    manifest = {
        "format": "ctqa-simulated-slices/1",
        "parameters": parameters,
        "sources": source_entries(sources, splits, seed),
    }
    pending = list(zip(sources, manifest["sources"]))
    for source, entry in tqdm(pending, desc="simulate", unit="volume", disable=not progress):
        shard = folder / entry["shard"]
        build = json.dumps({"parameters": parameters, "source": entry}, sort_keys=True)
        if shard_build(shard) == build:
            continue  # finished by an earlier, interrupted run
        arrays = _samples_of(source.load(), parameters, entry["seed"], source.path)
        with written_whole(shard) as partial:
            np.savez_compressed(partial, build=np.array(build), **arrays)
    with written_whole(manifest_path) as partial:
        partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _manifest_parameters(path: Path) -> dict:
    """The parameters recorded in a dataset's manifest.json; InputError when it is not one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["parameters"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a dataset manifest ({error!r}); choose a new folder") from None


def shard_build(path: Path) -> str | None:
    """The build recorded in a shard (JSON text), None when there is no readable shard."""
    try:
        with np.load(path) as shard:
            return str(shard["build"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
