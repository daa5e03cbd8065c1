"""Training side of the learned quality maps: `ctqa-train maps`, resume, export, evaluate-maps, the bundled model.

The tiny dataset is built with the real simulation (build_dataset) on three 2-slice volumes cut from the demo
phantom at 128 x 128 pixels: one each for train, val and test (chosen with split_groups).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctqa.io import read_volume
from ctqa.models import checkpoints, registry
from ctqa.models.inference import predict_volume
from ctqa.models.networks import network_input
from ctqa.sample import make_sample
from CTQualityTraining.cli import main
from CTQualityTraining.datasets import MAYO_NPY_SCALING, build_dataset, find_sources, pad_to_square, single_slice_files
from CTQualityTraining.evaluate import load_split, map_metrics
from CTQualityTraining.projection import simulate
from CTQualityTraining.trainer import PatchSampler, Trainer, TrainSettings

TINY = {"steps": 24, "batch": 4, "patch": 64, "checkpoint_every": 12}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, torch_single_thread):
    """A simulated dataset (doses 1, 0.25, 0.05; native kernel; 90 views) of three phantom volumes."""
    folder = tmp_path_factory.mktemp("training")
    reference = make_sample().reference.hu
    paths = []
    for k, name in enumerate(("a", "b", "c")):
        image = sitk.GetImageFromArray(reference[8 * k : 8 * k + 2, ::2, ::2].astype(np.int16))
        image.SetSpacing((3.0, 3.0, 2.5))
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
        paths.append(folder / f"{name}.nrrd")
    build_dataset(
        paths,
        folder / "data",
        doses=(1, 0.25, 0.05),
        kernels=("native",),
        views=90,
        slices_per_volume=2,
        split_groups={"a.nrrd": "train", "b.nrrd": "val", "c.nrrd": "test"},
        progress=False,
    )
    return folder / "data"


def _maps_args(dataset, out, *extra: str) -> list[str]:
    """`ctqa-train maps` arguments of the tiny runs: 24 steps of 4 patches of 64^2."""
    return ["maps", "--data", str(dataset), "--out", str(out), "--steps", "24", "--batch", "4", "--patch", "64", *extra]


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """A finished tiny N2Q run through the command line."""
    out = tmp_path_factory.mktemp("run") / "n2q"
    assert main(_maps_args(dataset, out, "--checkpoint-every", "12", "--device", "cpu")) == 0
    return out


def test_split_groups_and_square_padding(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert {s["id"]: s["split"] for s in manifest["sources"]} == {"a.nrrd": "train", "b.nrrd": "val", "c.nrrd": "test"}
    assert main(["simulate", "--input", "x", "--out", "y", "--split", "no-equals-sign"]) == 2
    assert pad_to_square(np.zeros((1, 3, 5))).shape == (1, 5, 5)
    assert pad_to_square(np.zeros((1, 3, 5)))[0, 0, 0] == -1024


def test_single_slice_collections_are_grouped_by_patient(shared_data, tmp_path):
    """chest_sbu: 20 single-slice DICOM files, one source each, grouped by patient (name before "_") so that a
    patient's two examinations share a split."""
    sources = find_sources([shared_data / "chest_sbu"])
    assert len(sources) == 20 and len({s.group for s in sources}) == 10
    assert {s.group for s in sources if s.id.startswith("A098752_")} == {"A098752"}
    assert single_slice_files(shared_data / "totalseg" / "example_ct_dicom") == []  # one series, not a collection
    (tmp_path / "A_1.dcm").write_bytes(b"")
    assert single_slice_files(tmp_path) == []  # one patient only


def test_tiny_training_lowers_the_loss(dataset, tmp_path):
    trainer = Trainer(TrainSettings(str(dataset), **TINY), tmp_path / "run", device="cpu", progress=False)
    probe = trainer.sampler.batch(8)  # a fixed batch, scored before and after training
    x = network_input(probe["hu"], trainer.config.inputs, trainer.config.windows)
    assert probe["ssim"].shape == (8, 2, 64, 64)  # soft-tissue and lung window labels

    def probe_loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            out = trainer.model(x)
        trainer.model.train()
        return float(torch.mean((out.quality - probe["ssim"]) ** 2))

    before = probe_loss()
    card = trainer.run()
    assert probe_loss() < 0.5 * before
    assert card["training"]["step"] == TINY["steps"]
    assert set(card["metrics"]) >= {f"{w}/{m}" for w in ("soft_tissue", "lung") for m in ("ssim", "ssim_body", "nrmse")}
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_noise_gain_augmentation_scales_noise_label_and_dose(dataset):
    split = load_split(dataset, "train")
    for seed in range(20):  # the first seed whose first patch is below full dose (full dose has no noise to scale)
        plain, doubled = (PatchSampler(split, 64, np.random.default_rng(seed), g).batch(1) for g in ((1, 1), (2, 2)))
        dose = float(plain["log_dose"].exp()[0])
        if dose < 1.0:
            break
    assert dose < 1.0
    assert float(doubled["log_dose"].exp()[0]) == pytest.approx(1 / (1 + 4 * (1 / dose - 1)), rel=1e-5)
    for window in range(2):  # both windows' labels recomputed: more noise, lower SSIM
        assert float(doubled["ssim"][:, window].mean()) < float(plain["ssim"][:, window].mean())
    assert float((doubled["hu"] - plain["hu"]).std()) > 0  # the same patch with twice the inserted noise


