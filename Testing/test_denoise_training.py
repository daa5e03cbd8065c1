"""Denoisers: network shapes and checkpoints, Neighbor2Neighbor sub-sampling, datasets, tiny training runs."""

import json

import numpy as np
import pytest
import torch

from ctqa.errors import InputError
from ctqa.models.denoise_network import (
    DenoiseNetConfig,
    build_denoise_network,
    denoise_volume,
    load_denoise_model,
    save_denoise_model,
)
from CTQualityTraining.denoise import (
    DenoiseTrainer,
    DenoiseTrainSettings,
    build_denoise_dataset,
    load_denoise_split,
    neighbour_choice,
    neighbour_subsample,
    psnr_db,
    start_from,
)


@pytest.mark.parametrize(
    "config",
    [
        DenoiseNetConfig(width=8),
        DenoiseNetConfig(width=8, space_to_depth=1),
        DenoiseNetConfig(width=32, nonlocal_window=4),
    ],
)
def test_denoiser_keeps_shape_and_starts_as_identity(config, torch_single_thread):
    net = build_denoise_network(config)
    x = torch.randn(2, 1, 8 * config.required_multiple, 4 * config.required_multiple)
    assert net(x).shape == x.shape
    assert torch.equal(net(x), x)  # zero-initialised head: training starts from the input
    if config.required_multiple > 1:
        with pytest.raises(ValueError, match="multiples"):
            net(torch.zeros(1, 1, 8 * config.required_multiple + 1, 8 * config.required_multiple))


def test_denoise_volume_handles_any_size_nan_and_out_of_range(torch_single_thread):
    net = build_denoise_network(DenoiseNetConfig(width=8))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    hu = np.random.default_rng(0).normal(40.0, 30.0, (3, 37, 53)).astype(np.float32)
    hu[0, :4] = np.nan
    hu[1, 10, 10] = 8000.0  # metal beyond the clip range
    before = hu.copy()
    out = denoise_volume(net, hu, batch_size=2, device="cpu")
    assert out.hu.shape == hu.shape and out.hu.dtype == np.float32
    assert np.array_equal(hu, before, equal_nan=True)  # the input is not touched
    assert np.isnan(out.hu[0, :4]).all() and np.isfinite(out.hu[0, 4:]).all()
    assert out.hu[1, 10, 10] > 7000.0  # the clipped-away HU come back
    assert not np.allclose(out.hu[2], hu[2])


def test_checkpoint_round_trip_and_tampering(tmp_path, torch_single_thread):
    net = build_denoise_network(DenoiseNetConfig(width=8, nonlocal_window=0))
    card_path = save_denoise_model(net, {"name": "tiny", "training": {"method": "supervised"}}, tmp_path / "tiny")
    loaded, card = load_denoise_model(card_path)
    assert card["task"] == "denoise" and loaded.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(InputError, match="sha256"):
        load_denoise_model(card_path)
    with pytest.raises(ValueError, match="method"):
        save_denoise_model(net, {"training": {}}, tmp_path / "other")


def test_a_non_local_model_starts_from_a_plain_checkpoint(tmp_path, torch_single_thread):
    """--init from the same network without the non-local block: the same function to start with; other widths no."""
    torch.manual_seed(0)
    plain = build_denoise_network(DenoiseNetConfig(width=32)).eval()
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # not the identity
    save_denoise_model(plain, {"name": "plain", "training": {"method": "supervised"}}, tmp_path / "plain")
    nonlocal_net = build_denoise_network(DenoiseNetConfig(width=32, nonlocal_window=4)).eval()
    start_from(nonlocal_net, str(tmp_path / "plain.json"))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), x, atol=1e-3)
        torch.testing.assert_close(nonlocal_net(x), plain(x))
    with pytest.raises(InputError, match="--init must have the architecture"):
        start_from(build_denoise_network(DenoiseNetConfig(width=64, nonlocal_window=4)), str(tmp_path / "plain.json"))


def test_neighbour_subsample_takes_adjacent_pixels_of_each_cell():
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="ij")
    images = torch.stack([rows, cols])[None]  # (1, 2, 8, 6): channel 0 = row, channel 1 = column
    choice = neighbour_choice(torch.Size((1, 1, 8, 6)), torch.Generator().manual_seed(0))
    g1, g2 = neighbour_subsample(images, choice)
    assert g1.shape == g2.shape == (1, 2, 4, 3)
    step = (g1 - g2).abs()
    assert torch.equal(step.sum(dim=1), torch.ones(1, 4, 3))  # one pixel apart, horizontally or vertically
    assert torch.equal(torch.div(g1[0, 0], 2, rounding_mode="floor"), torch.arange(4.0)[:, None].expand(4, 3))


