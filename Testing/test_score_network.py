"""Global score networks (MD-IQA, TFKT, CNN): timm import, shapes, preprocessing, deformable alignment, head, decoding,
losses, TFKT phase 1, pretrained backbones, checkpoints, calibration and volume inference. Tiny sizes, 512 input."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ctqa.errors import InputError
from ctqa.models.inference import Cancelled
from ctqa.models.score_network import (
    BACKBONES,
    HEADS,
    HPF_GAIN,
    INPUT_SIZE,
    SCORE_SCALE,
    DeformableConv2d,
    ScoreNetConfig,
    ScoreOutput,
    _PatchHead,
    build_score_network,
    calibrate,
    calibration_slope,
    decode_output,
    load_pretrained_backbone,
    load_score_model,
    loss_terms,
    predict_scores,
    save_score_model,
    score_input,
)
from ctqa.models.timm_import import import_timm
from ctqa.score_distribution import bin_scores, gaussian_targets

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = {
    "cnn": {"convnext_dims": (8, 8, 16, 16), "convnext_depths": (1, 1, 1, 1), "head_width": 8},
    "tfkt": {"efficientnet_width": 0.25, "swin_dim": 32, "swin_depths": (1, 1), "head_width": 8},
    "mdiqa": {
        "convnext_dims": (8, 8, 16),
        "convnext_depths": (1, 1, 1),
        "vit_dim": 32,
        "vit_depth": 1,
        "attention_depth": 1,
        "head_width": 8,
    },
}


def tiny(backbone: str, head: str = "distribution") -> ScoreNetConfig:
    return ScoreNetConfig(backbone=backbone, head=head, **TINY[backbone])


def random_hu(count: int, size: int = INPUT_SIZE, seed: int = 0) -> torch.Tensor:
    return 40.0 + 60.0 * torch.randn(count, size, size, generator=torch.Generator().manual_seed(seed))


def test_import_timm_works_here():
    timm = import_timm()
    assert timm.__version__.split(".")[0] == "1"
    assert import_timm() is timm
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3, in_chans=4)
    assert model.eval()(torch.zeros(1, 4, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_head_at_512(backbone, head):
    config = tiny(backbone, head)
    model = build_score_network(config).eval()
    x = score_input(random_hu(2), config.space_to_depth)
    assert x.shape == (2, 8, 256, 256) and config.input_channels == 8  # CT and HPF, each folded 2 x 2
    with torch.inference_mode():
        out = model(x)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    if head == "regression":
        assert out.distributions is None
    else:
        assert out.distributions.shape == (2, 3, 41)
        assert float(out.distributions.min()) > 0.0 and float(out.distributions.max()) < 1.0
        assert 0.0 < float(out.score.min()) and float(out.score.max()) < 4.0
    with pytest.raises(ValueError, match="input must be"):
        model(x[:, :, :128])


def test_default_backbones_are_small():
    """The CPU-trainable budget: < 2 M parameters and at most about 0.5 GFLOP per 512 x 512 slice (0.27-0.59 measured)
    for every default backbone."""
    x = score_input(random_hu(1), 2)
    for backbone in BACKBONES:
        model = build_score_network(ScoreNetConfig(backbone=backbone)).eval()
        parameters = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
            model(x)  # the math attention kernel: its matrix products are counted
        assert 3e5 < parameters < 2e6, backbone
        assert 2e8 < counter.get_total_flops() < 6e8, backbone


def test_config_round_trips_through_json_and_rejects_bad_keys():
    for backbone in BACKBONES:
        for config in (ScoreNetConfig(backbone=backbone), tiny(backbone, "regression")):
            data = json.loads(json.dumps(config.to_dict()))
            assert ScoreNetConfig.from_dict(data) == config
    data = ScoreNetConfig(backbone="tfkt").to_dict()
    assert data["taus"] == [0.05, 0.1, 0.2] and data["swin_depths"] == [2, 2] and data["vit_dim"] is None
    assert ScoreNetConfig().backbone == "mdiqa" and ScoreNetConfig().convnext_dims == (24, 48, 96)
    with pytest.raises(ValueError, match="unknown architecture keys"):
        ScoreNetConfig.from_dict({**data, "depth": 3})
    with pytest.raises(ValueError, match="missing keys"):
        ScoreNetConfig.from_dict({key: value for key, value in data.items() if key != "swin_dim"})
    with pytest.raises(ValueError, match="not used by backbone"):
        ScoreNetConfig(backbone="cnn", vit_dim=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        ScoreNetConfig(backbone="mdiqa", vit_dim=48)
    with pytest.raises(ValueError, match="backbone must be"):
        ScoreNetConfig(backbone="resnet")
    assert ScoreNetConfig(backbone="mdiqa").patch_grid == 16 and ScoreNetConfig(backbone="tfkt").patch_grid == 8


def test_score_input_windows_pads_resizes_and_folds():
    hu = torch.tensor([-1000.0, -135.0, 40.0, 215.0, 3000.0]).repeat_interleave(512 * 512 // 4)[: 512 * 512]
    x = score_input(hu.view(1, 512, 512), 2)
    unfolded = F.pixel_shuffle(x, 2)[0, 0].flatten()
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]).repeat_interleave(512 * 512 // 4)[: 512 * 512]
    assert torch.allclose(unfolded, expected)
    flat = F.pixel_shuffle(score_input(torch.full((1, 512, 512), 40.0), 2), 2)[0]
    assert torch.allclose(flat[0], torch.full((512, 512), 0.5)) and float(flat[1].abs().max()) < 1e-5
    noisy = F.pixel_shuffle(score_input(random_hu(1), 2), 2)[0]  # 60 HU white noise: CT SD 60 / 350
    ratio = float(noisy[1].std() / noisy[0].std())  # the HPF keeps most of white noise's SD, times HPF_GAIN
    assert 0.75 * HPF_GAIN < ratio < 0.95 * HPF_GAIN
    # 100 x 200 slice of 215 HU: centred in a 200 x 200 square of zeros, resized to 512.
    x = F.pixel_shuffle(score_input(torch.full((1, 100, 200), 215.0), 4), 4)[0, 0]
    assert x.shape == (512, 512)
    assert float(x[:120].max()) == 0.0 and float(x[392:].max()) == 0.0
    assert torch.allclose(x[136:376], torch.ones(240, 512))


def test_deformable_convolution_starts_as_a_plain_convolution_and_follows_offsets():
    torch.manual_seed(0)
    layer = DeformableConv2d(3, 5)
    x = torch.randn(2, 3, 7, 9)
    offsets = torch.zeros(2, 18, 7, 9)
    assert torch.allclose(layer(x, offsets), layer.conv(x), atol=1e-5)
    # every tap one pixel to the right: reads x[r + dy, c + dx + 1], zero outside x
    shifted = F.pad(F.pad(x, (1, 1, 1, 1))[..., 1:], (0, 1))
    right = F.conv2d(shifted, layer.conv.weight, layer.conv.bias)
    offsets[:, 1::2] = 1.0
    assert torch.allclose(layer(x, offsets), right, atol=1e-5)
    offsets[:, 1::2] = 0.5  # half way: bilinear, the mean of both
    assert torch.allclose(layer(x, offsets), 0.5 * (layer.conv(x) + right), atol=1e-5)


def test_mdiqa_offsets_start_at_zero_and_learn():
    model = build_score_network(tiny("mdiqa"))
    backbone = model.backbone
    assert not backbone.offsets.weight.detach().any() and not backbone.offsets.bias.detach().any()
    model(score_input(random_hu(2), 2)).score.sum().backward()
    assert float(backbone.offsets.weight.grad.abs().max()) > 0.0


def test_head_pools_patch_scores_with_positive_weights():
    torch.manual_seed(1)
    head = _PatchHead(16, 8, torch.full((5,), 0.3), sigmoid=True)
    features = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        normalised = head.norm(features)
        scores = torch.sigmoid(head.score(normalised))
        weights = torch.sigmoid(head.weight(normalised))
        pooled = head(features)
    assert float(weights.min()) > 0.0
    expected = (scores * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    assert torch.allclose(pooled, expected, atol=1e-6)
    assert not torch.allclose(expected, scores.mean(dim=(2, 3)), atol=1e-4)  # weighted, not a plain mean


def test_decoding_a_target_distribution_gives_its_score():
    truth = np.array([0.0, 0.3, 2.5, 4.0])
    targets = torch.from_numpy(gaussian_targets(truth)).float()
    score, sd = decode_output(ScoreOutput(targets, torch.zeros(4)))
    assert np.allclose(score, truth) and score.dtype == np.float64
    assert sd[0] < sd[1] < sd[2]  # truncated at the ends of the scale
    for tau in (0.05, 0.1):  # sigma = N tau bins of M / N each: M tau
        one_scale = torch.from_numpy(gaussian_targets([2.0], taus=(tau,))).float()
        assert decode_output(ScoreOutput(one_scale, torch.zeros(1)))[1][0] == pytest.approx(4.0 * tau, rel=1e-3)
    score, sd = decode_output(ScoreOutput(None, torch.tensor([-0.5, 2.25, 5.0])))
    assert np.allclose(score, [0.0, 2.25, 4.0]) and np.isnan(sd).all()


def test_expected_score_of_the_distribution_head():
    model = build_score_network(tiny("cnn")).eval()
    with torch.inference_mode():
        out = model(score_input(random_hu(2), 2))
    weights = out.distributions / out.distributions.sum(dim=2, keepdim=True)
    expectation = (weights * torch.from_numpy(bin_scores()).float()).sum(dim=2).mean(dim=1)
    assert torch.allclose(out.score, expectation, atol=1e-5)


def test_loss_terms_vanish_at_the_targets():
    config = tiny("cnn")
    truth = torch.tensor([0.5, 3.2])
    targets = torch.from_numpy(gaussian_targets(truth.numpy())).float()
    perfect = loss_terms(ScoreOutput(targets, truth), truth, config)
    assert float(perfect["l2"]) == pytest.approx(0.0, abs=1e-10) and float(perfect["kl"]) == pytest.approx(
        0.0, abs=1e-6
    )
    wrong = loss_terms(ScoreOutput(targets.flip(0), truth), truth, config, beta=0.5)
    assert float(wrong["l2"]) > 0.01 and float(wrong["kl"]) > 0.5
    assert float(wrong["total"]) == pytest.approx(float(wrong["l2"]) + 0.5 * float(wrong["kl"]), rel=1e-6)
    regression = loss_terms(ScoreOutput(None, torch.tensor([1.0, 3.0])), truth, tiny("cnn", "regression"))
    assert float(regression["l2"]) == pytest.approx((0.25 + 0.04) / 2) and float(regression["kl"]) == 0.0
    with pytest.raises(ValueError, match="scores must lie"):
        loss_terms(ScoreOutput(targets, truth), torch.tensor([0.5, 4.5]), config)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_loss_decreases_on_a_fixed_batch(backbone):
    torch.manual_seed(0)
    config = ScoreNetConfig(backbone=backbone, space_to_depth=4, **TINY[backbone])  # 128 x 128 x 16: faster
    model = build_score_network(config)
    noise_sd = torch.tensor([80.0, 40.0, 20.0, 10.0]).view(4, 1, 1)  # HU: the noisier, the worse
    x = score_input(40.0 + noise_sd * torch.randn(4, INPUT_SIZE, INPUT_SIZE), 4)
    truth = torch.tensor([0.5, 1.5, 2.5, 3.5])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(12):
        terms = loss_terms(model(x), truth, config)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        losses.append(float(terms["total"].detach()))
    assert max(losses[-3:]) < 0.97 * losses[0], losses


def test_tfkt_phase_one_trains_f_alone():
    torch.manual_seed(0)
    config = tiny("tfkt")
    model = build_score_network(config)
    f = model.backbone.efficientnet
    assert {id(p) for p in model.phase_one_parameters()} == {
        id(p) for p in (*f.parameters(), *model.phase_one_head.parameters())
    }
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(score_input(random_hu(2), 2), phase_one=True)
    assert out.distributions is None and out.score.shape == (2,)
    loss_terms(out, torch.tensor([1.0, 3.0]), config)["total"].backward()
    optimizer.step()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert any(name.startswith("backbone.efficientnet.") for name in changed)
    assert any(name.startswith("phase_one_head.") for name in changed)
    assert all(name.startswith(("backbone.efficientnet.", "phase_one_head.")) for name in changed)
    cnn = build_score_network(tiny("cnn"))
    with pytest.raises(ValueError, match="phase one"):
        cnn(score_input(random_hu(1), 2), phase_one=True)
    with pytest.raises(ValueError, match="phase one"):
        cnn.phase_one_parameters()


def test_pretrained_backbone_loads_one_timm_part_strictly(tmp_path):
    torch.manual_seed(0)
    source = build_score_network(tiny("mdiqa"))
    target = build_score_network(tiny("mdiqa"))
    assert target.pretrainable_parts() == ("vit", "convnext")
    path = tmp_path / "convnext.safetensors"
    weights = {k: v.contiguous() for k, v in source.backbone.convnext.state_dict().items()}
    save_file({**weights, "head.fc.weight": torch.zeros(3, 16)}, str(path))  # a timm checkpoint's classifier: skipped
    vit_before = {k: v.clone() for k, v in target.backbone.vit.state_dict().items()}
    assert load_pretrained_backbone(target, path) == "convnext"
    for name, tensor in target.backbone.convnext.state_dict().items():
        assert torch.equal(tensor, weights[name])
    assert all(torch.equal(t, vit_before[k]) for k, t in target.backbone.vit.state_dict().items())
    vit_path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.vit.state_dict().items()}, str(vit_path))
    assert load_pretrained_backbone(target, vit_path, "vit") == "vit"
    with pytest.raises(InputError, match="1 unexpected"):
        save_file({**weights, "extra.weight": torch.zeros(1)}, str(path))
        load_pretrained_backbone(target, path, "convnext")
    with pytest.raises(InputError, match="of another shape"):
        save_file({**weights, "stem.0.weight": torch.zeros(8, 3, 4, 4)}, str(path))
        load_pretrained_backbone(target, path, "convnext")
    save_file({k: v for k, v in list(weights.items())[:-1]}, str(path))
    with pytest.raises(InputError, match="complete weights of none"):
        load_pretrained_backbone(target, path)
    with pytest.raises(InputError, match="1 missing"):
        load_pretrained_backbone(target, path, "convnext")
    with pytest.raises(InputError, match="has no part 'efficientnet'"):
        load_pretrained_backbone(target, path, "efficientnet")
    with pytest.raises(InputError, match="not found"):
        load_pretrained_backbone(target, tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_pretrained_backbone(target, tmp_path / "bad.safetensors")


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    config = tiny("tfkt")
    model = build_score_network(config).eval()
    card_path = save_score_model(model, config, {"name": "tiny", "metrics": {"overall": 1.5}}, tmp_path / "m")
    card = json.loads(card_path.read_text())
    assert card["task"] == "global_score" and card["format_version"] == 1 and card["scale"] == SCORE_SCALE
    assert card["input"]["window_hu"] == [-135.0, 215.0] and card["input"]["size"] == 512
    assert card["input"]["space_to_depth"] == 2 and card["metrics"] == {"overall": 1.5} and card["name"] == "tiny"
    loaded, loaded_card = load_score_model(tmp_path / "m.safetensors")
    assert not loaded.training and loaded.config == config and loaded_card == card
    x = score_input(random_hu(2), 2)
    with torch.inference_mode():
        assert torch.equal(loaded(x).distributions, model(x).distributions)
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_score_model(tmp_path / "m")
    for change, message in (
        ({"task": "quality_map"}, "not a global_score model card"),
        ({"input": {**card["input"], "window_hu": [-160, 240]}}, "window_hu"),
        ({"scale": "0-10"}, "score scale"),
        ({"calibration": {"raw": [0, 1], "calibrated": [1]}}, "calibration"),
        ({"architecture": {**card["architecture"], "backbone": "vgg"}}, 'bad "architecture"'),
    ):
        card_path.write_text(json.dumps({**card, **change}))
        with pytest.raises(InputError, match=message):
            load_score_model(card_path)


def test_calibration_maps_scores_and_scales_sd():
    card = {"calibration": {"raw": [1.0, 2.0, 3.0], "calibrated": [0.5, 2.5, 3.0]}}
    raw = np.array([0.0, 1.5, 2.5, 3.5])
    assert np.allclose(calibrate(raw, card), [0.5, 1.5, 2.75, 3.0])
    assert np.allclose(calibration_slope(raw, card), [2.0, 2.0, 0.5, 0.5])
    assert np.allclose(calibrate(np.array([-1.0, 2.0, 4.5]), {}), [0.0, 2.0, 4.0])
    assert np.allclose(calibration_slope(raw, {}), 1.0)
    with pytest.raises(InputError, match='raw" increasing'):
        calibrate(raw, {"calibration": {"raw": [2.0, 1.0], "calibrated": [0.0, 1.0]}})


def test_predict_scores_batches_calibrates_reports_and_cancels():
    torch.manual_seed(0)
    model = build_score_network(tiny("cnn")).eval()
    hu = random_hu(5, size=64).numpy()
    with torch.inference_mode():
        direct = decode_output(model(score_input(torch.from_numpy(hu), 2)))
    calls = []
    score, sd = predict_scores(model, {}, hu, "cpu", batch=2, progress=lambda f, m: calls.append(f))
    assert score.shape == sd.shape == (5,) and score.dtype == np.float64
    assert np.allclose(score, direct[0]) and np.allclose(sd, direct[1], rtol=1e-5)
    assert calls == pytest.approx([0.4, 0.8, 1.0])
    halved = {"calibration": {"raw": [0.0, 4.0], "calibrated": [0.0, 2.0]}}
    score_half, sd_half = predict_scores(model, halved, hu, "cpu", batch=3)
    assert np.allclose(score_half, score / 2) and np.allclose(sd_half, sd / 2, rtol=1e-5)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        predict_scores(model, {}, hu, "cpu", cancel=cancel)
