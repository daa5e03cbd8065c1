"""Score training (CTQualityTraining.score): a tiny run lowers the loss, resume is bit-identical, the semi-supervised
step trains with pseudo-labels and an EMA teacher, TFKT's phase one, calibration to ratings, export.

Runs use the smallest backbone ("cnn") on a tiny dataset (the demo phantom, 128 x 128 slices, 2 doses x 2 view
counts); the network itself always sees 512 x 512 slices (score_network.score_input resizes).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ctqa.errors import InputError
from ctqa.models.score_network import load_score_model, loss_terms, predict_scores
from ctqa.sample import write_sample
from CTQualityTraining.score import (
    ScoreTrainer,
    ScoreTrainSettings,
    calibrate_score,
    consistency_weight,
    export,
    read_ratings,
)
from CTQualityTraining.score_data import build_score_dataset, load_score_split

SPLITS = {"sample_ct.nrrd": "train", "sample_reference_ct.nrrd": "val"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, torch_single_thread):
    """A tiny score dataset: train = the phantom's low-dose CT, val = its reference (8 scored slices each)."""
    folder = tmp_path_factory.mktemp("score")
    paths = write_sample(folder / "sample")
    build_score_dataset(
        [paths["reference"], paths["ct"]],
        folder / "data",
        doses=(1.0, 0.25),
        views=(90, 30),
        slices_per_volume=2,
        unlabelled_per_volume=2,
        size=128,
        full_views=90,
        split_groups=SPLITS,
        progress=False,
    )
    return str(folder / "data")


def settings(data: str, **changes) -> ScoreTrainSettings:
    fields = {"backbone": "cnn", "head": "distribution", "steps": 4, "batch": 2, "checkpoint_every": 2}
    return ScoreTrainSettings(data, **{**fields, **changes})


def _weights(trainer: ScoreTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _train_loss(trainer: ScoreTrainer) -> float:
    """The supervised loss of the model in eval mode over every scored train slice, unaugmented."""
    trainer.model.eval()
    with torch.no_grad():
        output = trainer.model(trainer._input(trainer.labelled.hu.float()))
        loss = loss_terms(output, trainer.labelled.score, trainer.config)["total"]
    trainer.model.train()
    return float(loss)


def test_tiny_run_lowers_the_loss(data, tmp_path, torch_single_thread):
    trainer = ScoreTrainer(settings(data, steps=20, lr=3e-3), tmp_path / "run", device="cpu", progress=False)
    before = _train_loss(trainer)
    for _ in range(20):
        trainer.train_step()
    assert _train_loss(trainer) < 0.95 * before


def test_resume_is_bit_identical(data, tmp_path, torch_single_thread):
    straight = ScoreTrainer(settings(data), tmp_path / "straight", device="cpu", progress=False)
    straight.run()
    interrupted = ScoreTrainer(settings(data), tmp_path / "resumed", device="cpu", progress=False)
    interrupted.run(stop_at=2)
    resumed = ScoreTrainer(settings(data), tmp_path / "resumed", device="cpu", progress=False)
    resumed.resume()
    assert resumed.state.step == 2
    resumed.run()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "resumed" / "model.json").read_text())
    assert card["task"] == "global_score" and card["training"]["step"] == 4
    assert set(card["metrics"]) == {"plcc", "srocc", "krocc", "overall", "rmse"}


