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


def test_the_fit_predicts_each_set_from_the_others_only():
    # sets 0-2 rate as the feature says, set 3 rates its denoised images the other way round: fitted on the other
    # sets, set 3's prediction is the feature itself; had set 3's ratings reached the fit, it would bend towards them
    images = _images([[1, 5, 2, 3, 4]] * 3 + [[1, 5, 4, 3, 2]])
    feature = np.array([1.0, 5.0, 2.0, 3.0, 4.0] * 4)
    predicted = reader_ceiling.oracle(images, [feature])
    held_out = np.array([image.set_id == "3" for image in images])
    assert np.allclose(predicted[held_out], feature[held_out], atol=1e-6)
    assert reader_ceiling.agreement(images[:15], predicted[:15])["within_min"] == pytest.approx(1.0)


def test_the_kind_only_baseline_ranks_the_anchors_and_nothing_else():
    images = _images([[1, 5, 2, 3, 4], [1, 5, 4, 3, 2]])
    baseline = reader_ceiling.agreement(images, reader_ceiling.kind_only(images))
    assert baseline["within_min"] > 0.5 and baseline["denoised_within_mean"] == 0.0


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
