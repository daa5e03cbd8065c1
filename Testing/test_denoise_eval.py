"""Denoising evaluation (``ctqa-train denoise-eval``) and the edge MTF of real patient images.

The evaluation runs on one real Mayo pair cropped to 256 x 256 around the body's left outline (so that the body/air
edge, soft tissue and bone are all there), with a tiny untrained denoiser, which is exactly the identity.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy import ndimage

from ctqa.models.denoise_network import DenoiseNetConfig, build_denoise_network, save_denoise_model
from CTQualityTraining.cli import main
from CTQualityTraining.mtf import disk_mtf50, disk_phantom, edge_mtf50

PIXEL_MM = 0.7
CROP = (slice(128, 384), slice(16, 272))  # rows, columns of the 512 x 512 L506_86 slice


def test_edge_mtf50_agrees_with_disk_and_falls_with_blur():
    phantom = disk_phantom(256, 60.0)
    found = []
    for sigma_px in (0.8, 1.6):
        blurred = ndimage.gaussian_filter(phantom.astype(np.float64), sigma_px)
        edge, disk = edge_mtf50(blurred, phantom, PIXEL_MM), disk_mtf50(blurred, 60.0, PIXEL_MM)
        assert edge == pytest.approx(disk, rel=0.05), sigma_px
        found.append(edge)
    assert found[1] < 0.7 * found[0]


def test_edge_mtf50_needs_an_air_outline():
    water = np.zeros((64, 64), dtype=np.float32)  # the body fills the field: no air outside it
    with pytest.raises(ValueError, match="outline"):
        edge_mtf50(water, water, PIXEL_MM)


@pytest.fixture(scope="module")
def cropped_pair(shared_data, tmp_path_factory):
    """A folder with one Mayo pair (L506_86) cropped to CROP, and a tiny identity denoiser beside it."""
    folder = tmp_path_factory.mktemp("denoise_eval")
    pairs = folder / "pairs"
    pairs.mkdir()
    for role in ("input", "target"):
        np.save(pairs / f"L506_86_{role}.npy", np.load(shared_data / "mayo_pairs" / f"L506_86_{role}.npy")[CROP])
    save_denoise_model(
        build_denoise_network(DenoiseNetConfig(width=8)),
        {"name": "tiny", "training": {"method": "supervised"}},
        folder / "tiny",
    )
    write_val_dataset(folder / "val_data", shared_data)
    return folder


def write_val_dataset(folder, shared_data) -> None:
    """A denoising dataset (ctqa-train denoise-data's format) whose val split holds the cropped full-dose L506_86
    slice with white noise at two "doses": SD 40 HU at 0.25 and 20 HU at 0.5 (the test needs pairs, not physics)."""
    from CTQualityTraining.denoise import DENOISE_FORMAT, KINDS

    clean = (np.load(shared_data / "mayo_pairs" / "L506_86_target.npy")[CROP] * 4096.0 - 1024.0).astype(np.int16)
    rng = np.random.default_rng(0)
    noisy = [clean + rng.normal(0.0, sd, clean.shape) for sd in (40.0, 20.0)]
    (folder / "shards").mkdir(parents=True)
    np.savez(
        folder / "shards" / "L506.npz",
        noisy=np.rint(noisy).astype(np.int16),
        clean=clean[None],
        clean_of=np.zeros(2, np.int32),
        dose=np.array([0.25, 0.5], np.float32),
        kind=np.full(2, KINDS.index("simulated"), np.int8),
        slice=np.zeros(2, np.int32),
        pixel_mm=np.float32(0.74),
    )
    source = {"id": "L506", "group": "L506", "split": "val", "shard": "shards/L506.npz"}
    manifest = {"format": DENOISE_FORMAT, "sources": [source]}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def no_bm3d(monkeypatch):
    """bm3d as if not installed."""
    monkeypatch.setitem(sys.modules, "bm3d", None)


@pytest.fixture(scope="module")
def report(cropped_pair, torch_single_thread):
    """The evaluation with the identity model and without BM3D (bm3d hidden): (markdown, json)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "bm3d", None)
        out = cropped_pair / "eval.md"
        argv = ["denoise-eval", "--pairs", str(cropped_pair / "pairs"), "--model", str(cropped_pair / "tiny.json")]
        argv += ["--label", "identity", "--threads", "1", "--no-bm3d", "--val-data", str(cropped_pair / "val_data")]
        argv += ["--self-ensemble"]
        assert main([*argv, "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8"), json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))


