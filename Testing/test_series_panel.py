"""The series panel as users get it (issue 10): `ctqa classify`, the `series` block of `ctqa assess`, DICOM tags
through --acquisition-from, and the acceptance checks of the bundled series model on real slices."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ctqa.cli import main
from ctqa.io import read_volume
from ctqa.models import registry
from ctqa.physics.noise import analyse_noise
from ctqa.tasks import series_panel
from ctqa.volume import CTVolume

CHEST = "chest_sbu/A046441_19001111-045.dcm"  # GE STANDARD kernel, 2.5 mm, abdomen/pelvis


def _panel(path, **options):
    volume = read_volume(path, **options)
    return series_panel.run(volume, analyse_noise(volume), registry.resolve("series_class", "default"))


def test_classify_prints_one_line_per_series_and_goes_on_after_a_bad_input(shared_data, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a CT")
    status = main(["classify", str(shared_data / CHEST), str(bad), str(shared_data / "totalseg" / "example_ct_dicom")])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert status == 2 and len(lines) == 2
    assert lines[0].startswith(str(shared_data / CHEST)) and "window " in lines[0] and "kernel STANDARD" in lines[0]
    assert "tags kernel Br38f" in lines[1] and "CTDIvol 18.5" in lines[1]
    assert err.count("\n") == 1 and err.startswith("ctqa: error: ") and "notes.txt" in err


def test_classify_json_and_physics_only(shared_data, capsys):
    assert main(["classify", str(shared_data / CHEST), "--json", "--series-model", "physics"]) == 0
    block = json.loads(capsys.readouterr().out)
    assert block["applies"] and block["classifier"] is None
    assert block["physics"]["method"] == "physics" and block["window"] == block["physics"]["window"]
    assert 0.5 <= block["window"]["probability"] <= 1.0 and block["acquisition"]["kernel"] == "STANDARD"


def test_panel_does_not_apply_to_a_small_phantom():
    rng = np.random.default_rng(0)
    hu = np.full((2, 256, 256), -1000.0, np.float32)
    yy, xx = np.mgrid[:256, :256]
    hu[:, (yy - 128) ** 2 + (xx - 128) ** 2 < 60**2] = 0.0  # a 120 mm water cylinder: not a body
    volume = CTVolume(hu + rng.normal(0, 10, hu.shape).astype(np.float32), (1.0, 1.0, 3.0))
    panel = series_panel.run(volume, analyse_noise(volume), registry.resolve("series_class", "default"))
    assert not panel.applies and "not a body CT" in panel.note
    assert panel.window is None and panel.dose is None and panel.fitted_score is None


def test_assess_reports_the_series_block_with_tags_from_the_dicom_it_came_from(shared_data, tmp_path):
    exported = tmp_path / "exported.nrrd"  # as Slicer's runner writes a DICOM-loaded node: no tags
    volume = read_volume(shared_data / CHEST)
    image = sitk.GetImageFromArray(volume.hu)
    image.SetSpacing(volume.spacing)
    sitk.WriteImage(image, str(exported))
    out = tmp_path / "out"
    argv = ["assess", str(exported), "--out", str(out), "--model", "physics", "--no-preview", "--quiet"]
    assert main([*argv, "--acquisition-from", str(shared_data / CHEST)]) == 0
    series = json.loads((out / "summary.json").read_text())["series"]
    assert series["acquisition"]["kernel"] == "STANDARD" and series["applies"]
    assert series["window"]["label"] in ("lung", "soft_tissue") and np.isfinite(series["brisque"])
    assert main([*argv, "--acquisition-from", str(exported)]) == 2  # not a DICOM file: one line, nothing changed


@pytest.fixture(scope="module")
def real_panels(shared_data):
    """Series panels of every real slice with a known kernel and exposure: the 20 soft-kernel chest_sbu slices and
    the Mayo L506 quarter/full-dose pairs (3 mm B30)."""
    chest = {Path(p).name: _panel(p) for p in sorted(glob.glob(str(shared_data / "chest_sbu" / "*.dcm")))}
    mayo = {
        f"{case}_{kind}": _panel(shared_data / "mayo_pairs" / f"{case}_{kind}.npy", scaling="mayo-npy", pixel_mm=0.74)
        for case in ("L506_18", "L506_86")
        for kind in ("input", "target")
    }
    return chest, mayo


def test_bundled_model_calls_real_soft_kernel_slices_soft_tissue(real_panels):
    """Acceptance: every real soft-kernel slice (GE STANDARD, Toshiba FC17, Mayo B30) reads soft_tissue."""
    chest, mayo = real_panels
    assert {panel.acquisition.kernel for panel in chest.values()} == {"STANDARD", "FC17"}
    calls = {name: panel.window for name, panel in {**chest, **mayo}.items()}
    called = {name: call for name, call in calls.items() if call is not None}
    assert len(called) >= len(calls) - 2, calls  # a slice without flat soft tissue gets no call, and says so
    assert all(call.label == "soft_tissue" for call in called.values()), called
    assert all("kernel index" in panel.note for panel in chest.values() if panel.window is None)


def test_bundled_model_calls_mayo_quarter_dose_low_and_full_dose_standard(real_panels):
    """Acceptance: the real quarter-dose Mayo slices read low, their full-dose pairs standard."""
    _, mayo = real_panels
    for case in ("L506_18", "L506_86"):
        quarter, full = mayo[f"{case}_input"], mayo[f"{case}_target"]
        assert quarter.dose.label == "low" and full.dose.label == "standard", (case, quarter.dose, full.dose)


def test_classify_names_each_series_of_a_folder_and_skips_localizers(shared_data, tmp_path, capsys):
    import pydicom
    from pydicom.uid import generate_uid

    exam = tmp_path / "exam"
    exam.mkdir()
    for name, image_type in (("axial.dcm", ["ORIGINAL", "PRIMARY", "AXIAL"]), ("scout.dcm", ["ORIGINAL", "LOCALIZER"])):
        header = pydicom.dcmread(shared_data / CHEST)
        header.SeriesInstanceUID, header.SOPInstanceUID = generate_uid(), generate_uid()
        header.ImageType = image_type
        header.save_as(exam / name)
    header = pydicom.dcmread(shared_data / "chest_sbu" / "A046441_19010101-23.dcm")  # a third, second axial series
    header.save_as(exam / "other.dcm")
    assert main(["classify", str(exam)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{exam} [series ") for line in lines)
