"""Padding outside the reconstructed field of view is air whatever the vendor's value (issue 24, item 8): -1024,
-2048 and -3024 (GE) give the same figures, because the readers set values below -1500 HU to air."""

import json

import numpy as np
import SimpleITK as sitk

from ctqa.cli import main


def _padded_volume(path, padding: float) -> None:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:96, :96] - 47.5
    inside_fov = y**2 + x**2 < 46**2
    body = y**2 / 40**2 + x**2 / 34**2 < 1
    lung = (y + 5) ** 2 + (x - 12) ** 2 < 9**2
    hu = np.where(body, np.where(lung, -850.0, 40.0), -1000.0) + rng.normal(0, 12, (3, 96, 96))
    hu = np.where(inside_fov, hu, padding).round().astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(image, str(path))


def test_padding_conventions_give_the_same_figures(tmp_path):
    figures = []
    for padding in (-1024.0, -2048.0, -3024.0):
        source, out = tmp_path / f"pad{int(-padding)}.nrrd", tmp_path / f"out{int(-padding)}"
        _padded_volume(source, padding)
        assert main(["assess", str(source), "--out", str(out), "--score-model", "none", "--device", "cpu"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        figures.append((summary["global_quality_score"], summary["gnl_hu"]))
    assert figures[0] == figures[1] == figures[2]
