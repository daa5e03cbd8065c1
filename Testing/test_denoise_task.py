"""Denoising on the product side (ctqa/tasks/denoise.py, `ctqa denoise`, `ctqa assess --denoise`; docs/contract.md):
the denoised CT keeps the input's geometry and never touches the input (array, file, folder), model choices are
refused with one line, outputs appear whole or not at all. The denoiser is a tiny untrained DenoiseNet with
perturbed weights (an untrained one is exactly the identity): its output means nothing, the plumbing is tested.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import threading

import numpy as np
import pytest
import SimpleITK as sitk

from ctqa.cli import main
from ctqa.errors import InputError
from ctqa.io import write_map
from ctqa.models import registry
from ctqa.models.inference import Cancelled
from ctqa.pipeline import assess, resolve_denoise_model, write_outputs
from ctqa.results import SLICE_COLUMNS, to_json
from ctqa.sample import make_sample
from ctqa.tasks import denoise
from ctqa.volume import CTVolume

#: A rotation about z (not the identity: a lost direction would show) and an origin off zero.
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
ORIGIN = (12.5, -30.25, 47.0)


@pytest.fixture(scope="module")
def tiny_denoiser(tmp_path_factory):
    """A width-8 denoiser whose output differs from its input (small_models.save_tiny_denoiser)."""
    from small_models import save_tiny_denoiser

    return save_tiny_denoiser(tmp_path_factory.mktemp("denoiser") / "tiny", "neighbor2neighbor")


@pytest.fixture(scope="module")
def volume() -> CTVolume:
    """4 slices of the synthetic sample (whole HU) with a rotated direction and an offset origin."""
    sample = make_sample().low_dose
    return CTVolume(sample.hu[8:12].copy(), sample.spacing, ORIGIN, DIRECTION, source="sample")


@pytest.fixture
def input_file(tmp_path, volume):
    path = tmp_path / "ct.nrrd"
    write_map(volume.hu.astype(np.int16), volume, path)
    return path


@pytest.fixture
def no_installed_denoiser(monkeypatch):
    default_model = registry.default_model
    monkeypatch.setattr(registry, "default_model", lambda task: None if task == denoise.TASK else default_model(task))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_geometry(path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSpacing(), image.GetOrigin(), image.GetDirection()


#
# The task
#


def test_task_keeps_geometry_and_never_changes_the_input(volume, tiny_denoiser, torch_single_thread):
    before = volume.hu.copy()
    spec = resolve_denoise_model(str(tiny_denoiser))
    reports = []
    result = denoise.run(volume, spec, "cpu", progress=lambda fraction, message: reports.append(fraction))
    np.testing.assert_array_equal(volume.hu, before)  # the input array is untouched
    out = result.volume
    assert not np.shares_memory(out.hu, volume.hu) and out.hu.dtype == np.float32 and out.shape == volume.shape
    assert (out.spacing, out.origin, out.direction) == (volume.spacing, volume.origin, volume.direction)
    assert (out.source, out.scaling, out.clipped_hu) == (volume.source, volume.scaling, volume.clipped_hu)
    assert not np.array_equal(out.hu, volume.hu)  # a perturbed denoiser changes the image
    assert np.array_equal(out.hu, np.rint(out.hu))  # whole HU in, whole HU out
    assert (result.model, result.method, result.device, result.device_fallback) == (
        "tiny-denoiser",
        "neighbor2neighbor",
        "cpu",
        None,
    )
    assert reports and reports[-1] == pytest.approx(1.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        denoise.run(volume, spec, "cpu", cancel=cancel)


def test_fractional_and_windowed_inputs_keep_their_precision_and_window(volume, tiny_denoiser, torch_single_thread):
    spec = resolve_denoise_model(str(tiny_denoiser))
    windowed = CTVolume(np.clip(volume.hu + 0.25, -135.0, 215.0), volume.spacing, clipped_hu=(-135.0, 215.0))
    out = denoise.run(windowed, spec, "cpu").volume.hu
    assert not np.array_equal(out, np.rint(out))  # fractional HU are not rounded
    assert out.min() >= -135.0 and out.max() <= 215.0  # a display-windowed input stays in its window
    assert denoise.storage_array(out).dtype == np.float32


def test_storage_is_int16_only_when_the_values_round_trip():
    assert denoise.storage_array(np.array([[[-1024.0, 0.0, 3071.0]]], np.float32)).dtype == np.int16
    for values in ([0.5], [np.nan], [40000.0]):
        assert denoise.storage_array(np.array([[values]], np.float32)).dtype == np.float32


def test_model_choices_are_refused_with_one_line(tmp_path, monkeypatch, tiny_denoiser, no_installed_denoiser):
    with pytest.raises(InputError, match="^no denoise model is installed: train one with `ctqa-train denoise`"):
        resolve_denoise_model("default")
    with pytest.raises(InputError, match="unknown model"):
        resolve_denoise_model("red-cnn-large")
    with pytest.raises(InputError, match="no such model card"):
        resolve_denoise_model(str(tmp_path / "missing.json"))
    from small_models import save_tiny_score_model

    with pytest.raises(InputError, match="a global_score model, not a denoise model"):
        resolve_denoise_model(str(save_tiny_score_model(tmp_path / "score")))
    assert resolve_denoise_model(str(tiny_denoiser)).name == "tiny-denoiser"
    monkeypatch.setattr(denoise, "missing_packages", lambda: ["monai"])
    with pytest.raises(
        InputError, match=r"^denoise model tiny-denoiser: needs monai \(pip install 'ctqa\[learned\]'\)$"
    ):
        resolve_denoise_model(str(tiny_denoiser))
    assert resolve_denoise_model(str(tiny_denoiser), require_packages=False).name == "tiny-denoiser"  # for Slicer


#
# ctqa denoise
#


def test_cli_writes_the_denoised_ct_with_the_input_geometry(tmp_path, input_file, tiny_denoiser, capsys):
    digest = sha256(input_file)
    out = tmp_path / "result" / "denoised.nii.gz"
    assert main(["denoise", str(input_file), "--out", str(out), "--model", str(tiny_denoiser), "--quiet"]) == 0
    assert sha256(input_file) == digest
    for got, expected in zip(read_geometry(out), read_geometry(input_file)):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkInt16  # the input holds whole HU
    denoised = sitk.GetArrayFromImage(image)
    assert denoised.shape == (4, 256, 256) and not np.array_equal(
        denoised, sitk.GetArrayFromImage(sitk.ReadImage(str(input_file)))
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"denoised {input_file} -> {out} (model tiny-denoiser, neighbor2neighbor; GNL ")
    assert line.endswith(" HU)")
    assert sorted(p.name for p in out.parent.iterdir()) == ["denoised.nii.gz"]  # no temporary file left


def test_self_ensemble_turns_with_the_slice(tiny_denoiser, input_file, tmp_path, capsys, torch_single_thread):
    """The self-ensemble's output turns with its input (a single pass does not), and `ctqa denoise --self-ensemble`
    says it ran."""
    import torch

    from ctqa.models.denoise_network import denoise_slices, load_denoise_model

    net, _ = load_denoise_model(tiny_denoiser)
    hu = torch.from_numpy(make_sample().low_dose.hu[10:11, :96, :64].astype(np.float32))
    for ensemble, turns_along in ((False, False), (True, True)):
        turned_after = torch.rot90(denoise_slices(net, hu, ensemble), 1, dims=(-2, -1))
        turned_before = denoise_slices(net, torch.rot90(hu, 1, dims=(-2, -1)), ensemble)
        assert torch.allclose(turned_after, turned_before, atol=1e-3) == turns_along
    out = tmp_path / "denoised.nrrd"
    argv = ["denoise", str(input_file), "--out", str(out), "--model", str(tiny_denoiser), "--self-ensemble"]
    assert main([*argv, "--quiet"]) == 0
    assert "(model tiny-denoiser, neighbor2neighbor, self-ensemble; GNL " in capsys.readouterr().out


def test_cli_never_overwrites_the_input(tmp_path, input_file, tiny_denoiser, capsys):
    digest = sha256(input_file)
    model = ["--model", str(tiny_denoiser), "--quiet"]
    same = [str(input_file), f"{tmp_path}/./{input_file.name}", str(tmp_path / "sub" / ".." / input_file.name)]
    (tmp_path / "sub").mkdir()
    for spelling in same:
        for extra in ([], ["--overwrite"]):
            assert main(["denoise", str(input_file), "--out", spelling, *model, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is the input; denoising never overwrites its input" in err
    assert sha256(input_file) == digest


def test_cli_refuses_existing_files_without_overwrite_and_other_formats(tmp_path, input_file, tiny_denoiser, capsys):
    model = ["--model", str(tiny_denoiser), "--quiet"]
    existing = tmp_path / "earlier.nrrd"
    existing.write_bytes(b"an earlier result")
    assert main(["denoise", str(input_file), "--out", str(existing), *model]) == 2
    assert capsys.readouterr().err == f"ctqa: error: {existing}: exists; pass --overwrite to replace it\n"
    assert existing.read_bytes() == b"an earlier result"
    assert main(["denoise", str(input_file), "--out", str(existing), *model, "--overwrite"]) == 0
    assert sitk.ReadImage(str(existing)).GetSize() == (256, 256, 4)

    for name in ("denoised.dcm", "denoised.png", "denoised"):
        assert main(["denoise", str(input_file), "--out", str(tmp_path / name), *model]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unsupported output format; use one of .nrrd, .nii, .nii.gz, .mha" in err
        assert not (tmp_path / name).exists()


def test_cli_refuses_an_output_inside_the_input_folder(tmp_path, tiny_denoiser, capsys):
    folder = tmp_path / "dicom"
    (folder / "series").mkdir(parents=True)
    (folder / "series" / "IM0001").write_bytes(b"DICM")
    for out in (folder / "denoised.nrrd", folder / "series" / "denoised.nrrd"):
        assert main(["denoise", str(folder), "--out", str(out), "--model", str(tiny_denoiser), "--quiet"]) == 2
        assert f"{out}: lies inside the input folder {folder}" in capsys.readouterr().err
    assert sorted(p.name for p in folder.rglob("*")) == ["IM0001", "series"]


def test_cli_without_an_installed_denoiser_says_so(tmp_path, input_file, capsys, no_installed_denoiser):
    out = tmp_path / "denoised.nrrd"
    assert main(["denoise", str(input_file), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctqa: error: no denoise model is installed")
    assert main(["assess", str(input_file), "--out", str(tmp_path / "o"), "--denoise", "--model", "physics"]) == 2
    assert capsys.readouterr().err.startswith("ctqa: error: no denoise model is installed")
    assert not out.exists() and not (tmp_path / "o").exists()


def test_ctrl_c_while_writing_leaves_no_file(tmp_path, input_file, tiny_denoiser, monkeypatch, capsys):
    import ctqa.io

    def interrupted(array, like, path, compress=True):
        with open(path, "wb") as handle:
            handle.write(b"NRRD0004\nhalf")
        raise KeyboardInterrupt

    monkeypatch.setattr(ctqa.io, "write_map", interrupted)
    out = tmp_path / "out" / "denoised.nrrd"
    assert main(["denoise", str(input_file), "--out", str(out), "--model", str(tiny_denoiser), "--quiet"]) == 130
    assert capsys.readouterr().err == "ctqa: interrupted\n"
    assert list(out.parent.iterdir()) == []


#
# ctqa assess --denoise
#


def test_assess_denoise_writes_the_denoised_outputs(tmp_path, input_file, tiny_denoiser, capsys):
    out = tmp_path / "out"
    argv = ["assess", str(input_file), "--out", str(out), "--quiet", "--model", "physics", "--no-preview"]
    argv += ["--series-model", "physics", "--score-model", "none", "--denoise-model", str(tiny_denoiser)]
    digest = sha256(input_file)
    assert main(argv) == 0
    assert sha256(input_file) == digest
    summary = json.loads((out / "summary.json").read_text())
    assert {"denoised_ct.nrrd", "quality_map_denoised.nrrd"} <= set(summary["outputs"])
    block = summary["denoised"]
    assert block["model"] == "tiny-denoiser" and block["method"] == "neighbor2neighbor" and block["score"] is None
    assert math.isfinite(block["gnl_hu"]) and 0.0 < block["global_quality_score"] <= 1.0
    assert block["gnl_reduction_percent"] == pytest.approx(100.0 * (1.0 - block["gnl_hu"] / summary["gnl_hu"]))
    assert block["quality_caveat"] == denoise.QUALITY_CAVEAT and "denoised" in summary["definitions"]
    for name in ("denoised_ct.nrrd", "quality_map_denoised.nrrd"):
        for got, expected in zip(read_geometry(out / name), read_geometry(input_file)):
            np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sitk.ReadImage(str(out / "denoised_ct.nrrd")).GetPixelID() == sitk.sitkInt16
    with (out / "slices.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SLICE_COLUMNS
    assert SLICE_COLUMNS[-4:] == (
        "quality_mean_denoised",
        "quality_p10_denoised",
        "noise_sd_hu_denoised",
        "score_denoised",
    )
    assert all(float(row["quality_mean_denoised"]) > 0.0 and float(row["noise_sd_hu_denoised"]) > 0.0 for row in rows)
    assert all(row["score_denoised"] == "" for row in rows)  # no score model ran
    printed = capsys.readouterr().out
    assert "denoised (tiny-denoiser, neighbor2neighbor): apparent quality " in printed and " HU (" in printed


def test_without_denoise_the_block_is_null_and_the_columns_empty(volume):
    assessment = assess(volume, model="physics", series_model="physics", score_model="none")
    assert assessment.denoised is None and to_json(assessment.summary)["denoised"] is None
    assert math.isnan(assessment.slices[0].quality_mean_denoised) and math.isnan(assessment.slices[0].score_denoised)


def test_denoised_pass_scores_and_compares_with_the_reference(volume, tiny_denoiser, tmp_path, torch_single_thread):
    """The same passes on the denoised CT: 0-4 score per slice, reference SSIM, progress in order, cancel."""
    from small_models import save_tiny_score_model

    from ctqa.outputs import read_outputs

    score = save_tiny_score_model(tmp_path / "score")
    reference = CTVolume(make_sample().reference.hu[8:12], volume.spacing, ORIGIN, DIRECTION)
    stages = []
    options = dict(model="physics", series_model="physics", score_model=str(score), device="cpu")
    assessment = assess(
        volume,
        reference,
        denoise_model=str(tiny_denoiser),
        progress=lambda fraction, stage: stages.append((fraction, stage)),
        **options,
    )
    fractions = [fraction for fraction, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(stage.startswith("denoising") for _, stage in stages)
    assert any(stage == "denoised CT: quality score" for _, stage in stages)
    block = assessment.summary.denoised
    assert block.score is not None and block.score.slices_scored == 4
    assert 0.0 < block.reference_ssim_mean_body <= 1.0
    after = assessment.denoised.passes
    assert [row.score_denoised for row in assessment.slices] == pytest.approx(list(after.scores.score))
    assert [row.quality_mean_denoised for row in assessment.slices] == [row.stats.quality_mean for row in after.slices]
    write_outputs(assessment, tmp_path / "out", preview=False)
    saved = read_outputs(tmp_path / "out")
    assert saved.maps["denoised_ct"].dtype == np.int16 and saved.maps["quality_map_denoised"].shape == volume.shape
    np.testing.assert_array_equal(saved.maps["denoised_ct"], assessment.denoised.volume.hu)

    cancel = threading.Event()
    cancel.set()  # the physics passes do not stop; the denoiser is the first to look
    with pytest.raises(Cancelled):
        assess(volume, denoise_model=str(tiny_denoiser), cancel=cancel, **{**options, "score_model": "none"})


def test_ctrl_c_while_denoising_leaves_the_output_folder_as_it_was(tmp_path, input_file, tiny_denoiser, monkeypatch):
    import ctqa.cli

    def interrupt(self, fraction, message):
        if message.startswith("denoising"):
            raise KeyboardInterrupt

    monkeypatch.setattr(ctqa.cli._ProgressBar, "__call__", interrupt)
    out = tmp_path / "out"
    argv = ["assess", str(input_file), "--out", str(out), "--model", "physics", "--series-model", "physics"]
    assert main([*argv, "--score-model", "none", "--denoise-model", str(tiny_denoiser)]) == 130
    assert not out.exists() or list(out.iterdir()) == []


def test_preview_shows_the_denoised_slices_in_a_second_row(volume, tiny_denoiser, tmp_path, torch_single_thread):
    """preview.png gains a row of the same slices denoised, and its title the GNL after denoising."""
    from PIL import Image

    from ctqa.reports.preview import _title, save_preview

    options = dict(model="physics", series_model="physics", score_model="none", device="cpu")
    before = assess(volume, **options)
    after = assess(volume, denoise_model=str(tiny_denoiser), **options)
    save_preview(before, tmp_path / "before.png")
    save_preview(after, tmp_path / "after.png")
    with Image.open(tmp_path / "before.png") as one_row, Image.open(tmp_path / "after.png") as two_rows:
        assert two_rows.width == one_row.width and two_rows.height > 1.4 * one_row.height
    assert "denoised" not in _title(before)
    assert f"({after.summary.denoised.gnl_hu:.1f} denoised by {after.summary.denoised.model})" in _title(after)
