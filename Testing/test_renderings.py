"""8-bit renderings of a named display window (issue 24, item 7): `--scaling window:LOW,HIGH` reads grey g as
LOW + g / 255 (HIGH - LOW) HU with a note on the quantisation, grey stored as RGB(A) reads as grey, and without a
named window an 8-bit image stays refused (test_bad_input.py)."""

import json

import numpy as np
import SimpleITK as sitk

from ctqa.cli import main
from ctqa.io import read_volume


def _rendering(shape=(96, 96), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    inside = (y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2 < (shape[0] / 3) ** 2
    hu = np.where(inside, 40.0, -1000.0) + rng.normal(0, 15, shape)
    return np.clip(np.rint((hu + 160.0) / 400.0 * 255.0), 0, 255).astype(np.uint8)


def test_an_8_bit_window_rendering_reads_as_hu_with_a_note(tmp_path):
    grey = _rendering()
    path = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))
    volume = read_volume(path, scaling="window:-160,240", pixel_mm=0.7)
    assert np.allclose(volume.hu[0], grey / 255.0 * 400.0 - 160.0, atol=1e-3)
    assert volume.clipped_hu == (-160.0, 240.0)
    assert any("grey steps of 1.57 HU" in note for note in volume.notes)


def test_a_picture_takes_its_pixel_size_from_pixel_mm_or_says_it_is_assumed(tmp_path):
    """A PNG's stored spacing (a print resolution, 1 by default) is no pixel size: --pixel-mm sets it; without it the
    size is a flagged placeholder, as for TIFF/.npy (review of issue 22, finding 5)."""
    path = tmp_path / "slice.png"
    image = sitk.GetImageFromArray(_rendering())
    image.SetSpacing((0.3, 0.3))
    sitk.WriteImage(image, str(path))
    given = read_volume(path, scaling="window:-160,240", pixel_mm=0.7)
    assert given.spacing == (0.7, 0.7, 0.7) and not given.pixel_size_assumed
    assumed = read_volume(path, scaling="window:-160,240")
    assert assumed.spacing == (1.0, 1.0, 1.0) and assumed.pixel_size_assumed
    assert any("no pixel spacing stored in slice.png" in note for note in assumed.notes)


def test_grey_stored_as_rgba_reads_like_grey(tmp_path):
    grey = _rendering()
    grey_path, rgba_path = tmp_path / "grey.png", tmp_path / "rgba.png"
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(grey_path))
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(rgba_path))
    summaries = []
    for path in (grey_path, rgba_path):
        out = tmp_path / f"out_{path.stem}"
        arguments = ["assess", str(path), "--out", str(out), "--scaling", "window:-160,240", "--pixel-mm", "0.7"]
        assert main([*arguments, "--quiet", "--device", "cpu", "--score-model", "none"]) == 0
        summaries.append(json.loads((out / "summary.json").read_text()))
    assert summaries[0]["gnl_hu"] == summaries[1]["gnl_hu"]
    assert summaries[0]["global_quality_score"] == summaries[1]["global_quality_score"]
