"""Score dataset (CTQualityTraining.score_data): tiny builds, resume, splits, surrogate monotonicity, LDCTIQAC import.

Builds run on small grids (128 x 128 slices, a 90-view reference) so the file stays fast; the real-slice check uses
one Mayo slice at 256 x 256 with a 360-view reference and skips when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import tifffile

from ctqa.errors import InputError
from ctqa.sample import write_sample
from CTQualityTraining.score_data import (
    DEFAULT_SPLIT_GROUPS,
    KINDS,
    SCORE_SSIM_CEILING,
    SCORE_SSIM_FLOOR,
    _hold_out,
    build_score_dataset,
    cli_score_data,
    effective_dose,
    load_score_split,
    mean_ssim,
    simulate_score_grid,
    surrogate_score,
    to_score_grid,
)

TINY = {"doses": (1.0, 0.25), "views": (90, 30), "slices_per_volume": 1, "unlabelled_per_volume": 2}
SMALL = {"size": 128, "full_views": 90, "progress": False}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Paths of the demo phantom's two CTs (24 x 256 x 256 HU, 1.5 mm pixels): two sources, two groups."""
    paths = write_sample(tmp_path_factory.mktemp("sample"))
    return [paths["reference"], paths["ct"]]


@pytest.fixture(scope="module")
def tiny(phantom, tmp_path_factory, torch_single_thread):
    """A finished tiny build: (folder, manifest)."""
    out = tmp_path_factory.mktemp("tiny") / "score"
    return out, build_score_dataset(phantom, out, **TINY, **SMALL)


def test_tiny_build(tiny):
    out, manifest = tiny
    assert manifest["format"] == "ctqa-score-slices/1"
    assert manifest["surrogate"]["ssim_floor"] == SCORE_SSIM_FLOOR == manifest["parameters"]["ssim_floor"]
    assert manifest["surrogate"]["ssim_ceiling"] == SCORE_SSIM_CEILING
    assert manifest["parameters"]["window_hu"] == [-135.0, 215.0]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for entry in manifest["sources"]:
        assert entry["samples"] == {"unlabelled": 2, "simulated": 4}  # 2 doses x 2 view counts x 1 slice
        with np.load(out / entry["shard"]) as shard:
            assert shard["hu"].shape == (6, 128, 128) and shard["hu"].dtype == np.int16
            kind = shard["kind"]
            simulated = kind == KINDS.index("simulated")
            assert np.isnan(shard["score"][~simulated]).all() and not shard["labelled"][~simulated].any()
            assert shard["labelled"][simulated].all() and (shard["views"][~simulated] == 0).all()
            score = dict(zip(zip(shard["dose"][simulated].tolist(), shard["views"][simulated].tolist()),
                             shard["score"][simulated].tolist()))  # fmt: skip
            assert score[(1.0, 90)] == 4.0  # the reference itself
            assert score[(1.0, 90)] > score[(0.25, 90)] > score[(0.25, 30)]
            assert score[(1.0, 90)] > score[(1.0, 30)] > score[(0.25, 30)]
            assert np.allclose(shard["score"][simulated], surrogate_score(shard["ssim"][simulated]))
            assert np.allclose(shard["pixel_mm"], 3.0)  # 256 -> 128 pixels of 1.5 mm


def test_load_split(tiny):
    out, manifest = tiny
    split = manifest["sources"][0]["split"]
    everything = load_score_split(out, split)
    n = sum(sum(e["samples"].values()) for e in manifest["sources"] if e["split"] == split)
    assert len(everything) == n and everything.hu.shape == (n, 128, 128) and len(everything.group) == n
    labelled = load_score_split(out, split, labelled=True)
    unlabelled = load_score_split(out, split, labelled=False)
    assert len(labelled) + len(unlabelled) == n
    assert np.isfinite(labelled.score).all() and np.isnan(unlabelled.score).all()
    other = next(s for s in ("train", "val", "test") if s not in {e["split"] for e in manifest["sources"]})
    assert len(load_score_split(out, other)) == 0


def test_resume_keeps_finished_shards(phantom, tmp_path, torch_single_thread):
    out = tmp_path / "score"
    manifest = build_score_dataset(phantom, out, **TINY, **SMALL)
    kept, lost = (out / entry["shard"] for entry in manifest["sources"])
    before, mtime = np.load(lost)["hu"], kept.stat().st_mtime_ns
    lost.unlink()  # as if interrupted before this shard
    (out / "manifest.json").unlink()
    assert build_score_dataset(phantom, out, **TINY, **SMALL) == manifest
    assert kept.stat().st_mtime_ns == mtime
    assert np.array_equal(np.load(lost)["hu"], before)  # rebuilt bit-identical (seeded)
    with pytest.raises(InputError, match="other parameters"):
        build_score_dataset(phantom, out, **{**TINY, "doses": (1.0, 0.5)}, **SMALL)


def test_hold_out_gives_val_and_test_a_patient():
    collections = {"chest": [f"p{k}" for k in range(5)], "single": ["q"]}
    splits = _hold_out(collections, {g: "train" for g in [*collections["chest"], "q"]}, {"p0": "train"}, seed=0)
    chest = [splits[g] for g in collections["chest"]]
    assert chest.count("val") == 1 and chest.count("test") == 1 and splits["p0"] == "train" and splits["q"] == "train"
    two = _hold_out({"c": ["a", "b"]}, {"a": "train", "b": "train"}, {}, seed=0)
    assert two == {"a": "train", "b": "train"}  # fewer than 3 patients: left alone