def test_resume_continues_with_identical_state(dataset, tmp_path):
    settings = TrainSettings(str(dataset), **TINY)
    straight = Trainer(settings, tmp_path / "straight", device="cpu", progress=False)
    straight.run()
    interrupted = Trainer(settings, tmp_path / "resumed", device="cpu", progress=False)
    interrupted.run(stop_at=12)
    resumed = Trainer(settings, tmp_path / "resumed", device="cpu", progress=False)
    resumed.resume()
    assert resumed.step == 12
    saved = interrupted.optimizer.state_dict()["state"]
    for index, values in resumed.optimizer.state_dict()["state"].items():
        for key, value in values.items():
            assert torch.equal(value, saved[index][key])
    assert resumed.rng.bit_generator.state == interrupted.rng.bit_generator.state
    resumed.run()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    other = TrainSettings(str(dataset), **{**TINY, "lr": 1e-3})
    assert main(_maps_args(dataset, tmp_path / "resumed", "--lr", str(other.lr), "--resume")) == 2


def test_export_manifest_verifies_and_loads(run, tmp_path):
    models = tmp_path / "models"
    assert (
        main(
            ["export", str(run), "--name", "tiny", "--models-dir", str(models), "--default", "--reproduce", "make tiny"]
        )
        == 0
    )
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["defaults"] == {"quality_map": "tiny"} and manifest["models"]["tiny"]["task"] == "quality_map"
    entry = manifest["models"]["tiny"]
    assert hashlib.sha256((models / entry["weights"]).read_bytes()).hexdigest() == entry["sha256"]
    model, card = checkpoints.load(models / entry["card"])
    original, _ = checkpoints.load(run / "model")
    hu = np.full((1, 64, 64), 40.0, np.float32)
    exported, trained = (predict_volume(m, hu, device="cpu").maps for m in (model, original))
    assert list(exported) == ["soft_tissue", "lung"]
    assert all(np.array_equal(exported[w], trained[w]) for w in exported)
    assert card["training"]["variant"] == "N2Q" and card["reproduce"] == "make tiny"
    assert "make tiny" in (models / "tiny.md").read_text()


def test_evaluate_maps_writes_the_table(dataset, run, tmp_path, shared_data):
    out = tmp_path / "table.md"
    assert (
        main(
            [
                "evaluate-maps",
                "--data",
                str(dataset),
                "--runs",
                str(run),
                "--mayo",
                str(shared_data / "mayo_pairs"),
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "| n2q | N2Q | 24 |" in text and "L506_86" in text and "ctqa-train evaluate-maps" in text
    assert "### lung window" in text and "| n2q | L506_18 | lung |" in text
    report = tmp_path / "table.json"
    assert main(["evaluate-maps", "--data", str(dataset), "--runs", str(run), "--out", str(report)]) == 0
    results = json.loads(report.read_text())["variants"]["n2q"]
    metrics = {f"{w}/{m}" for w in ("soft_tissue", "lung") for m in ("ssim", "ssim_body", "ssim_lung", "mse", "nrmse")}
    assert set(results["test"]) == metrics | {"dose_accuracy"}
    assert results["test"]["soft_tissue/ssim_body"] < results["test"]["soft_tissue/ssim"]  # air's trivial 1 left out
    assert results["dose_response"]["soft_tissue"]["doses"] == [0.05, 0.25, 1.0]


def test_map_metrics_definitions():
    true = np.full((32, 32), 0.8)
    perfect = map_metrics(true, true)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["mse"] == 0.0 and perfect["nrmse"] == 0.0
    assert np.isnan(perfect["ssim_body"]) and np.isnan(perfect["ssim_lung"])  # no masks given
    metrics = map_metrics(true + 0.08, true)
    assert metrics["mse"] == pytest.approx(0.0064) and metrics["nrmse"] == pytest.approx(0.1)
    # Inside the body only: a map right in the air (outside) and wrong in the body scores lower there.
    body = np.zeros_like(true, bool)
    body[8:24, 8:24] = True
    predicted = np.where(body, true + np.random.default_rng(0).normal(0, 0.2, true.shape), true)
    lung = np.zeros_like(body)
    lung[8:16, 8:24] = True
    partial = map_metrics(predicted, true, body, lung)
    assert partial["ssim_body"] < partial["ssim"] and np.isnan(partial["ssim_lung"])  # 128 < 500 lung pixels


def test_bundled_model_map_falls_with_dose_on_held_out_real_slices(shared_data, torch_single_thread):
    """Mayo L506 full-dose slices (never trained on) with projection-domain noise at falling doses."""
    model, _ = checkpoints.load(registry.resolve("quality_map", "n2q_default").card_path)
    targets = [shared_data / "mayo_pairs" / f"L506_{case}_target.npy" for case in (18, 86)]
    full = np.concatenate([read_volume(path, scaling=MAYO_NPY_SCALING).hu for path in targets])
    doses = (1.0, 0.5, 0.25, 0.1, 0.05)
    noisy = simulate(full, 0.74, doses, views=360, seed=0)["native"].hu  # (dose, z, y, x)
    means = [predict_volume(model, images, device="cpu").maps["soft_tissue"].mean(axis=(1, 2)) for images in noisy]
    assert np.all(np.diff(np.array(means), axis=0) < 0), means
