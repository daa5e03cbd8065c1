"""Honest inputs and outputs of `ctqa-train`: NaN/inf, blank images, scalings, overwritten inputs, atomic datasets
and output paths. Each refusal is exit code 2 with one line on stderr naming the file, and nothing written.

Inputs are tiny: 64 x 64 slices of a noisy water disc in air, simulated at two doses with the native kernel.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from ctqa.errors import InputError
from CTQualityTraining import datasets
from CTQualityTraining.cli import main
from CTQualityTraining.labels import ssim_labels

FAST = ["--doses", "1", "0.25", "--kernels", "native", "--views", "90", "--slices-per-volume", "1"]


def _error(capfd) -> str:
    """The one line stderr holds, which must be a ctqa-train error."""
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ctqa-train: error: "), err
    return err.strip()


def _disc(seed: int = 0, slices: int = 1) -> np.ndarray:
    """(slices, 64, 64) HU: a 40 HU disc with 10 HU noise in air."""
    yy, xx = np.mgrid[:64, :64]
    disc = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 40.0, -1000.0)
    return disc + np.random.default_rng(seed).normal(0.0, 10.0, (slices, 64, 64))


def _nrrd(path, hu: np.ndarray):
    image = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    image.SetSpacing((0.7, 0.7, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def _mayo(hu: np.ndarray) -> np.ndarray:
    """Mayo .npy values (HU + 1024) / 4096 of one slice, clipped to [0, 1] as the Mayo data are."""
    return np.clip((hu[0] + 1024.0) / 4096.0, 0.0, 1.0)


def _mayo_folder(folder, target: np.ndarray | None = None, quarter: np.ndarray | None = None):
    """A folder with one Mayo pair L1_1_target.npy / L1_1_input.npy (good discs unless given)."""
    folder.mkdir(parents=True)
    np.save(folder / "L1_1_target.npy", _mayo(_disc(0)) if target is None else target)
    np.save(folder / "L1_1_input.npy", _mayo(_disc(1)) if quarter is None else quarter)
    return folder


def _ldctiqac_folder(folder, image: np.ndarray):
    """An LDCTIQAC2023 layout with one image 0000.tif (values in [0, 1]) scored 2.5."""
    (folder / "image").mkdir(parents=True)
    tifffile.imwrite(folder / "image" / "0000.tif", image.astype(np.float32))
    (folder / "train.json").write_text(json.dumps({"0000.tif": 2.5}), encoding="utf-8")
    return folder


def _with(array: np.ndarray, value: float) -> np.ndarray:
    """A float64 copy of a 2D array with one pixel set to value."""
    bad = np.array(array, dtype=np.float64)
    bad[5, 7] = value
    return bad


GOOD = _mayo(_disc(0))


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda f: _mayo_folder(f, target=_with(GOOD, np.nan)), "L1_1_target.npy"),
        (lambda f: _mayo_folder(f, quarter=_with(GOOD, np.inf)), "L1_1_input.npy"),
        (lambda f: _ldctiqac_folder(f, _with(np.linspace(0, 1, 64 * 64).reshape(64, 64), np.nan)), "0000.tif"),
    ],
    ids=["mayo-target-nan", "mayo-input-inf", "ldctiqac-nan"],
)
def test_simulate_refuses_nan_and_inf(tmp_path, capfd, make, named):
    source, out = make(tmp_path / "in"), tmp_path / "out"
    assert main(["simulate", "--input", str(source), "--out", str(out), *FAST]) == 2
    line = _error(capfd)
    assert named in line and "NaN/inf" in line
    assert not out.exists()


def test_ldctiqac_images_are_w350_l40_renderings(tmp_path):
    """0 = -135 HU and 1 = 215 HU (the core's ldctiqac2023 scaling), not 4096 v - 1024."""
    source = _ldctiqac_folder(tmp_path / "in", np.linspace(0, 1, 64 * 64).reshape(64, 64))
    datasets.build_dataset([source], tmp_path / "out", progress=False)
    with np.load(tmp_path / "out" / "shards" / "0000.npz") as shard:
        assert (shard["hu"].min(), shard["hu"].max()) == (-135, 215)
        assert shard["score"].tolist() == [2.5]


def test_mayo_npy_scaling(tmp_path):
    folder = _mayo_folder(tmp_path / "in", target=np.full((4, 4), 0.25), quarter=np.array([[0.0, 0.5]]))
    target, quarter = folder / "L1_1_target.npy", folder / "L1_1_input.npy"
    with pytest.raises(InputError, match="L1_1_target.npy.*blank"):
        datasets.read_mayo_pair(target, quarter)
    np.save(target, np.array([[0.25, 0.75]]))
    full, low = datasets.read_mayo_pair(target, quarter)
    assert full.tolist() == [[[0.0, 2048.0]]] and low.tolist() == [[[-1024.0, 1024.0]]]


@pytest.mark.parametrize("role", ["input", "reference"])
def test_labels_refuses_to_overwrite_its_input(tmp_path, capfd, role):
    volume, reference = _nrrd(tmp_path / "ct.nrrd", _disc(0, 2)), _nrrd(tmp_path / "ref.nrrd", _disc(1, 2))
    before = {path: path.read_bytes() for path in (volume, reference)}
    out = volume if role == "input" else reference
    assert main(["labels", str(volume), "--reference", str(reference), "--out", str(out)]) == 2
    assert str(out) in _error(capfd)
    assert {path: path.read_bytes() for path in (volume, reference)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd", "ref.nrrd"]


def test_failed_simulate_leaves_no_manifest_and_the_rerun_resumes(tmp_path, capfd):
    good = _nrrd(tmp_path / "A.nrrd", _disc(0))
    bad = _mayo_folder(tmp_path / "mayo", target=_with(GOOD, np.nan))
    out = tmp_path / "out"
    assert main(["simulate", "--input", str(good), str(bad), "--out", str(out), *FAST]) == 2
    assert "L1_1_target.npy" in _error(capfd)
    shard = out / "shards" / "A.nrrd.npz"
    assert not (out / "manifest.json").exists() and shard.is_file()  # A.nrrd sorts first: finished before the error
    before = shard.stat().st_mtime_ns

    assert main(["simulate", "--input", str(good), "--out", str(out), *FAST]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["id"] for s in manifest["sources"]] == ["A.nrrd"]
    assert shard.stat().st_mtime_ns == before  # kept, not simulated again
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["A.nrrd.npz"]


def test_rerun_with_corrected_parameters_rebuilds_unfinished_shards(tmp_path, capfd):
    good = _nrrd(tmp_path / "a.nrrd", _disc(0))
    bad = _nrrd(tmp_path / "b.nrrd", np.concatenate([_disc(0), np.full((1, 64, 64), -1000.0)]))
    out = tmp_path / "out"
    assert main(["simulate", "--input", str(good), str(bad), "--out", str(out), *FAST, "--slices-per-volume", "2"]) == 2
    assert "b.nrrd: slice 1 is blank" in _error(capfd)
    assert not (out / "manifest.json").exists()
    _nrrd(bad, _disc(1, 2))
    assert main(["simulate", "--input", str(good), str(bad), "--out", str(out), *FAST]) == 0
    assert json.loads((out / "manifest.json").read_text())["parameters"]["slices_per_volume"] == 1
    with np.load(out / "shards" / "a.nrrd.npz") as shard:
        assert json.loads(str(shard["build"]))["parameters"]["slices_per_volume"] == 1


def test_interrupted_shard_write_leaves_nothing_a_rerun_would_take_as_done(tmp_path, monkeypatch):
    source, out = _nrrd(tmp_path / "a.nrrd", _disc(0)), tmp_path / "out"

    def interrupted(file, **arrays):
        with open(file, "wb") as handle:
            handle.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        datasets.build_dataset([source], out, doses=(1, 0.25), kernels=("native",), views=90, progress=False)
    assert list((out / "shards").iterdir()) == [] and not (out / "manifest.json").exists()
    monkeypatch.undo()
    manifest = datasets.build_dataset([source], out, doses=(1, 0.25), kernels=("native",), views=90, progress=False)
    with np.load(out / manifest["sources"][0]["shard"]) as shard:
        assert shard["hu"].shape == (2, 64, 64)


@pytest.mark.parametrize(
    ("make", "named", "reason"),
    [
        (lambda f: _nrrd(f.with_suffix(".nrrd"), np.full((2, 64, 64), -1000.0)), "in.nrrd", "blank"),
        (lambda f: _mayo_folder(f, target=np.full((64, 64), 0.25)), "L1_1_target.npy", "blank"),
        (lambda f: _mayo_folder(f, quarter=np.zeros((64, 64))), "L1_1_input.npy", "blank"),
        (lambda f: _ldctiqac_folder(f, np.full((64, 64), 0.5)), "0000.tif", "blank"),
        (
            lambda f: _nrrd(f.with_suffix(".nrrd"), np.concatenate([_disc(0), np.full((1, 64, 64), -1000.0)])),
            "in.nrrd",
            "slice 1 is blank",
        ),
    ],
    ids=["volume", "mayo-target", "mayo-input", "ldctiqac", "one-slice"],
)
def test_simulate_refuses_blank_images(tmp_path, capfd, make, named, reason):
    source, out = make(tmp_path / "in"), tmp_path / "out"
    assert main(["simulate", "--input", str(source), "--out", str(out), *FAST, "--slices-per-volume", "2"]) == 2
    line = _error(capfd)
    assert named in line and reason in line
    assert not out.exists()


def test_labels_refuses_a_blank_volume(tmp_path, capfd):
    blank, reference = _nrrd(tmp_path / "blank.nrrd", np.full((2, 64, 64), 40.0)), _nrrd(tmp_path / "r.nrrd", _disc())
    out = tmp_path / "label.nrrd"
    assert main(["labels", str(blank), "--reference", str(reference), "--out", str(out)]) == 2
    assert "blank.nrrd" in _error(capfd) and not out.exists()


def test_ssim_labels_are_never_nan():
    image = _disc(0)
    image[0, 3, 3] = np.nan
    with pytest.raises(InputError, match="ct.nrrd: SSIM label has .* NaN/inf"):
        ssim_labels(image, _disc(1), "ct.nrrd")


def _outputs(tmp_path):
    """(a regular file, a path below that file) to pass where a folder or a file's folder is expected."""
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me", encoding="utf-8")
    return blocker, blocker / "below"


@pytest.mark.parametrize(
    "argv",
    [
        lambda d, out: ["simulate", "--input", str(d / "ct.nrrd"), "--out", str(out)],
        lambda d, out: ["maps", "--data", str(d / "none"), "--out", str(out)],
        lambda d, out: ["export", str(d / "none"), "--name", "x", "--models-dir", str(out)],
        lambda d, out: ["labels", str(d / "ct.nrrd"), "--reference", str(d / "ct.nrrd"), "--out", f"{out}/l.nrrd"],
        lambda d, out: ["evaluate-maps", "--data", str(d / "none"), "--runs", str(d / "none"), "--out", f"{out}/r.md"],
    ],
    ids=["simulate", "maps", "export", "labels", "evaluate-maps"],
)
@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_output_paths_are_checked_before_any_work(tmp_path, capfd, argv, where):
    _nrrd(tmp_path / "ct.nrrd", _disc(0, 2))
    blocker, below = _outputs(tmp_path)
    assert main(argv(tmp_path, blocker if where == "file" else below)) == 2
    assert str(blocker) in _error(capfd)
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "ct.nrrd"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind this user")
def test_simulate_refuses_a_read_only_parent(tmp_path, capfd):
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    try:
        assert main(["simulate", "--input", str(_nrrd(tmp_path / "a.nrrd", _disc())), "--out", str(parent / "o")]) == 2
        assert "permission denied" in _error(capfd)
    finally:
        parent.chmod(0o700)
