"""Mixed precision: every bundled model family under bfloat16 autocast agrees with float32 within a stated tolerance.

On CUDA the product runs each network under ``inference.autocast`` (bfloat16 where the GPU supports it). These tests
run the same product functions with precision="bfloat16" on the CPU (CPU autocast, the same helper and code path;
no GPU needed) against precision="float32", with the real networks and bundled weights, on the demo phantom's
slices and, when ../shared/data is present, a real Mayo quarter-dose slice (L506_86, 512 x 512, 0.74 mm).

Tolerances (absolute, |bfloat16 - float32|; measured on the CPU, 2 real 512 x 512 Mayo slices / 3 phantom slices):

- quality map, per window, SSIM on 0-1: max <= 0.02, mean <= 0.002 (measured max 0.006 / 0.005, mean 0.0006 /
  0.0003); dose head: ln dose <= 0.05 (0.004 / 0.013), class probabilities <= 0.02 (0.001 / 0.005);
- 0-4 score (score_mdiqa): <= 0.1 (measured 0.033 = one step of its decoding, 40 bins averaged over 3 scales, on
  one slice of five), its SD <= 0.02 (0.0004);
- denoised HU (denoise_default): max <= 10 HU, mean <= 1 HU (measured on whole 512 x 512 real slices 4.7 and 0.50 HU,
  against a mean change by the denoiser of 7 HU; phantom 0.9 and 0.14 HU): bfloat16 keeps 8 bits of mantissa, and
  the RED-CNN's features carry the image itself (about 2 HU per step at 1000 HU);
- series network (series_default): P(lung window) and P(low dose) <= 0.02, SNR <= 1 % (measured 0.03-0.14 %),
  BRISQUE <= 0.5 (0.04-0.05).

float16 autocast is about ten times closer still (denoiser mean 0.06 HU, map max 0.0007) but is not what CUDA picks
where bfloat16 is supported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ctqa.models import registry, series_network
from ctqa.models.checkpoints import load
from ctqa.models.denoise_network import denoise_volume, load_denoise_model
from ctqa.models.inference import autocast, predict_volume
from ctqa.models.score_network import load_score_model, predict_scores
from ctqa.sample import make_sample

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PRECISIONS = ("float32", "bfloat16")
#: Side (px) of the centred crop the denoiser runs on (bfloat16 convolutions without oneDNN are slow on the CPU).
DENOISE_CROP = 64


@dataclass(frozen=True)
class Slices:
    """hu: float32 (z, y, x) HU with square pixels of pixel_mm and slices thickness_mm thick."""

    hu: np.ndarray
    pixel_mm: float
    thickness_mm: float


@pytest.fixture(scope="module", params=["phantom", "mayo"])
def slices(request) -> Slices:
    if request.param == "phantom":
        sample = make_sample()
        return Slices(sample.low_dose.hu[[0, 12, 23]].astype(np.float32), sample.low_dose.spacing[0], 2.5)
    stored = np.load(request.getfixturevalue("shared_data") / "mayo_pairs" / "L506_86_input.npy")
    return Slices((stored * 4096.0 - 1024.0).astype(np.float32)[None], 0.74, 3.0)  # stored as (HU + 1024) / 4096


def bundled(task: str, name: str):
    return registry.resolve(task, name).card_path


def test_quality_map(slices):
    model, _ = load(bundled("quality_map", "n2q_default"))
    full, half = (predict_volume(model, slices.hu, device="cpu", precision=p) for p in PRECISIONS)
    assert (full.precision, half.precision) == PRECISIONS
    for window, values in full.maps.items():
        difference = np.abs(half.maps[window] - values)
        assert difference.max() <= 0.02 and difference.mean() <= 0.002, window
    assert np.abs(half.log_dose - full.log_dose).max() <= 0.05
    assert np.abs(half.dose_probabilities - full.dose_probabilities).max() <= 0.02


def test_score(slices):
    model, card = load_score_model(bundled("global_score", "score_mdiqa"))
    pixel = (slices.pixel_mm, slices.pixel_mm)
    (score, sd), (score_half, sd_half) = (
        predict_scores(model, card, slices.hu, "cpu", pixel_yx_mm=pixel, precision=p) for p in PRECISIONS
    )
    assert np.abs(score_half - score).max() <= 0.1
    assert np.abs(sd_half - sd).max() <= 0.02


def test_denoiser(slices):
    model, _ = load_denoise_model(bundled("denoise", "denoise_default"))
    centre, half_side = np.array(slices.hu.shape[1:]) // 2, DENOISE_CROP // 2
    crop = slices.hu[:, centre[0] - half_side : centre[0] + half_side, centre[1] - half_side : centre[1] + half_side]
    full, half = (denoise_volume(model, crop, device="cpu", precision=p) for p in PRECISIONS)
    assert (full.run.precision, half.run.precision) == PRECISIONS
    difference = np.abs(half.hu - full.hu)
    assert difference.max() <= 10.0 and difference.mean() <= 1.0


def test_series_network(slices):
    model, card = series_network.load(bundled("series_class", "series_default"))
    full, half = (
        series_network.predict_series(model, card, slices.hu, slices.pixel_mm, slices.thickness_mm, 300.0, 8, 0, p)
        for p in PRECISIONS
    )
    assert full.crops == half.crops > 0
    assert abs(half.lung_probability - full.lung_probability) <= 0.02
    assert abs(half.low_dose_probability - full.low_dose_probability) <= 0.02
    assert half.snr == pytest.approx(full.snr, rel=0.01)
    assert abs(half.brisque - full.brisque) <= 0.5


def test_overlapping_cpu_autocast_runs_restore_onednn_once_the_last_ends():
    """The first CPU bf16 run turns oneDNN off (its bf16 convolutions are wrong for some shapes), the last restores
    it, whatever order overlapping runs (threads: autocast state is per thread) end in."""
    cpu = torch.device("cpu")
    before = torch.backends.mkldnn.enabled
    entered, first_done, second_done = threading.Barrier(2), threading.Event(), threading.Event()
    seen = {}

    def run(name: str, wait_for: threading.Event | None, done: threading.Event) -> None:
        with autocast(cpu, "bfloat16"):
            entered.wait()
            if wait_for is not None:
                wait_for.wait()
            seen[name] = torch.backends.mkldnn.enabled
        done.set()

    threads = [
        threading.Thread(target=run, args=("first", None, first_done)),
        threading.Thread(target=run, args=("second", first_done, second_done)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"first": False, "second": False}  # the second still ran without oneDNN after the first ended
    assert torch.backends.mkldnn.enabled == before
    assert not torch.is_autocast_enabled("cpu")
