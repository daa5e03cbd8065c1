"""Noise2Quality network family: every ablation builds and runs, preprocessing, BatchNorm folding, a tiny training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from small_models import SMALL

from ctqa.models.networks import (
    DEFAULT_CONFIG,
    DOSE_LEVELS,
    HPF_SCALE,
    VARIANTS,
    QualityNetConfig,
    build_network,
    fuse_for_inference,
    loss_terms,
    nearest_dose_class,
    network_input,
)
from ctqa.physics.lung import LUNG_WINDOW_HU
from ctqa.physics.ssim import scale_to_unit

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def noisy_flat_slices(generator: torch.Generator, count: int, size: int = 32):
    """Flat 40 HU slices with white noise at a random dose level: (HU (B, 1, H, W), target maps (B, 2, H, W) of the
    soft-tissue and lung windows, class, ln dose).

    Noise SD is 10 HU / sqrt(dose); the target maps are the constants 1 / (1 + (sd / sd50)^2), sd50 = 12 HU (soft
    tissue) and 45 HU (lung).
    """
    classes = torch.randint(len(DOSE_LEVELS), (count,), generator=generator)
    dose = torch.tensor(DOSE_LEVELS)[classes]
    sd = 10.0 / dose.sqrt()
    hu = 40.0 + sd.view(-1, 1, 1, 1) * torch.randn(count, 1, size, size, generator=generator)
    target = torch.stack([1.0 / (1.0 + (sd / sd50) ** 2) for sd50 in (12.0, 45.0)], dim=1)
    return hu, target.view(-1, 2, 1, 1).expand(-1, 2, size, size), classes, dose.log()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_and_runs(name):
    config = VARIANTS[name]
    model = build_network(config).eval()
    hu = 40.0 + 30.0 * torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    x = network_input(hu, config.inputs, config.windows)
    assert config.windows == ("soft_tissue", "lung")
    assert x.shape == (2, 2 * len(config.inputs.split("+")), 64, 96)
    with torch.inference_mode():
        out = model(x)
    assert out.quality.shape == (2, 2, 64, 96) and out.quality.dtype == torch.float32
    assert float(out.quality.min()) >= 0.0 and float(out.quality.max()) <= 1.0
    if config.dose_head:
        assert out.dose_logits.shape == (2, len(DOSE_LEVELS)) and out.log_dose.shape == (2,)
        assert torch.isfinite(out.dose_logits).all() and torch.isfinite(out.log_dose).all()
    else:
        assert out.dose_logits is None and out.log_dose is None


def test_variants_are_the_seven_ablations_one_option_each():
    assert list(VARIANTS) == ["AE", "RED-CNN", "U-Net", "U-HPF", "U-Con", "U-SSL", "N2Q"]
    unet = VARIANTS["U-Net"]
    for name, config in VARIANTS.items():
        differences = {key for key, value in config.to_dict().items() if value != unet.to_dict()[key]}
        expected = {"AE": {"architecture"}, "RED-CNN": {"architecture"}, "U-Net": set(), "U-HPF": {"inputs"},
                    "U-Con": {"inputs"}, "U-SSL": {"dose_head"}, "N2Q": {"inputs", "dose_head"}}[name]  # fmt: skip
        assert differences == expected, name
    assert DEFAULT_CONFIG == VARIANTS["N2Q"]


def test_config_round_trips_through_json():
    for config in VARIANTS.values():
        assert QualityNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown architecture keys"):
        QualityNetConfig.from_dict({**DEFAULT_CONFIG.to_dict(), "depth": 5})
    with pytest.raises(ValueError, match=r"missing keys \['space_to_depth'\]"):
        QualityNetConfig.from_dict({k: v for k, v in DEFAULT_CONFIG.to_dict().items() if k != "space_to_depth"})
    with pytest.raises(ValueError, match="inputs"):
        QualityNetConfig(inputs="mri")
    with pytest.raises(ValueError, match="unknown window 'bone'"):
        QualityNetConfig(windows=("soft_tissue", "bone"))
    with pytest.raises(ValueError, match="distinct"):
        QualityNetConfig(windows=("lung", "lung"))
    single = QualityNetConfig(windows=("soft_tissue",))
    assert build_network(single).map_head.conv.out_channels == single.space_to_depth**2


def test_network_rejects_sizes_that_are_not_multiples():
    model = build_network(SMALL).eval()
    assert SMALL.required_multiple == 8
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 4, 60, 64))


def test_network_input_channels():
    generator = torch.Generator().manual_seed(1)
    hu = torch.linspace(-1200.0, 600.0, 64 * 64).view(1, 1, 64, 64)
    ct = network_input(hu, "ct", ("soft_tissue", "lung"))
    assert ct.shape == (1, 2, 64, 64)
    np.testing.assert_allclose(ct[0, 0].numpy(), scale_to_unit(hu[0, 0].numpy()), atol=1e-6)
    np.testing.assert_allclose(ct[0, 1].numpy(), scale_to_unit(hu[0, 0].numpy(), LUNG_WINDOW_HU), atol=1e-6)
    flat = network_input(torch.full((1, 1, 32, 32), 40.0), "ct+hpf", ("soft_tissue", "lung"))
    assert float(flat[:, [1, 3]].abs().max()) < 1e-5, "a flat image has no high-pass content"
    sd_hu = 15.0
    noise = 40.0 + sd_hu * torch.randn(4, 1, 128, 128, generator=generator)
    noisy = network_input(noise, "hpf", ("soft_tissue", "lung"))
    # A 1 px Gaussian blur keeps ~0.87 of white noise's SD in the residual: 15 HU -> ~0.33, O(1), in both windows
    # (the lung window's HPF gain is scaled by its width, 1500 / 400).
    expected = HPF_SCALE * sd_hu / 400.0 * 0.87
    assert float(noisy[:, 0].std()) == pytest.approx(expected, rel=0.05)
    torch.testing.assert_close(noisy[:, 1], noisy[:, 0], atol=1e-4, rtol=1e-4)


def test_fused_batchnorm_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_network(SMALL)
    for module in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = network_input(40.0 + 20.0 * torch.randn(3, 1, 48, 40), SMALL.inputs, SMALL.windows)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the model itself is unchanged"
    with torch.inference_mode():
        expected, got = model(x), fused(x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_loss_terms():
    generator = torch.Generator().manual_seed(2)
    hu, target, classes, log_dose = noisy_flat_slices(generator, 4)
    no_head = build_network(VARIANTS["U-Net"])
    out = no_head(network_input(hu, "ct", VARIANTS["U-Net"].windows))
    assert set(loss_terms(out, target)) == {"total", "map_mse"}
    torch.testing.assert_close(loss_terms(out, target)["total"], torch.mean((out.quality - target) ** 2))
    with_head = build_network(SMALL)
    out = with_head(network_input(hu, SMALL.inputs, SMALL.windows))
    with pytest.raises(ValueError, match="dose head"):
        loss_terms(out, target)
    terms = loss_terms(out, target, classes, log_dose, alpha=0.5)
    torch.testing.assert_close(terms["total"], terms["map_mse"] + 0.5 * (terms["dose_ce"] + terms["log_dose_mse"]))


def test_nearest_dose_class():
    assert [nearest_dose_class(level) for level in DOSE_LEVELS] == list(range(len(DOSE_LEVELS)))
    assert nearest_dose_class(0.3) == DOSE_LEVELS.index(0.25)
    assert nearest_dose_class(1.4) == DOSE_LEVELS.index(1.0)


def test_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    model = build_network(SMALL)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out = noisy_flat_slices(torch.Generator().manual_seed(99), 16)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            hu, target, classes, log_dose = held_out
            outputs = model(network_input(hu, SMALL.inputs, SMALL.windows))
            value = float(loss_terms(outputs, target, classes, log_dose, alpha=0.1)["total"])
        model.train()
        return value

    before = held_out_loss()
    for _ in range(40):
        hu, target, classes, log_dose = noisy_flat_slices(generator, 8)
        optimiser.zero_grad()
        x = network_input(hu, SMALL.inputs, SMALL.windows)
        loss_terms(model(x), target, classes, log_dose, alpha=0.1)["total"].backward()
        optimiser.step()
    after = held_out_loss()
    assert math.isfinite(after) and after < 0.5 * before, (before, after)
