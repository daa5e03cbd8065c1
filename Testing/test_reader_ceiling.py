"""ctqa-train reader-ceiling (CTQualityTraining/reader_ceiling.py): the agreement figures, the leave-one-set-out
oracle and the full-reference ceiling; the full table is a command (docs/reader_ceiling.md), not a test."""

import numpy as np
import pytest

from CTQualityTraining import reader_ceiling
from CTQualityTraining.cli import main


def _images(ratings_per_set: list[list[float]]) -> list[reader_ceiling.ReaderImage]:
    images = []
    for set_index, ratings in enumerate(ratings_per_set):
        for index, rating in enumerate(ratings):
            kind = "low" if index == 0 else "normal" if index == 1 else "denoised"
            images.append(reader_ceiling.ReaderImage(str(set_index), f"{index}.png", kind, rating, np.zeros((2, 2))))
    return images


def test_agreement_ranks_within_sets_pooled_and_compares_denoised_with_normal():
    images = _images([[1, 5, 2, 3, 4], [1, 5, 4, 3, 2]])
    readers = np.array([image.readers for image in images])
    perfect = reader_ceiling.agreement(images, readers)
    assert [perfect[key] for key in ("within_mean", "within_min", "pooled")] == pytest.approx([1.0, 1.0, 1.0])
    assert perfect["denoised_minus_normal"] == -2.0
    inverted = reader_ceiling.agreement(images, -readers)
    assert [inverted["within_mean"], inverted["pooled"]] == pytest.approx([-1.0, -1.0])
    assert inverted["denoised_minus_normal"] == 2.0


def test_the_oracle_predicts_each_set_from_the_others_only():
    images = _images([[1, 5, 2, 3, 4]] * 4)
    readers = np.array([image.readers for image in images])
    informative = reader_ceiling.oracle(images, [readers + 0.01 * np.arange(len(readers)) % 3])
    assert reader_ceiling.agreement(images, informative)["within_min"] > 0.9
    rng = np.random.default_rng(0)
    noise = reader_ceiling.oracle(images, [rng.normal(size=len(readers))])
    assert reader_ceiling.agreement(images, noise)["pooled"] < 0.6


def test_full_reference_reads_the_normal_dose_as_perfect_and_noise_lower(shared_data):
    images = [i for i in reader_ceiling.read_images(shared_data / "reader_study" / "abdomen") if i.set_id == "1"]
    ssim = reader_ceiling.full_reference(images, 0.0)
    by_kind = {image.kind: value for image, value in zip(images, ssim)}
    assert by_kind["normal"] == pytest.approx(1.0, abs=1e-4)
    assert by_kind["low"] < 0.95


def test_a_folder_without_the_reader_study_is_refused_in_one_line(tmp_path, capsys):
    assert main(["reader-ceiling", "--data", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    assert "no reader study here" in capsys.readouterr().err
    assert not (tmp_path / "c.md").exists()