def test_identity_model_and_nlm(report):
    _, results = report
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == [
        "quarter dose (input)",
        "full dose (reference)",
        "non-local means (scikit-image)",
        "identity",
        "identity + self-ensemble",
    ]
    assert rows["identity + self-ensemble"]["mean"]["gain_db"] == pytest.approx(0.0, abs=0.01)
    identity, quarter, nlm = (
        rows["identity"]["mean"],
        rows["quarter dose (input)"]["mean"],
        rows["non-local means (scikit-image)"]["mean"],
    )
    assert identity["gain_db"] == pytest.approx(0.0, abs=0.01)
    assert identity["mtf50_lp_mm"] == pytest.approx(quarter["mtf50_lp_mm"], rel=0.01)
    assert identity["mtf50_ratio"] == pytest.approx(1.0, abs=0.1)
    assert nlm["gnl_reduction_pct"] > 20.0
    assert nlm["gain_db"] > 0.5
    assert len(rows["non-local means (scikit-image)"]["sweep"]) >= 5
    assert set(rows["identity"]["pairs"]) == {"L506_86"}
    assert rows["full dose (reference)"]["mean"]["psnr_db"] is None  # does not apply: JSON null
    assert rows["identity"]["map_mean"]["pearson_r"] > 0.3


def test_markdown_has_both_tables(report):
    text, _ = report
    assert text.startswith("# Low-dose CT denoising")
    assert "Made by: `ctqa-train denoise-eval --pairs" in text
    assert "| Method | Setting | PSNR (dB) | Gain (dB)" in text
    assert "## Does the quality map of a denoised image claim more than it has?" in text
    assert "oracle-tuned on the test pairs" in text
    assert "BM3D" not in text.split("## Does")[0].split("| Method")[1].split("Notes:")[0]
    assert "**identity** fails" in text


def test_missing_bm3d_is_one_line(cropped_pair, no_bm3d, tmp_path, capsys):
    argv = ["denoise-eval", "--pairs", str(cropped_pair / "pairs"), "--out", str(tmp_path / "x.md")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--no-bm3d" in error
    assert not (tmp_path / "x.md").exists()


@pytest.mark.parametrize("pairs", ["missing", "empty"])
def test_bad_pairs_folder_is_one_line(tmp_path, capsys, pairs):
    folder = tmp_path / pairs
    if pairs == "empty":
        folder.mkdir()
    assert main(["denoise-eval", "--pairs", str(folder), "--no-bm3d", "--out", str(tmp_path / "x.md")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ctqa-train: error:") and "\n" not in error and str(folder) in error


def test_in_domain_check_compares_the_methods_on_the_val_pairs(report):
    """The identity gains nothing and NLM (at its strength on the Mayo pair) gains on the 0.25 "dose" pair only."""
    text, results = report
    check = results["in_domain"]
    assert check["doses"] == [0.25] and check["pairs"] == 1
    gains = {row["name"]: row["gain_db"] for row in check["rows"]}
    assert list(gains) == ["non-local means (scikit-image)", "identity", "identity + self-ensemble"]
    assert gains["identity"] == pytest.approx(0.0, abs=0.01) and gains["non-local means (scikit-image)"] > 1.0
    assert "## In-domain check: simulated val pairs" in text and "| identity | supervised; width 8" in text


def test_in_domain_check_without_pairs_at_the_dose_is_one_line(cropped_pair, tmp_path, capsys):
    argv = ["denoise-eval", "--pairs", str(cropped_pair / "pairs"), "--no-bm3d", "--out", str(tmp_path / "x.md")]
    assert main([*argv, "--val-data", str(cropped_pair / "val_data"), "--val-dose", "0.1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no paired val images at dose 0.1" in error
    assert not (tmp_path / "x.md").exists()
