"""`ctqa` and `ctqa-train` end to end on the bundled sample: the output contract of DESIGN.md."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from ctqa.cli import main
from ctqa.sample import make_sample
from CTQualityTraining.cli import main as train_main


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    assert main(["sample", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def outputs(sample_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results"
    argv = [
        "assess", str(sample_files / "sample_ct.nrrd"), "--out", str(out), "--quiet",
        "--reference", str(sample_files / "sample_reference_ct.nrrd"),
        "--roi", str(sample_files / "sample_labels.nrrd"), "--roi-names", str(sample_files / "sample_labels.txt"),
        "--model", "physics",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_writes_every_contract_file(outputs):
    expected = {"quality_map.nrrd", "noise_map.nrrd", "reference_ssim_map.nrrd", "slices.csv", "rois.csv",
                "summary.json", "preview.png"}  # fmt: skip
    assert {p.name for p in outputs.iterdir()} == expected
    assert (outputs / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maps_keep_the_input_geometry(outputs, sample_files):
    ct = sitk.ReadImage(str(sample_files / "sample_ct.nrrd"))
    for name in ("quality_map.nrrd", "noise_map.nrrd", "reference_ssim_map.nrrd"):
        image = sitk.ReadImage(str(outputs / name))
        assert image.GetPixelID() == sitk.sitkFloat32
        assert image.GetSize() == ct.GetSize()
        assert image.GetSpacing() == ct.GetSpacing() and image.GetOrigin() == ct.GetOrigin()
        assert image.GetDirection() == ct.GetDirection()
    quality = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "quality_map.nrrd")))
    assert np.nanmin(quality) >= 0.0 and np.nanmax(quality) <= 1.0


def test_tables_and_summary(outputs):
    sample = make_sample()
    with (outputs / "slices.csv").open() as handle:
        slices = list(csv.DictReader(handle))
    assert len(slices) == sample.low_dose.shape[0]
    quality = np.array([float(row["quality_mean"]) for row in slices])
    # The sample's dose falls from 100 % to 10 % along z: per-slice quality must follow it.
    assert np.corrcoef(quality, sample.dose_fraction)[0, 1] > 0.95
    with (outputs / "rois.csv").open() as handle:
        rois = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rois) == set(sample.label_names.values())
    assert int(rois["liver"]["voxels"]) == int((sample.labels == 1).sum())
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["settings"]["model"] == "physics"
    assert 0.0 < summary["global_quality_score"] < 1.0
    assert summary["gnl_hu"] > 10.0  # the sample's noise is at least its full-dose 10 HU
    assert 0.0 < summary["reference_ssim_mean_body"] < 1.0


def test_default_model_follows_the_sample_dose(sample_files, tmp_path):
    """The default model (the bundled learned one when installed): per-slice quality ranks with the dose."""
    from scipy.stats import spearmanr

    out = tmp_path / "default"
    assert main(["assess", str(sample_files / "sample_ct.nrrd"), "--out", str(out), "--quiet"]) == 0
    with (out / "slices.csv").open() as handle:
        quality = [float(row["quality_mean"]) for row in csv.DictReader(handle)]
    assert spearmanr(quality, make_sample().dose_fraction).statistic > 0.9


def test_training_labels_command(sample_files, tmp_path, capsys):
    out = tmp_path / "label.nrrd"
    argv = [
        "labels",
        str(sample_files / "sample_ct.nrrd"),
        "--reference",
        str(sample_files / "sample_reference_ct.nrrd"),
    ]
    assert train_main([*argv, "--out", str(out)]) == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_allclose(label[0], 1.0, atol=1e-6)  # the first slice is at full dose
    assert label[-1].mean() < label[1].mean() - 0.1  # the last slice is at 10 % dose
    assert "mean SSIM" in capsys.readouterr().out


def test_help_explains_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["assess", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("quality_map.nrrd", "noise_map.nrrd", "slices.csv", "rois.csv", "summary.json", "preview.png"):
        assert name in text


def test_learned_model_checkpoint_end_to_end(sample_files, tmp_path, capsys):
    """`--model CHECKPOINT`: the learned map replaces the physics one; the summary carries the learned noise level,
    never a dose fraction."""
    import torch
    from small_models import SMALL

    from ctqa.models import checkpoints
    from ctqa.models.networks import build_network

    torch.manual_seed(0)
    card = checkpoints.save(build_network(SMALL).eval(), SMALL, {"name": "tiny-untrained"}, tmp_path / "tiny")
    out = tmp_path / "learned"
    argv = ["assess", str(sample_files / "sample_ct.nrrd"), "--out", str(out), "--quiet", "--model", str(card)]
    assert main([*argv, "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["model"] == "tiny-untrained" and summary["settings"]["device"] == "cpu"
    assert summary["learned_noise_level"]["relative_noise"] > 0 and "not a dose" in json.dumps(summary)
    assert "dose_estimate" not in summary and "dose_fraction" not in json.dumps(summary)
    printed = capsys.readouterr().out
    assert "learned noise level" in printed and "% of full dose" not in printed
    quality = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "quality_map.nrrd")))
    noise = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "noise_map.nrrd")))
    np.testing.assert_array_equal(np.isnan(quality), np.isnan(noise))  # the same body mask
    assert np.nanmin(quality) >= 0.0 and np.nanmax(quality) <= 1.0


def test_json_progress_for_programs(sample_files, tmp_path, capsys):
    out = tmp_path / "json"
    argv = [
        "assess",
        str(sample_files / "sample_ct.nrrd"),
        "--model",
        "physics",
        "--progress",
        "json",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [event["fraction"] for event in events if event["event"] == "progress"]
    assert len(progress) > 3 and progress == sorted(progress) and progress[-1] == 1.0
    assert events[-1] == {"event": "done", "out": str(out), "outputs": sorted(p.name for p in out.iterdir())}


def test_cuda_fallback_is_reported_once(sample_files, tmp_path, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: no fallback to report")
    argv = ["assess", str(sample_files / "sample_ct.nrrd"), "--model", "n2q_default", "--device", "cuda", "--quiet"]
    argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 0
    err = capfd.readouterr().err
    reported = [line for line in err.splitlines() if "CUDA is not available" in line]
    assert len(reported) == 1 and reported[0].startswith("ctqa: warning: ")  # beside the notes, if any