def test_real_splits_per_patient(shared_data, tmp_path):
    manifest = build_score_dataset([], tmp_path / "score", unlabelled_paths=[shared_data / "chest_sbu"], progress=False)
    splits: dict[str, set] = {}
    for entry in manifest["sources"]:
        splits.setdefault(entry["group"], set()).add(entry["split"])
    assert len(splits) == 10 and all(len(s) == 1 for s in splits.values())  # one split per patient
    chosen = {group: s.pop() for group, s in splits.items()}
    assert chosen == {g: s for g, s in DEFAULT_SPLIT_GROUPS.items() if g in chosen}
    assert sorted(chosen.values()).count("val") == 2 and sorted(chosen.values()).count("test") == 2
    assert manifest["samples"]["val"] == {"unlabelled": 4} and manifest["samples"]["test"] == {"unlabelled": 4}
    val = load_score_split(tmp_path / "score", "val")
    assert val.hu.shape == (4, 512, 512) and set(val.group) == {"A046441", "A048383"}


def test_surrogate_falls_with_dose_and_views(shared_data, torch_single_thread):
    hu = (np.load(shared_data / "mayo_pairs" / "L506_86_target.npy") * 4096.0 - 1024.0)[None].astype(np.float32)
    hu, pixel = to_score_grid(hu, 0.74, 256)
    doses, views = (1.0, 0.5, 0.25, 0.1), (360, 180, 90, 45)
    images, reference = simulate_score_grid(hu, pixel, doses, views, seed=3, source="L506_86", full_views=360)
    score = surrogate_score(mean_ssim(images[:, :, 0].reshape(-1, 256, 256), reference[0])).reshape(4, 4)
    assert score[0, 0] == 4.0
    assert (np.diff(score, axis=1) < 0).all(), score  # lower dose, lower score, at every view count
    assert (np.diff(score, axis=0) < 0).all(), score  # fewer views, lower score, at every dose
    assert score[-1, -1] < 1.0, score


def test_ldctiqac_import(tmp_path):
    folder = tmp_path / "ldctiqac"
    (folder / "image").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        tifffile.imwrite(folder / "image" / f"000{k}.tif", rng.uniform(0.0, 1.0, (64, 64)).astype(np.float32))
    (folder / "train.json").write_text(json.dumps({"0000.tif": 1.8, "0001.tif": 2.6}), encoding="utf-8")
    groups = {"0000": "train", "0001": "val"}
    manifest = build_score_dataset([folder], tmp_path / "score", **TINY, **SMALL, split_groups=groups)
    assert [(e["id"], e["role"], e["split"]) for e in manifest["sources"]] == [
        ("0000", "ldctiqac", "train"),
        ("0001", "ldctiqac", "val"),
    ]
    val = load_score_split(tmp_path / "score", "val", labelled=True)
    assert val.score.tolist() == pytest.approx([2.6]) and val.kind.tolist() == [KINDS.index("ldctiqac")]
    assert val.hu.shape == (1, 128, 128) and -135 <= val.hu.min() and val.hu.max() <= 215


def test_grid_helpers():
    assert effective_dose(0.25, 720) == pytest.approx(0.25)
    assert effective_dose(1.0, 360) == pytest.approx(1.0 / 1.5)  # half the views: twice the image variance
    hu, pixel = to_score_grid(np.zeros((1, 100, 60), np.float32), 1.0, 50)
    assert hu.shape == (1, 50, 50) and pixel == 2.0 and hu[0, 25, 0] == -1024.0  # air pad, then half size
    assert surrogate_score([1.0, SCORE_SSIM_FLOOR, 0.0]).tolist() == [4.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"paths": ["missing.nrrd"]}, "no such file"),
        ({"doses": (0.0,)}, "dose fractions"),
        ({"views": (1000,)}, "view counts"),
        ({"ssim_floor": 1.0}, "SSIM floor"),
        ({"paths": [], "unlabelled_paths": []}, "no sources"),
    ],
)
def test_bad_input_is_one_line(phantom, tmp_path, kwargs, message):
    arguments = {"paths": phantom[:1], **TINY, **SMALL, **kwargs}
    with pytest.raises(InputError, match=message) as error:
        build_score_dataset(out=tmp_path / "score", **arguments)
    assert "\n" not in str(error.value)


def test_bad_labels_and_folders(tmp_path):
    folder = tmp_path / "ldctiqac"
    (folder / "image").mkdir(parents=True)
    (folder / "train.json").write_text('{"0000.tif": NaN}', encoding="utf-8")
    with pytest.raises(InputError, match="not a finite number"):
        build_score_dataset([folder], tmp_path / "score", **TINY, **SMALL)
    with pytest.raises(InputError, match="no manifest.json"):
        load_score_split(tmp_path, "train")
    with pytest.raises(InputError, match="unknown split"):
        load_score_split(tmp_path, "holdout")


def test_cli_function(tmp_path, capsys):
    folder = tmp_path / "ldctiqac"
    (folder / "image").mkdir(parents=True)
    tifffile.imwrite(folder / "image" / "0000.tif", np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    (folder / "train.json").write_text(json.dumps({"0000.tif": 3.0}), encoding="utf-8")
    args = argparse.Namespace(input=[str(folder)], out=str(tmp_path / "score"), unlabelled=None, doses=None,
                              views=None, slices_per_volume=None, unlabelled_per_volume=None, seed=None, device=None,
                              pixel_mm=None, ssim_range=None, split_groups=["0000=test"])  # fmt: skip
    cli_score_data(args)
    printed = capsys.readouterr().out
    assert "wrote" in printed and "test {'ldctiqac': 1}" in printed
    assert load_score_split(tmp_path / "score", "test").hu.shape == (1, 512, 512)
    with pytest.raises(InputError, match="GROUP=SPLIT"):
        cli_score_data(argparse.Namespace(**{**vars(args), "split_groups": ["0000"]}))
