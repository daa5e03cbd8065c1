"""The series panel on real kernels and doses (issue 22): the two failure modes of the physics classifier, and the
real-data check behind the refitted window model (``ctqa-train series-real``)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from ctqa.io import read_volume
from ctqa.models import registry
from ctqa.physics.noise import analyse_noise
from ctqa.physics.series import series_physics
from ctqa.tasks import series_panel
from ctqa.volume import CTVolume
from CTQualityTraining.series_real import (
    RealCase,
    fit_window,
    held_out_window,
    measure_cases,
    score_calls,
)

MAYO_NPY_PIXEL_MM = 0.74  # L506 (data README)


def _panel(volume: CTVolume):
    return series_panel.run(volume, analyse_noise(volume), registry.resolve("series_class", "default"))


def _mayo_b30f_pair(shared_data) -> tuple[CTVolume, CTVolume]:
    with open(shared_data / "mayo_ldct" / "pairs.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["kernel"] == "B30f" and row["patient"] == "L143"]
    first = {row["dose"]: row["file"] for row in rows if row["z_mm"] == rows[0]["z_mm"]}
    return tuple(read_volume(shared_data / "mayo_ldct" / first[dose]) for dose in ("full", "quarter"))


def test_a_soft_kernel_at_1_mm_reads_soft_tissue_however_noisy(shared_data):
    """Failure mode 1: a soft kernel at 1 mm with a thin slice's (and a low dose's) noise read as lung. The noise
    added is real B30f noise (the quarter-dose slice minus its full-dose pair), so its texture stays the kernel's."""
    full, quarter = _mayo_b30f_pair(shared_data)
    thin = dataclasses.replace(full.acquisition, slice_thickness_mm=1.0)
    noise_levels = []
    for extra in (0.0, 2.0, 4.0):
        hu = full.hu + extra * (quarter.hu - full.hu)
        panel = _panel(dataclasses.replace(full, hu=hu.astype(np.float32), acquisition=thin))
        noise_levels.append(panel.noise_normalised_hu)
        assert panel.slice_thickness_mm == 1.0
        assert panel.window.label == "soft_tissue", (extra, panel.window, panel.kernel_index)
    assert noise_levels[-1] > 3 * noise_levels[0]  # from a routine 3 mm slice's noise to far beyond a lung kernel's


def test_sharp_kernels_read_lung(shared_data):
    """The other side of the window call: real B60f, LUNG and BONE kernel slices read lung."""
    sharp = {"B60f", "LUNG", "BONE"}
    calls = {}
    for path in sorted((shared_data / "tcga_kernels").glob("*.dcm")):
        volume = read_volume(path)
        if volume.acquisition.kernel in sharp and len(calls) < 4:
            calls[path.name] = _panel(volume).window.label
    assert len(calls) == 4 and set(calls.values()) == {"lung"}, calls


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_routine_dose_without_a_pixel_size_reads_standard(shared_data, tmp_path, scale):
    """Failure mode 2: a routine-dose slice whose file stores no pixel size read as low dose. The real L506 full-dose
    slice is resampled (scale 0.5: a small body in a 256-pixel image), written as .npy and read as ``ctqa assess``
    reads it: the pixel size is estimated from the body and the dose call stays standard at every scale (a scale
    that cuts the body gets no estimate: the next test but one)."""
    stored = np.load(shared_data / "mayo_pairs" / "L506_18_target.npy")
    resampled = ndimage.zoom(stored, scale, order=1)
    path = tmp_path / "routine.npy"
    np.save(path, resampled)
    volume = read_volume(path, scaling="mayo-npy")
    assert volume.pixel_size_assumed
    panel = _panel(volume)
    assert panel.dose.label == "standard", panel.dose
    assert "estimated from the body" in panel.note
    measured = series_physics(volume, analyse_noise(volume))
    assert measured.pixel_mm == pytest.approx(MAYO_NPY_PIXEL_MM / scale, rel=0.2)  # within adult sizes' spread
    if scale == 0.5:  # what trusting the placeholder did: 1 mm pixels make the body small and its noise "high"
        trusted = _panel(dataclasses.replace(volume, pixel_size_assumed=False))
        assert trusted.dose.label == "low"


def test_window_refit_on_real_cases_scores_held_out_patients(shared_data):
    """series_real: the window model fitted on tagged real slices calls held-out patients right, and its boundary
    lies between the soft and the sharp kernels' indices."""
    wanted = {"B60f": 2, "BONE": 2, "LUNG": 1, "B20f": 3, "STANDARD": 3}
    cases = []
    for path in sorted((shared_data / "tcga_kernels").glob("*.dcm")):
        kernel = read_volume(path).acquisition.kernel
        if wanted.get(kernel, 0) > 0:
            wanted[kernel] -= 1
            cases.append(RealCase("tcga_kernels", path.name, path, None, None, {}))
    measured = measure_cases(cases)
    assert {item.case.window for item in measured} == {"lung", "soft_tissue"}
    model = fit_window(measured)
    threshold = model["mean"][0] - model["coefficients"][0] * model["sd"][0] / model["coefficients"][1]
    lung = [m.measured.kernel_index_per_mm for m in measured if m.case.window == "lung"]
    soft = [m.measured.kernel_index_per_mm for m in measured if m.case.window == "soft_tissue"]
    assert max(soft) < threshold < min(lung)
    scores = score_calls(measured, held_out_window(measured), "window", ("soft_tissue", "lung"))
    assert scores["all"] == {"right": len(cases), "called": len(cases), "labelled": len(cases)}


def test_a_stack_without_geometry_has_no_slice_thickness(shared_data, tmp_path):
    """A multi-slice .npy's 1 mm spacing is a placeholder: it is no thickness (2D and 3D files read alike)."""
    stored = np.load(shared_data / "mayo_pairs" / "L506_18_input.npy")
    np.save(tmp_path / "stack.npy", np.stack([stored] * 3))
    volume = read_volume(tmp_path / "stack.npy", scaling="mayo-npy")
    assert series_physics(volume, analyse_noise(volume)).slice_thickness_mm is None


def test_a_body_cut_by_the_field_of_view_gets_no_pixel_size_estimate(shared_data, tmp_path):
    """Without a pixel size the body's size stands in for it; a crop that cuts the body (a LUNG-kernel slice's
    central 320 x 320) must not be estimated (it would read 1.0 mm for 0.64 mm and call the lung kernel soft)."""
    path = next(
        p for p in sorted((shared_data / "tcga_kernels").glob("*.dcm")) if read_volume(p).acquisition.kernel == "LUNG"
    )
    hu = read_volume(path).hu[0]
    np.save(tmp_path / "cut.npy", hu[96:416, 96:416])
    volume = read_volume(tmp_path / "cut.npy")
    panel = _panel(volume)
    assert not panel.applies and "field of view cuts the body" in panel.note
    assert panel.window is None and panel.dose is None
