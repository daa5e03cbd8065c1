"""`ctqa-train simulate`: readers, labels, shards, manifest, splits and resume on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from ctqa.sample import write_sample
from CTQualityTraining.cli import main
from CTQualityTraining.labels import DOSE_CLASSES, dose_class, kernel_class, surrogate_score

FAST = ["--doses", "1", "0.25", "--views", "90", "--slices-per-volume", "2"]


@pytest.fixture()
def ldctiqac(tmp_path, shared_data):
    """An LDCTIQAC2023-style folder: two Mayo quarter-dose slices rendered at W350/L40 to [0, 1] (0 = -135 HU,
    1 = 215 HU) as image/000N.tif + train.json."""
    folder = tmp_path / "ldctiqac"
    (folder / "image").mkdir(parents=True)
    for k, case in enumerate((18, 86)):
        hu = 4096.0 * np.load(shared_data / "mayo_pairs" / f"L506_{case}_input.npy") - 1024.0
        tifffile.imwrite(folder / "image" / f"000{k}.tif", np.clip((hu + 135.0) / 350.0, 0, 1).astype(np.float32))
    (folder / "train.json").write_text(json.dumps({"0000.tif": 1.8, "0001.tif": 2.6}), encoding="utf-8")
    return folder


def test_labels():
    assert [dose_class(d) for d in DOSE_CLASSES] == list(range(len(DOSE_CLASSES)))
    assert dose_class(0.3) == DOSE_CLASSES.index(0.25) and dose_class(0.06) == 0
    assert kernel_class("native") == 0
    reference = np.zeros((2, 8, 8), np.float32)
    assert surrogate_score(np.stack([np.ones((8, 8)), np.full((8, 8), 0.4)]), reference).tolist() == [4.0, 0.0]


def test_simulate_builds_and_resumes(tmp_path, shared_data, ldctiqac, capsys):
    volume = write_sample(tmp_path / "sample")["reference"]
    out = tmp_path / "dataset"
    args = ["simulate", "--input", str(volume), str(shared_data / "mayo_pairs"), str(ldctiqac), "--out", str(out)]
    assert main(args + FAST + ["--kernels", "native", "smooth"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_id = {s["id"]: s for s in manifest["sources"]}
    assert set(by_id) == {"sample_reference_ct.nrrd", "L506_18", "L506_86", "0000", "0001"}
    assert by_id["L506_18"]["split"] == by_id["L506_86"]["split"]  # one patient, one split
    assert manifest["parameters"]["doses"] == [1.0, 0.25]

    with np.load(out / by_id["sample_reference_ct.nrrd"]["shard"]) as shard:
        assert shard["hu"].shape == (2 * 2 * 2, 256, 256)  # 2 kernels x 2 doses x 2 slices
        full = shard["dose"] == 1.0
        assert np.all(shard["ssim"][full] > 0.999) and np.all(shard["ssim"][~full].mean(axis=(1, 2)) < 0.99)
        assert np.all(shard["score"][full] == 4.0) and np.all(shard["score"][~full] < 4.0)
        assert set(shard["kernel_class"].tolist()) == {kernel_class("native"), kernel_class("smooth")}
    with np.load(out / by_id["L506_86"]["shard"]) as shard:
        assert set(shard["method"].tolist()) == {0, 1}  # projection and image domain from the pair
    with np.load(out / by_id["0001"]["shard"]) as shard:
        assert shard["score"].tolist() == pytest.approx([2.6]) and "reference" not in shard.files
        assert (shard["hu"].min(), shard["hu"].max()) == (-135, 215)  # the clipped ends of the window

    kept, lost = out / by_id["L506_18"]["shard"], out / by_id["L506_86"]["shard"]
    before = kept.stat().st_mtime_ns
    lost.unlink()  # as if interrupted before this shard
    assert main(args + FAST + ["--kernels", "native", "smooth"]) == 0
    assert lost.is_file() and kept.stat().st_mtime_ns == before

    capsys.readouterr()
    assert main(args + FAST + ["--kernels", "native"]) == 2
    assert "other parameters" in capsys.readouterr().err


def test_simulate_refuses_bad_input(tmp_path, capsys):
    flat = tmp_path / "flat.npy"
    assert main(["simulate", "--input", str(tmp_path / "missing.nrrd"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(flat, np.zeros(4))
    assert main(["simulate", "--input", str(flat), "--out", str(tmp_path / "out")]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last_line.startswith("ctqa-train: error: ") and "flat.npy" in last_line


def _write_dicom_series(folder, hu: np.ndarray, series_uid: str) -> None:
    """A CT DICOM series of (z, y, x) HU slices (int16, intercept -1024) built on pydicom's CT_small.dcm."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    for index, image in enumerate(hu):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.Rows, dataset.Columns = image.shape
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = f"{series_uid}.{index + 1}"
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [0.0, 0.0, 3.0 * index]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
        dataset.PixelData = (image + 1024).astype(np.int16).tobytes()
        dataset.save_as(folder / f"IM{index:04d}.IMA", enforce_file_format=True)


def test_mayo_style_dicom_pair_folder_is_one_paired_source(tmp_path):
    """A patient folder with full_3mm/ and quarter_3mm/ DICOM series reads as a full/quarter-dose pair."""
    from CTQualityTraining.datasets import find_sources

    rng = np.random.default_rng(0)
    full = np.full((2, 64, 64), -1000.0)
    full[:, 8:56, 8:56] = 40.0
    quarter = np.round(full + rng.normal(0.0, 20.0, full.shape))
    patient = tmp_path / "L999"
    _write_dicom_series(patient / "full_3mm", full, "1.2.3.1")
    _write_dicom_series(patient / "quarter_3mm", quarter, "1.2.3.2")
    (source,) = find_sources([patient])
    assert (source.id, source.group, source.kind) == ("L999", "L999", "dicom-pair")
    data = source.load()
    np.testing.assert_array_equal(data["hu"], full)
    np.testing.assert_array_equal(data["quarter"], quarter)
    assert data["pixel_mm"] == pytest.approx(0.661468)
