"""The series panel (issue 10): series labels from a simulated dataset, the 3D multitask network, its training,
evaluation, physics classifier, eq. 4 fit and export; DICOM tag comparison. A tiny dataset of real anatomy
(TotalSegmentator volumes, 3 mm pixels) keeps it fast."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from ctqa.errors import InputError
from ctqa.models import series_network
from ctqa.models.series_network import SeriesNet, SeriesNetConfig, predict_series
from ctqa.results import ClassCall
from ctqa.tasks.series_panel import kernel_window, tag_disagreements
from ctqa.volume import Acquisition
from CTQualityTraining.datasets import build_dataset
from CTQualityTraining.series import (
    SeriesTrainSettings,
    StackSampler,
    evaluate,
    export,
    load_series,
    loss_terms,
    measure,
    refit_score,
    target_statistics,
    train,
)


@pytest.fixture(scope="module")
def tiny_dataset(shared_data, tmp_path_factory, torch_single_thread):
    """Two real volumes, 4 slices each, kernels native and lung at doses 1 and 0.2 (8 series)."""
    folder = tmp_path_factory.mktemp("series") / "dataset"
    totalseg = shared_data / "totalseg"
    build_dataset(
        [totalseg / "example_ct.nii.gz", totalseg / "example_ct_sm.nii.gz"],
        folder,
        doses=(1.0, 0.2),
        kernels=("native", "lung"),
        views=180,
        slices_per_volume=4,
        progress=False,
        split_groups={"example_ct.nii": "train", "example_ct_sm.nii": "test"},
    )
    return folder


def test_series_labels(tiny_dataset):
    series = load_series(tiny_dataset)
    assert len(series) == 8
    for item in series:
        _, kernel, dose = item.id.split(":")
        assert item.window == (1 if kernel == "lung" else 0)
        assert item.dose == (1 if float(dose) < 0.5 else 0)
        assert item.hu.shape == (4, 122, 122) and item.thickness_mm == pytest.approx(3.0)


def test_training_lowers_the_loss_and_the_checkpoint_reads_single_slices(tiny_dataset, tmp_path):
    series = [s for s in load_series(tiny_dataset) if s.split == "train"]
    measure(series, progress=False)
    assert all(np.isfinite(s.snr[1]).all() and np.isfinite(s.brisque[1]).all() for s in series)
    config = SeriesNetConfig()
    stats = target_statistics(series)
    torch.manual_seed(0)
    fixed = StackSampler(series, config, stats, np.random.default_rng(1)).batch(16)
    model = SeriesNet(config)
    model.eval()
    with torch.no_grad():
        before = float(loss_terms(model(fixed["x"], fixed["side"]), fixed, (1, 1, 0.3, 0.3))["total"])
    sampler = StackSampler(series, config, stats, np.random.default_rng(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)  # BatchNorm running statistics keep up
    for _ in range(40):
        model.train()
        batch = sampler.batch(8)
        loss = loss_terms(model(batch["x"], batch["side"]), batch, (1, 1, 0.3, 0.3))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_terms(model(fixed["x"], fixed["side"]), fixed, (1, 1, 0.3, 0.3))["total"])
    assert after < before

    card_path = series_network.save(model, {"targets": stats}, tmp_path / "model")
    loaded, card = series_network.load(card_path)
    one_slice = series[0].hu[:1]
    reading = predict_series(loaded, card, one_slice, series[0].pixel_mm, 3.0, 250.0)
    assert reading is not None and reading.crops > 0 and 0.0 <= reading.lung_probability <= 1.0
    assert math.isfinite(reading.snr) and math.isfinite(reading.brisque)


def test_train_evaluate_export_and_refit(tiny_dataset, tmp_path):
    settings = SeriesTrainSettings(steps=30, batch=8)
    card_path = train(tiny_dataset, tmp_path / "run" / "model", settings, progress=False)
    card = json.loads(card_path.read_text())
    assert {"physics_classifier", "score_fit", "targets"} <= set(card)
    assert len(card["score_fit"]["coefficients"]) == 5
    results = evaluate(tiny_dataset, card_path, "test", progress=False)
    assert results["groups"] == ["example_ct_sm.nii"]
    for classifier in ("learned", "physics"):
        for head in ("window", "dose"):
            assert (
                0.0 <= results[classifier][head]["accuracy"] <= 1.0 and results[classifier][head]["n"] == 8
            )  # 4 series x thickness 1 and 2

    models = tmp_path / "models"
    models.mkdir()
    bundled = export(card_path, "series_test", models, default=True, evaluation=results)
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["defaults"]["series_class"] == "series_test"
    assert manifest["models"]["series_test"]["sha256"] == json.loads(bundled.read_text())["weights_sha256"]
    assert "| learned | window |" in (models / "series_test.md").read_text()

    # Refit from user scores: summaries made by another model are refused with the offending line.
    folder = tmp_path / "assessed"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"series": {"classifier": "other"}}))
    scores = tmp_path / "scores.csv"
    with scores.open("w", newline="") as handle:
        csv.writer(handle).writerows([["series_id", "score"], ["assessed", "3"]])
    with pytest.raises(InputError, match=r"scores.csv:2: .* not assessed with series model 'model'"):
        refit_score(card_path, scores, tmp_path / "refit")


def test_kernel_names_and_tag_disagreements():
    assert kernel_window("B70f") == "lung" and kernel_window("Br64d") == "lung" and kernel_window("FC52") == "lung"
    assert kernel_window("B30f") == "soft_tissue" and kernel_window("STANDARD") == "soft_tissue"
    assert kernel_window("FC17") == "soft_tissue" and kernel_window("LUNG") == "lung"
    assert kernel_window("XYZ") is None and kernel_window(None) is None
    tags = Acquisition(kernel="B30f", ctdivol_mgy=2.5)
    found = tag_disagreements(tags, ClassCall("lung", 0.97), ClassCall("standard", 0.9))
    assert len(found) == 2 and "B30f" in found[0] and "CTDIvol 2.5 mGy" in found[1]
    assert tag_disagreements(tags, ClassCall("lung", 0.6), ClassCall("low", 0.9)) == ()  # unsure window; agreeing dose
    assert tag_disagreements(None, ClassCall("lung", 0.99), None) == ()