@pytest.fixture(scope="module")
def datasets(shared_data, tmp_path_factory, torch_single_thread):
    """A paired (simulated) and an as-acquired dataset of two slices of a small real CT."""
    source = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    folder = tmp_path_factory.mktemp("denoise")
    common = {"slices_per_volume": 2, "split_groups": {}, "progress": False}
    build_denoise_dataset([source], folder / "pairs", doses=(0.1, 0.25), kernels=("native",), **common)
    build_denoise_dataset([source], folder / "low", as_is=True, **common)
    return folder


def test_dataset_holds_pairs_or_low_dose_alone(datasets):
    manifest = json.loads((datasets / "pairs" / "manifest.json").read_text())
    assert manifest["sources"][0]["samples"] == {"simulated": 4} and manifest["sources"][0]["split"] == "train"
    pairs = load_denoise_split(datasets / "pairs", "train")
    assert pairs.paired == 4
    noisy, clean = pairs.noisy[0].astype(float), pairs.clean[0].astype(float)
    assert noisy.shape == clean.shape and np.std(noisy - clean) > 5.0  # 10 % dose: tens of HU of extra noise
    low = load_denoise_split(datasets / "low", "train")
    assert len(low.noisy) == 2 and low.paired == 0
    with pytest.raises(InputError, match="other parameters"):
        build_denoise_dataset([manifest["sources"][0]["path"]], datasets / "pairs", doses=(0.5,), progress=False)


def _fixed_batch_loss(trainer: DenoiseTrainer) -> float:
    trainer.rng = np.random.default_rng(123)
    trainer.sampler.rng = trainer.rng
    trainer.generator.manual_seed(123)
    noisy, clean = trainer.sampler.batch(8, with_clean=trainer.supervised)
    with torch.no_grad():
        return float(trainer._loss(noisy, clean)["reconstruction" if not trainer.supervised else "total"])


@pytest.mark.parametrize("method, data", [("supervised", "pairs"), ("neighbor2neighbor", "low")])
def test_tiny_run_lowers_the_loss(datasets, tmp_path, method, data, torch_single_thread):
    # the plain MSE: on two 3 mm slices, 60 steps of the relative loss only reach the identity (loss 1.0)
    settings = DenoiseTrainSettings(
        str(datasets / data),
        method=method,
        width=16,
        steps=60,
        batch=8,
        patch=32,
        lr=2e-3,
        checkpoint_every=60,
        loss="mse",
    )
    trainer = DenoiseTrainer(settings, tmp_path / "run", device="cpu", progress=False)
    before = _fixed_batch_loss(trainer)
    trainer.rng = np.random.default_rng(0)
    trainer.sampler.rng = trainer.rng
    trainer.run()
    assert _fixed_batch_loss(trainer) < 0.95 * before  # from the identity (the noisy input)
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["training"]["method"] == method
    if method == "neighbor2neighbor":  # trained on a dataset that holds no full-dose image at all
        assert card["training"]["full_dose_images_used"] == "validation metrics only"
        assert load_denoise_split(datasets / data, "train").paired == 0


def test_supervised_needs_pairs_and_resume_is_bit_identical(datasets, tmp_path, torch_single_thread):
    with pytest.raises(InputError, match="no paired slices"):
        DenoiseTrainer(DenoiseTrainSettings(str(datasets / "low"), width=8, patch=32), tmp_path / "x", "cpu", False)
    settings = DenoiseTrainSettings(
        str(datasets / "pairs"), width=8, steps=4, batch=2, patch=32, checkpoint_every=2, nonlocal_window=0
    )
    whole = DenoiseTrainer(settings, tmp_path / "whole", "cpu", progress=False)
    whole.run()
    interrupted = DenoiseTrainer(settings, tmp_path / "parts", "cpu", progress=False)
    interrupted.run(stop_at=2)
    resumed = DenoiseTrainer(settings, tmp_path / "parts", "cpu", progress=False)
    resumed.resume()
    assert resumed.step == 2
    resumed.run()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    other = DenoiseTrainSettings(str(datasets / "pairs"), width=8, steps=4, batch=2, patch=32, lr=1e-3)
    with pytest.raises(InputError, match="other settings"):
        DenoiseTrainer(other, tmp_path / "parts", "cpu", progress=False).resume()


def test_psnr_and_settings_checks():
    image = np.zeros((4, 4))
    assert psnr_db(image, image) == float("inf")
    assert psnr_db(image + 4096.0 / 10, image) == pytest.approx(20.0, abs=0.05)
    with pytest.raises(InputError, match="patch"):
        DenoiseTrainSettings("x", method="neighbor2neighbor", patch=34).check()
    with pytest.raises(InputError, match="method"):
        DenoiseTrainSettings("x", method="noise2void").check()