def test_resume_refuses_other_settings(data, tmp_path, torch_single_thread):
    ScoreTrainer(settings(data), tmp_path / "run", device="cpu", progress=False).run(stop_at=2)
    other = ScoreTrainer(settings(data, lr=1e-4), tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(InputError, match="lr differ"):
        other.resume()


def test_semi_supervised_step(data, tmp_path, torch_single_thread):
    teacher = tmp_path / "teacher"
    ScoreTrainer(settings(data, steps=2), teacher, device="cpu", progress=False).run()
    semi = settings(data, teachers=(str(teacher / "model"),), consistency_warmup=2)
    trainer = ScoreTrainer(semi, tmp_path / "semi", device="cpu", progress=False)
    pool = load_score_split(data, "train", labelled=False)
    model, card = load_score_model(teacher / "model")
    expected = predict_scores(model, card, pool.hu, "cpu")[0]
    np.testing.assert_allclose(trainer.unlabelled.score.numpy(), expected, atol=1e-5)  # the ensemble of one
    before = {k: v.clone() for k, v in trainer.teacher.module.state_dict().items()}
    terms = trainer.train_step()
    assert {"l2", "kl", "pseudo", "consistency", "total"} <= set(terms)
    student = trainer.model.state_dict()
    after = trainer.teacher.module.state_dict()
    name = next(k for k, v in student.items() if v.dtype.is_floating_point and not torch.equal(v, before[k]))
    # EMA: teacher = alpha * teacher + (1 - alpha) * student, after the first update copied the student
    assert torch.allclose(after[name], student[name]) or torch.allclose(
        after[name], 0.997 * before[name] + 0.003 * student[name], atol=1e-6
    )
    trainer.run()
    card = json.loads((tmp_path / "semi" / "model.json").read_text())
    assert card["training"]["exported"] == "EMA teacher" and (tmp_path / "semi" / "pseudo_labels.json").is_file()


def test_consistency_weight_ramps_up():
    s = ScoreTrainSettings("unused", consistency_warmup=100)
    weights = [consistency_weight(step, s) for step in (0, 50, 100, 200)]
    assert weights[0] == pytest.approx(np.exp(-5)) and weights[2] == weights[3] == 1.0
    assert weights[0] < weights[1] < weights[2]


def test_tfkt_phase_one_trains_only_the_cnn_branch(data, tmp_path, torch_single_thread):
    s = ScoreTrainSettings(data, backbone="tfkt", steps=3, batch=2, pretrain_steps=1, checkpoint_every=3)
    trainer = ScoreTrainer(s, tmp_path / "tfkt", device="cpu", progress=False)
    swin = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("backbone.efficientnet")}
    cnn = {k: v.clone() for k, v in trainer.model.backbone.efficientnet.state_dict().items()}
    trainer.train_step()
    changed = trainer.model.backbone.efficientnet.state_dict()
    assert any(not torch.equal(cnn[k], changed[k]) for k in cnn)
    after = trainer.model.state_dict()
    assert all(torch.equal(swin[k], after[k]) for k in swin if k.startswith(("backbone.", "head.")))
    trainer.train_step()  # phase two: the whole network
    after = trainer.model.state_dict()
    assert any(not torch.equal(swin[k], after[k]) for k in swin if k.startswith("head."))


def test_settings_refused():
    with pytest.raises(InputError, match="tfkt"):
        ScoreTrainSettings("d", backbone="cnn", pretrain_steps=10).check()
    with pytest.raises(InputError, match="ema"):
        ScoreTrainSettings("d", ema=1.0).check()


def test_calibration_and_export(data, tmp_path, torch_single_thread):
    run = tmp_path / "run"  # a regression head: distinct raw scores even after two steps
    ScoreTrainer(
        settings(data, steps=12, head="regression", checkpoint_every=12), run, device="cpu", progress=False
    ).run()
    images = write_sample(tmp_path / "images")
    rows = [("sample_ct.nrrd", 1.0), ("sample_reference_ct.nrrd", 3.5)] * 3
    with (tmp_path / "images" / "ratings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score"])
        writer.writerows(rows)
    assert images["ct"].parent == tmp_path / "images"
    record = calibrate_score(run / "model", tmp_path / "images" / "ratings.csv", tmp_path / "calibrated")
    assert record["ratings"] == 6 and record["rmse_after"] <= record["rmse_before"] + 1e-9
    model, card = load_score_model(tmp_path / "calibrated")
    raw_model, raw_card = load_score_model(run / "model")
    assert card["weights_sha256"] == raw_card["weights_sha256"] and card["calibration"]["raw"] == record["raw"]
    exported = export(tmp_path / "calibrated", "score_test", tmp_path / "models", default=True, reproduce="cmd")
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["defaults"] == {"global_score": "score_test"}
    assert json.loads(exported.read_text())["calibration"] == card["calibration"]
    assert "surrogate" in (tmp_path / "models" / "score_test.md").read_text().lower()


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,score\na.nrrd,2\n", "path,score"),
        ("path,score\nmissing.nrrd,2\n", "not found"),
        ("path,score\nratings.csv,5\n", "outside 0-4"),
        ("path,score\nratings.csv,good\n", "not a number"),
    ],
)
def test_bad_ratings_are_one_line(tmp_path, content, message):
    path = tmp_path / "ratings.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_ratings(path)
